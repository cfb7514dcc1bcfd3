"""What every gradient-leakage attack shares: where the observed updates come from, the evidence
type, and the pieces of the optimisation attacks (matching objectives, total variation, box).

The attacker is the party the deployment's :class:`~invguard.federated.updates.FederatedSetup`
names: the server (each client's update, or only the aggregate under secure aggregation) or a
curious client (the broadcast aggregate). A target that is a
:class:`~invguard.federated.target.FederatedTarget` brings its setup (and, for a real deployment,
the observed updates); any other white-box target is audited under the default setup (4 clients,
FedSGD, batch 1, one round, the server reading each update). Simulated clients hold disjoint
records of the members split.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from invguard.attacks.base import Attack, RunContext
from invguard.core.access import Access
from invguard.core.errors import ConfigError
from invguard.core.evidence import Evidence
from invguard.core.params import Int, Spec
from invguard.core.target import Target
from invguard.federated.access import RawAccessLog
from invguard.federated.updates import FederatedSetup, Observation

DEFAULT_SETUP = FederatedSetup(clients=4, batch_size=1, rounds=1)


@dataclass(frozen=True, kw_only=True)
class GradientEvidence(Evidence):
    """Per observed update: the reconstructed inputs (None for label recovery alone), the
    recovered labels, and (simulation only) the indices of the true records in ``pool``.

    ``raw_accesses``: M5 events during the observed rounds (aggregator and attacker reads of a
    single client's raw update). ``objective``: the attack's final matching loss per update.
    """

    observations: tuple[dict[str, Any], ...]
    reconstructions: tuple[np.ndarray | None, ...]
    labels: tuple[np.ndarray, ...]
    truth: tuple[np.ndarray | None, ...]
    pool: str = "members"
    raw_accesses: int = 0
    access_by_who: dict[str, int] = field(default_factory=dict)
    objective: tuple[float, ...] = ()
    seconds_per_update: tuple[float, ...] = ()
    setup: dict[str, Any] = field(default_factory=dict)


def observe(
    target: Target, data: Any, rng: np.random.Generator, who: str
) -> tuple[list[Observation], RawAccessLog, FederatedSetup]:
    """The updates the attacker sees: the target's recorded ones, or a simulation of its setup."""
    from invguard.federated.simulation import Simulation
    from invguard.federated.target import FederatedTarget

    setup = target.setup if isinstance(target, FederatedTarget) else DEFAULT_SETUP
    log = RawAccessLog()
    if isinstance(target, FederatedTarget) and target.observations is not None:
        return list(target.observations), log, setup
    members = getattr(data, "members", None)
    if members is None:
        raise ConfigError(
            f"{who}: needs the clients' records to simulate the federated rounds (splits with a members "
            f"split), got {type(data).__name__}"
        )
    sim = Simulation(target.module, members.X, members.y, setup, rng, access_log=log, observer=who)  # type: ignore[attr-defined]
    return sim.run(), log, setup


@dataclass(frozen=True)
class GradientAttack(Attack):
    """Base of the attacks that reconstruct clients' inputs from observed updates.

    ``evaluator_epochs``: training epochs of the independent evaluator the judge scores
    reconstructions with (cached by content hash in the run context's cache folder)."""

    requires: ClassVar[Access] = Access.WHITEBOX
    #: the clients' records (splits with a members split) and a model trained on shared updates
    data_kind: ClassVar[str] = "federated"

    evaluator_epochs: int = 30

    constraints: ClassVar[Mapping[str, Spec]] = {"evaluator_epochs": Int(1)}

    def search(
        self, target: Target, data: Any, rng: np.random.Generator, ctx: RunContext
    ) -> GradientEvidence:
        import torch

        obs, log, setup = observe(target, data, rng, self.name)
        module = target.module  # type: ignore[attr-defined]
        shape = tuple(target.input_shape)
        public = getattr(data, "public", None)
        recs: list[np.ndarray | None] = []
        labels: list[np.ndarray] = []
        objective: list[float] = []
        seconds: list[float] = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(rng.integers(0, 2**63 - 1)))
            for i, o in enumerate(obs):
                ctx.report(self.name, i, len(obs))
                t0 = time.perf_counter()
                lab = self._labels(module, o, target.num_classes, public)
                rec, loss = self._reconstruct(module, o, lab, shape, public, rng)
                seconds.append(time.perf_counter() - t0)
                recs.append(rec)
                labels.append(lab)
                objective.append(loss)
        ctx.report(self.name, len(obs), len(obs))
        return GradientEvidence(
            observations=tuple(
                {
                    "round": o.round,
                    "clients": list(o.clients),
                    "records": o.batch_size,
                    "kind": o.kind,
                    "local_steps": o.local_steps,
                    "secure_aggregation": o.secure_aggregation,
                    "noised": o.noised,
                    "compressed": o.compressed,
                }
                for o in obs
            ),
            reconstructions=tuple(recs),
            labels=tuple(labels),
            truth=tuple(o.truth for o in obs),
            raw_accesses=log.count,
            access_by_who=log.by_who(),
            objective=tuple(objective),
            seconds_per_update=tuple(seconds),
            setup=setup.to_json(),
            info={"setup": setup.describe(), "attacker": setup.attacker, "updates_observed": len(obs)},
        )

    def _labels(self, module: Any, o: Observation, num_classes: int, public: Any) -> np.ndarray:
        from invguard.attacks.gradient.labels import recover_labels

        return recover_labels(module, o, num_classes, public)

    def _reconstruct(
        self,
        module: Any,
        o: Observation,
        labels: np.ndarray,
        shape: tuple[int, ...],
        public: Any,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray | None, float]:
        raise NotImplementedError  # pragma: no cover - abstract


