"""Client-level differential privacy for federated updates: clip each client's update to an L2 norm
and add Gaussian noise (DP-FedAvg; McMahan, Ramage, Talwar & Zhang, "Learning Differentially Private
Recurrent Language Models", ICLR 2018), with the privacy spent from an RDP accountant
(dp-accounting; Mironov, "Renyi Differential Privacy", CSF 2017).

Where the noise is added decides whom it protects:

- ``placement="client"`` (local DP, Flower's ``LocalDpMod``): each client adds N(0, (z C)^2) to
  its clipped update before sending, so even the server sees a noised update. Each round is a
  Gaussian mechanism of sensitivity C on that client's data; epsilon composes over the rounds.
- ``placement="server"`` (central DP, Flower's ``DifferentialPrivacy*FixedClipping``): the server
  clips and adds N(0, (z C)^2) to the *sum*. The released model is private at user level (sampling
  rate = clients per round / population), but a server that reads the raw updates saw them
  before any noise: central DP does not protect against the server.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

F64 = NDArray[np.float64]


def clip(update: F64, norm: float) -> tuple[F64, float]:
    """``update`` scaled to L2 norm at most ``norm``; returns (clipped, original norm)."""
    u = np.asarray(update, dtype=np.float64)
    n = float(np.linalg.norm(u))
    out: F64 = u * min(1.0, norm / n) if n > 0 else u.copy()
    return out, n


@dataclass(frozen=True)
class DPConfig:
    """``clip`` (C, the L2 bound of one client's update), ``noise_multiplier`` (z: the noise standard
    deviation is z C), ``placement`` (``client`` or ``server``) and ``delta``."""

    clip: float
    noise_multiplier: float
    placement: str = "client"
    delta: float = 1e-5

    def problems(self) -> list[str]:
        p: list[str] = []
        if not self.clip > 0:
            p.append(f"dp clip must be > 0, got {self.clip}")
        if not self.noise_multiplier >= 0:
            p.append(f"dp noise_multiplier must be >= 0, got {self.noise_multiplier}")
        if self.placement not in ("client", "server"):
            p.append(f"dp placement must be 'client' or 'server', got {self.placement!r}")
        if not 0 < self.delta < 1:
            p.append(f"dp delta must lie in (0, 1), got {self.delta}")
        return p

    @property
    def std(self) -> float:
        return float(self.noise_multiplier * self.clip)

    def epsilon(self, rounds: int, sampling_rate: float = 1.0) -> float:
        """Epsilon after ``rounds`` rounds at this noise (RDP accountant, at ``delta``).

        Client placement: a client's data enters each round it takes part in, through a Gaussian
        mechanism of noise multiplier z. Server placement: a Poisson-subsampled Gaussian over the
        population, ``sampling_rate`` = clients per round / population.
        """
        if self.noise_multiplier <= 0:
            return float("inf")
        import dp_accounting
        from dp_accounting import rdp

        base = dp_accounting.GaussianDpEvent(self.noise_multiplier)
        event = base if sampling_rate >= 1.0 else dp_accounting.PoissonSampledDpEvent(sampling_rate, base)
        acc = rdp.RdpAccountant()
        acc.compose(event, int(rounds))
        return float(acc.get_epsilon(self.delta))

    def noise(self, shape: tuple[int, ...], rng: np.random.Generator) -> F64:
        out: F64 = rng.normal(0.0, self.std, size=shape)
        return out


def noise_for_epsilon(epsilon: float, rounds: int, delta: float = 1e-5, sampling_rate: float = 1.0) -> float:
    """The smallest noise multiplier (to 1e-3) whose epsilon after ``rounds`` is at most ``epsilon``."""
    lo, hi = 1e-3, 1.0
    while DPConfig(1.0, hi, delta=delta).epsilon(rounds, sampling_rate) > epsilon:
        hi *= 2
        if hi > 1e4:
            raise ValueError(f"no noise multiplier below 1e4 reaches epsilon {epsilon}")
    while hi - lo > 1e-3:
        mid = (lo + hi) / 2
        if DPConfig(1.0, mid, delta=delta).epsilon(rounds, sampling_rate) > epsilon:
            lo = mid
        else:
            hi = mid
    return hi
