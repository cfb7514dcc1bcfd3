"""A faithful federated-learning simulation for audits without a live deployment.

K clients hold disjoint records of a dataset (a random partition, seeded); each round every client
draws ``batch_size`` of its own records (without replacement, cycling through its shuffled share),
computes its update from the global model (:func:`~invguard.federated.updates.local_update`),
clips and noises it (DP), compresses it (top-k) and submits it to the :class:`Aggregator`. Without
secure aggregation the aggregator holds each plaintext update, and every read of one (its own
averaging included) is an M5 raw access; with secure aggregation each client sends a masked vector
(:mod:`invguard.federated.secagg`) and the aggregator can only unmask the sum. The server then
steps the global model: FedSGD ``theta -= lr * mean gradient``, FedAvg ``theta += mean delta``.

:meth:`Simulation.run` returns what the configured attacker observed: the server without secure
aggregation sees every client's update; a server with secure aggregation, or a curious client,
sees only the aggregate (the mean of the K updates, which for FedSGD is the gradient of the union
of their batches).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import numpy as np

from invguard.core.errors import AccessError, ConfigError
from invguard.federated import secagg
from invguard.federated.access import RawAccessLog
from invguard.federated.dp import clip
from invguard.federated.updates import (
    FederatedSetup,
    Observation,
    flatten,
    local_update,
    module_params,
    top_k,
    unflatten,
)


class Aggregator:
    """The server's aggregation of one round.

    Without secure aggregation it stores each client's plaintext update and records an M5 access
    whenever one is read (:meth:`client_update`, and :meth:`aggregate` reads them all). With
    secure aggregation it stores only masked vectors; :meth:`client_update` refuses, and
    :meth:`aggregate` unmasks the sum without reading any single update.
    """

    def __init__(
        self,
        clients: int,
        *,
        secure_aggregation: bool,
        access_log: RawAccessLog,
        round: int,
        rng: np.random.Generator,
    ) -> None:
        self.clients = clients
        self.secure_aggregation = secure_aggregation
        self.log = access_log
        self.round = round
        self._plain: dict[int, np.ndarray] = {}
        self._masked: dict[int, np.ndarray] = {}
        self._keys = secagg.make_clients(clients, rng) if secure_aggregation else []
        self._public = [c.public_key for c in self._keys]

    def submit(self, client: int, update: np.ndarray) -> None:
        """What client ``client`` sends: its update, masked when secure aggregation is on."""
        if self.secure_aggregation:
            self._masked[client] = self._keys[client].masked(update, self._public, self.round)
        else:
            self._plain[client] = np.asarray(update, dtype=np.float64)

    def masked(self, client: int) -> np.ndarray:
        """The masked vector a client sent under secure aggregation (what the server really holds)."""
        return self._masked[client]

    def client_update(self, client: int, who: str) -> np.ndarray:
        """One client's raw update, read by ``who``: an M5 access (refused under secure aggregation)."""
        if self.secure_aggregation:
            raise AccessError(
                f"{who}: under secure aggregation the server holds only masked updates and their sum; "
                f"client {client}'s raw update of round {self.round} is not available"
            )
        self.log.record(who, self.round, client, secure_aggregation=False)
        return self._plain[client]

    def aggregate(self) -> np.ndarray:
        """The mean of the submitted updates."""
        if self.secure_aggregation:
            return secagg.unmask_sum([self._masked[c] for c in sorted(self._masked)]) / len(self._masked)
        total = sum(self.client_update(c, "aggregator") for c in sorted(self._plain))
        return np.asarray(total, dtype=np.float64) / len(self._plain)