# --------------------------------------------------------------------------- optimisation pieces


def box_of(public: Any, shape: Sequence[int]) -> tuple[float, float] | None:
    """The value range the attacker assumes (from the public data; images default to [0, 1])."""
    if public is not None and len(public):
        return float(np.min(public.X)), float(np.max(public.X))
    return (0.0, 1.0) if len(shape) == 3 else None


def total_variation(x: Any) -> Any:
    """Anisotropic total variation of a batch of images (mean absolute neighbour difference)."""
    import torch

    if x.ndim != 4:
        return torch.zeros((), dtype=x.dtype)
    dx = torch.mean(torch.abs(x[:, :, :, 1:] - x[:, :, :, :-1]))
    dy = torch.mean(torch.abs(x[:, :, 1:, :] - x[:, :, :-1, :]))
    return dx + dy


def cosine_distance(a: Sequence[Any], b: Sequence[Any]) -> Any:
    """1 - cosine similarity of two updates taken as one vector each (Geiping et al. 2020, eq. 4)."""
    import torch

    dot = torch.stack([torch.sum(x * y) for x, y in zip(a, b, strict=True)]).sum()
    na = torch.sqrt(torch.stack([torch.sum(x * x) for x in a]).sum())
    nb = torch.sqrt(torch.stack([torch.sum(y * y) for y in b]).sum())
    return 1 - dot / (na * nb + 1e-12)


def squared_distance(a: Sequence[Any], b: Sequence[Any]) -> Any:
    """Squared L2 distance between two updates (Zhu et al. 2019, eq. 2)."""
    return sum(((x - y) ** 2).sum() for x, y in zip(a, b, strict=True))


def observed_tensors(o: Observation) -> list[Any]:
    import torch

    return [torch.as_tensor(np.asarray(u), dtype=torch.float32) for u in o.update]


def initial_inputs(
    n: int, shape: Sequence[int], box: tuple[float, float] | None, rng: np.random.Generator
) -> Any:
    """A random start inside the box (uniform), or standard normal without one."""
    import torch

    if box is None:
        x = rng.standard_normal((n, *shape))
    else:
        x = box[0] + (box[1] - box[0]) * rng.random((n, *shape))
    return torch.as_tensor(x, dtype=torch.float32)
