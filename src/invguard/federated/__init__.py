"""Federated learning: the gradient-source abstraction, a FedSGD/FedAvg simulation with secure
aggregation (real pairwise masks), DP (clip + noise, RDP accountant) and top-k compression, the M5
raw-access counter, and the Flower adapter.

>>> from invguard.federated import FederatedSetup, Simulation      # doctest: +SKIP
>>> sim = Simulation(model, splits.members.X, splits.members.y, FederatedSetup(clients=8), rng)
>>> observations = sim.run()
"""

from __future__ import annotations

from typing import Any

from invguard.federated.access import AccessEvent, RawAccessLog
from invguard.federated.dp import DPConfig, noise_for_epsilon
from invguard.federated.updates import FederatedSetup, GradientSource, Observation

__all__ = [
    "AccessEvent",
    "DPConfig",
    "FederatedSetup",
    "FederatedTarget",
    "GradientSource",
    "Observation",
    "RawAccessLog",
    "Simulation",
    "noise_for_epsilon",
]


def __getattr__(name: str) -> Any:  # torch-backed parts load on first use
    if name == "Simulation":
        from invguard.federated.simulation import Simulation

        return Simulation
    if name == "FederatedTarget":
        from invguard.federated.target import FederatedTarget

        return FederatedTarget
    raise AttributeError(name)