class Simulation:
    """K clients on disjoint records of ``(X, y)`` training ``module`` under ``setup``.

    ``module`` is copied (the caller's stays as it is); ``rng`` drives the partition, the batches,
    DP noise and the secure-aggregation keys; ``access_log`` receives the M5 events.
    """

    def __init__(
        self,
        module: Any,
        X: np.ndarray,
        y: np.ndarray,
        setup: FederatedSetup,
        rng: np.random.Generator,
        *,
        access_log: RawAccessLog | None = None,
        observer: str = "attack",
    ) -> None:
        problems = setup.problems()
        if problems:
            raise ConfigError("federated setup: " + "; ".join(problems))
        if X.shape[0] != y.shape[0]:
            raise ConfigError(f"federated data: {X.shape[0]} records but {y.shape[0]} labels")
        if X.shape[0] < setup.clients * setup.batch_size:
            raise ConfigError(
                f"federated data: {X.shape[0]} records cannot give {setup.clients} clients disjoint batches "
                f"of {setup.batch_size}; lower clients or batch_size"
            )
        self.module = copy.deepcopy(module).eval()
        self.X = np.asarray(X, dtype=np.float32)
        self.y = np.asarray(y, dtype=np.int64)
        self.setup = setup
        self.rng = rng
        self.log = access_log if access_log is not None else RawAccessLog()
        self.observer = observer
        perm = rng.permutation(self.X.shape[0])
        self.partition = [np.sort(p) for p in np.array_split(perm, setup.clients)]
        self._queue = [rng.permutation(p) for p in self.partition]
        self._cursor = [0] * setup.clients
        self.round = 0
        self.names = tuple(k for k, _ in self.module.named_parameters())

    # ------------------------------------------------------------------------------ one round
    def _batch(self, c: int) -> np.ndarray:
        B = self.setup.batch_size
        q = self._queue[c]
        if self._cursor[c] + B > q.size:
            self._queue[c] = q = self.rng.permutation(self.partition[c])
            self._cursor[c] = 0
        ix = q[self._cursor[c] : self._cursor[c] + B]
        self._cursor[c] += B
        return ix

    def params(self) -> tuple[np.ndarray, ...]:
        return tuple(p.detach().numpy().copy() for _, p in self.module.named_parameters())

    def _client_update(self, ix: np.ndarray) -> np.ndarray:
        import torch

        s = self.setup
        params = module_params(self.module)
        upd = local_update(
            self.module,
            params,
            torch.from_numpy(self.X[ix]),
            torch.from_numpy(self.y[ix]),
            kind="gradient" if s.algorithm == "fedsgd" else "delta",
            steps=s.local_steps,
            lr=s.local_lr,
            minibatch=s.minibatch,
        )
        return flatten([u.detach().numpy() for u in upd])

    def step(self, *, observe: bool = True) -> list[Observation]:
        """One round; returns the observations of the configured attacker (none if ``observe`` is False)."""
        import torch

        s = self.setup
        self.round += 1
        before = self.params()
        agg = Aggregator(
            s.clients,
            secure_aggregation=s.secure_aggregation,
            access_log=self.log,
            round=self.round,
            rng=self.rng,
        )
        batches = []
        for c in range(s.clients):
            ix = self._batch(c)
            batches.append(ix)
            vec = self._client_update(ix)
            if s.dp is not None:
                vec, _ = clip(vec, s.dp.clip)
                if s.dp.placement == "client":
                    vec = vec + s.dp.noise(vec.shape, self.rng)
            if s.topk is not None:
                vec = top_k(vec, s.topk)
            agg.submit(c, vec)
        kind = "gradient" if s.algorithm == "fedsgd" else "delta"
        common = {
            "kind": kind,
            "names": self.names,
            "params": before,
            "local_steps": s.local_steps,
            "local_lr": s.local_lr,
            "local_batch": s.minibatch,
            "secure_aggregation": s.secure_aggregation,
            "clipped": s.dp is not None,
            "compressed": s.topk is not None,
        }
        mean = agg.aggregate()
        if s.dp is not None and s.dp.placement == "server":
            mean = mean + s.dp.noise(mean.shape, self.rng) / s.clients
        out: list[Observation] = []
        if observe and s.sees_individual_updates:
            for c in range(s.clients):
                vec = agg.client_update(c, self.observer)
                out.append(
                    Observation(
                        round=self.round,
                        clients=(c,),
                        update=unflatten(vec, before),
                        batch_size=s.batch_size,
                        truth=batches[c],
                        noised=s.dp is not None and s.dp.placement == "client" and s.dp.noise_multiplier > 0,
                        **common,  # type: ignore[arg-type]
                    )
                )
        if observe and not s.sees_individual_updates:
            out.append(
                Observation(
                    round=self.round,
                    clients=tuple(range(s.clients)),
                    update=unflatten(mean, before),
                    batch_size=s.batch_size * s.clients,
                    truth=np.concatenate(batches),
                    noised=s.dp is not None and s.dp.noise_multiplier > 0,
                    **common,  # type: ignore[arg-type]
                )
            )
        step = unflatten(-s.local_lr * mean if kind == "gradient" else mean, before)
        with torch.no_grad():
            for (_, p), d in zip(self.module.named_parameters(), step, strict=True):
                p.add_(torch.from_numpy(np.asarray(d, dtype=np.float32)))
        return out

    def run(self, rounds: int | None = None, *, observe: Iterable[int] | None = None) -> list[Observation]:
        """``rounds`` rounds (default ``setup.rounds``); observations of the rounds in ``observe``
        (1-based; default all)."""
        n = self.setup.rounds if rounds is None else rounds
        wanted = None if observe is None else set(observe)
        out: list[Observation] = []
        for _ in range(n):
            out.extend(self.step(observe=wanted is None or self.round + 1 in wanted))
        return out

    def accuracy(self, X: np.ndarray, y: np.ndarray) -> float:
        """The global model's accuracy on ``(X, y)`` (utility)."""
        from invguard.models.train import accuracy

        return accuracy(self.module, np.asarray(X, dtype=np.float32), np.asarray(y))
