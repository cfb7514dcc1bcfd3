"""What every detector shares: the per-request view it reads, its threshold, and the registry.

A detector turns the state's :class:`~invguard.guard.detect.state.Exchange` and the new rows'
encoder features into one statistic per request (the most attack-like over its rows) and compares
it with its threshold. ``higher_is_attack`` says on which side of the threshold an attack lies;
calibration (:mod:`.calibrate`) sets the threshold from benign traffic to a target false-positive
rate, and a threshold nobody set is the detector's stated default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from invguard.core.registry import Registry
from invguard.guard.detect.state import Exchange


@dataclass
class Observation:
    """One request as the detectors see it."""

    client: str
    role: str
    rows: int
    exchange: Exchange
    features: np.ndarray  # (rows, d) encoder features of the new rows
    knn: list[float]  # per new row: mean distance to its k nearest earlier queries (NaN: too few)
    dmins: list[float]  # per new (non-repeat) row: distance to the nearest earlier query
    antithetic: list[int] = field(default_factory=list)  # per request window: mirrored pairs
    # the client's recent residual fractions outside the PCA subspace, most recent first (NaN: none)
    residual: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Finding:
    detector: str
    score: float
    threshold: float
    evidence: dict[str, Any]


class Detector:
    """Base class: ``statistic`` gives the request's statistic or None (not enough data yet)."""

    name: ClassVar[str]
    higher_is_attack: ClassVar[bool] = True
    # the names of the thresholds it reads (config field, calibration key) and their defaults
    thresholds: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: Any, values: dict[str, float]) -> None:
        self.cfg = cfg
        self.values = values

    def statistic(self, obs: Observation) -> float | None:
        raise NotImplementedError

    def check(self, obs: Observation) -> Finding | None:
        s = self.statistic(obs)
        if s is None:
            return None
        t = self.values[self.thresholds[0]]
        fired = s >= t if self.higher_is_attack else s < t
        return Finding(self.name, float(s), float(t), self.evidence(obs)) if fired else None

    def evidence(self, obs: Observation) -> dict[str, Any]:
        return {}


DETECTORS: Registry[type[Detector]] = Registry("detector")


def _load() -> None:
    from invguard.guard.detect import antithetic, fingerprint, knn, prada, subspace, volume  # noqa: F401


DETECTORS.add_loader(_load)
