"""What a party in federated learning observes: the gradient-source abstraction.

An :class:`Observation` is a model snapshot (the global parameters a round started from) plus one
update computed from it: one client's raw gradient (FedSGD, batch B), one client's model delta
after E local steps (FedAvg), or only the aggregate of K clients (secure aggregation, or a curious
client that sees the broadcast model), optionally clipped and noised (DP) and compressed (top-k).
A *gradient source* is anything that yields observations: the simulation of
:mod:`invguard.federated.simulation`, or the updates a real Flower server received
(:mod:`invguard.federated.flower`). Attacks read only observations; ground truth (which records
were behind an update) travels with a simulated observation for the judge alone.

:func:`local_update` is the one definition of a client's update, used both by the simulation
(plain) and by the attacks (differentiably, to match a dummy batch's update against the observed
one).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from invguard.federated.dp import DPConfig

if TYPE_CHECKING:
    import torch

ALGORITHMS = ("fedsgd", "fedavg")
ATTACKERS = ("server", "client")


@dataclass(frozen=True)
class FederatedSetup:
    """One federated deployment, as an audit assumes it.

    ``clients`` (K) hold disjoint records; each round every client computes its update on
    ``batch_size`` (B) of its own records. ``fedsgd``: the update is the mean gradient of the batch
    (the server steps by ``local_lr``); ``fedavg``: the client takes ``local_steps`` (E) SGD steps
    at ``local_lr`` on mini-batches of ``local_batch`` records (default: the whole batch) and sends
    the model delta. ``secure_aggregation``: the server holds only masked updates and their sum.
    ``dp``: per-client clipping and Gaussian noise. ``topk``: the fraction of the update's entries
    (largest magnitude) a client sends. ``attacker``: ``server`` (reads what it receives) or
    ``client`` (a curious participant that sees only the broadcast aggregate).
    """

    clients: int = 4
    batch_size: int = 1
    algorithm: str = "fedsgd"
    local_steps: int = 1
    local_lr: float = 0.1
    local_batch: int | None = None
    rounds: int = 1
    secure_aggregation: bool = False
    dp: DPConfig | None = None
    topk: float | None = None
    attacker: str = "server"

    def problems(self) -> list[str]:
        p: list[str] = []
        for name in ("clients", "batch_size", "local_steps", "rounds"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                p.append(f"{name} must be a whole number >= 1, got {v!r}")
        if self.algorithm not in ALGORITHMS:
            p.append(f"algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}")
        if self.algorithm == "fedsgd" and self.local_steps != 1:
            p.append(f"fedsgd takes exactly one local step (local_steps=1), got {self.local_steps}")
        if not self.local_lr > 0:
            p.append(f"local_lr must be > 0, got {self.local_lr}")
        if self.local_batch is not None and not 1 <= self.local_batch <= self.batch_size:
            p.append(f"local_batch must lie in [1, batch_size={self.batch_size}], got {self.local_batch}")
        if self.topk is not None and not 0 < self.topk <= 1:
            p.append(f"topk must be a fraction in (0, 1], got {self.topk}")
        if self.attacker not in ATTACKERS:
            p.append(f"attacker must be one of {ATTACKERS}, got {self.attacker!r}")
        if self.dp is not None:
            p.extend(self.dp.problems())
        return p

    @property
    def minibatch(self) -> int:
        return self.local_batch or self.batch_size

    @property
    def sees_individual_updates(self) -> bool:
        """Whether the attacker holds single clients' updates (a server without secure aggregation)."""
        return self.attacker == "server" and not self.secure_aggregation

    def describe(self) -> str:
        parts = [
            f"{self.algorithm} ({self.local_steps} local step{'s' if self.local_steps != 1 else ''})",
            f"{self.clients} clients",
            f"batch {self.batch_size}",
        ]
        if self.secure_aggregation:
            parts.append("secure aggregation")
        if self.dp is not None:
            parts.append(
                f"DP ({self.dp.placement}: clip {self.dp.clip:g}, noise x{self.dp.noise_multiplier:g})"
            )
        if self.topk is not None:
            parts.append(f"top-{self.topk:g} compression")
        who = (
            "the server, reading each client's update"
            if self.sees_individual_updates
            else "the server, holding only the aggregate"
            if self.attacker == "server"
            else "a curious client, seeing the broadcast aggregate"
        )
        return ", ".join(parts) + f"; attacker: {who}"

    def to_json(self) -> dict[str, Any]:
        return {
            "clients": self.clients,
            "batch_size": self.batch_size,
            "algorithm": self.algorithm,
            "local_steps": self.local_steps,
            "local_lr": self.local_lr,
            "local_batch": self.minibatch,
            "rounds": self.rounds,
            "secure_aggregation": self.secure_aggregation,
            "dp": None
            if self.dp is None
            else {
                "clip": self.dp.clip,
                "noise_multiplier": self.dp.noise_multiplier,
                "placement": self.dp.placement,
                "delta": self.dp.delta,
            },
            "topk": self.topk,
            "attacker": self.attacker,
        }


@dataclass(frozen=True)
class Observation:
    """One update an attacker observed, with the snapshot it was computed from.

    ``update`` and ``params`` are per-parameter arrays in ``module.named_parameters()`` order
    (``names``). ``kind`` is ``gradient`` (FedSGD: the mean loss gradient over ``batch_size``
    records) or ``delta`` (FedAvg: parameters after the local steps minus before). ``clients``: whose
    data is behind the update (one client, or all K for an aggregate). ``truth``: indices of those
    records in the clients' data (for the judge only; None for a real deployment's updates).
    """

    round: int
    clients: tuple[int, ...]
    kind: str
    names: tuple[str, ...]
    update: tuple[np.ndarray, ...]
    params: tuple[np.ndarray, ...]
    batch_size: int
    local_steps: int = 1
    local_lr: float = 0.1
    local_batch: int | None = None
    truth: np.ndarray | None = None
    secure_aggregation: bool = False
    clipped: bool = False
    noised: bool = False
    compressed: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def aggregate(self) -> bool:
        return len(self.clients) > 1

    @property
    def minibatch(self) -> int:
        return self.local_batch or self.batch_size

    def replay(
        self, module: torch.nn.Module, params: dict[str, torch.Tensor], x: Any, y: Any, *, graph: bool = False
    ) -> list[torch.Tensor]:
        """The update this observation's client would send for candidate records ``(x, y)``: the
        same kind, local steps, learning rate and mini-batching (see :func:`local_update`);
        ``graph`` keeps it differentiable for gradient matching."""
        return local_update(
            module,
            params,
            x,
            y,
            kind=self.kind,
            steps=self.local_steps,
            lr=self.local_lr,
            minibatch=self.minibatch,
            create_graph=graph,
        )

    def label(self) -> str:
        who = (
            f"client {self.clients[0]}" if not self.aggregate else f"aggregate of {len(self.clients)} clients"
        )
        return f"round {self.round}, {who}"


class GradientSource(Protocol):
    """Anything that yields the observations an attacker gets."""

    def observations(self) -> Iterable[Observation]: ...


# ------------------------------------------------------------------------------- client update


def local_update(
    module: torch.nn.Module,
    params: dict[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    kind: str,
    steps: int = 1,
    lr: float = 0.1,
    minibatch: int | None = None,
    create_graph: bool = False,
) -> list[torch.Tensor]:
    """A client's update from ``params`` on records ``(x, y)``; ``y`` are class indices or soft labels.

    ``gradient``: the mean cross-entropy gradient over the batch. ``delta``: ``steps`` SGD steps at
    ``lr``, step t on mini-batch ``t mod ceil(n / minibatch)`` of the records in order, returning
    parameters after minus before (as in Geiping et al. 2020, section 6). ``create_graph`` keeps the
    computation differentiable with respect to ``x`` (and soft ``y``), for gradient matching.
    """
    import torch
    from torch.func import functional_call

    names = list(params)

    def loss_fn(p: dict[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        logits = functional_call(module, p, (xb,))
        if yb.dtype in (torch.int64, torch.int32):
            return torch.nn.functional.cross_entropy(logits, yb)
        return torch.mean(torch.sum(-yb * torch.log_softmax(logits, dim=-1), dim=-1))

    if kind == "gradient":
        loss = loss_fn(params, x, y)
        return list(torch.autograd.grad(loss, [params[n] for n in names], create_graph=create_graph))
    if kind != "delta":
        raise ValueError(f"kind must be 'gradient' or 'delta', got {kind!r}")
    n = int(x.shape[0])
    mb = minibatch or n
    chunks = max(1, -(-n // mb))
    cur = dict(params)
    for t in range(steps):
        i = (t % chunks) * mb
        loss = loss_fn(cur, x[i : i + mb], y[i : i + mb])
        grads = torch.autograd.grad(loss, [cur[k] for k in names], create_graph=create_graph)
        cur = {k: cur[k] - lr * g for k, g in zip(names, grads, strict=True)}
        if not create_graph:
            cur = {k: v.detach().requires_grad_(True) for k, v in cur.items()}
    return [cur[k] - params[k] for k in names]


def module_params(
    module: torch.nn.Module, values: Sequence[np.ndarray] | None = None
) -> dict[str, torch.Tensor]:
    """The module's parameters as a name -> leaf tensor mapping (from ``values`` when given)."""
    import torch

    out: dict[str, torch.Tensor] = {}
    named = list(module.named_parameters())
    if values is not None and len(values) != len(named):
        raise ValueError(f"the update has {len(values)} parameter arrays; the model has {len(named)}")
    for i, (k, p) in enumerate(named):
        v = p.detach().clone() if values is None else torch.as_tensor(np.asarray(values[i]), dtype=p.dtype)
        if tuple(v.shape) != tuple(p.shape):
            raise ValueError(
                f"parameter {k}: the update has shape {tuple(v.shape)}, the model {tuple(p.shape)}"
            )
        out[k] = v.requires_grad_(True)
    return out


def flatten(arrays: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])


def unflatten(vec: np.ndarray, like: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
    out, i = [], 0
    for a in like:
        n = int(np.prod(np.shape(a)))
        out.append(vec[i : i + n].reshape(np.shape(a)).astype(np.float32))
        i += n
    return tuple(out)


def top_k(vec: np.ndarray, fraction: float) -> np.ndarray:
    """Keep the ``fraction`` of entries of largest magnitude (at least one), zero the rest
    (top-k sparsification; Aji & Heafield 2017, Lin et al. "Deep Gradient Compression", 2018)."""
    k = max(1, round(fraction * vec.size))
    if k >= vec.size:
        return vec.copy()
    keep = np.argpartition(np.abs(vec), vec.size - k)[vec.size - k :]
    out = np.zeros_like(vec)
    out[keep] = vec[keep]
    return out
