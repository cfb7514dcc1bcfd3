"""A model trained with shared gradients, as a target: the model snapshot plus the federated
deployment it is trained in (simulated), or the updates a real server received."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from invguard.federated.updates import FederatedSetup, Observation
from invguard.targets.torch import TorchTarget


class FederatedTarget(TorchTarget):
    """A white-box torch target trained by federated learning under ``setup``.

    ``observations``: updates a real deployment's server received (for instance through the
    Flower wrapper); when None, gradient attacks simulate ``setup`` with the audit's members split
    as the clients' records.
    """

    def __init__(
        self,
        module: Any,
        *,
        input_shape: tuple[int, ...],
        setup: FederatedSetup,
        num_classes: int | None = None,
        observations: Sequence[Observation] | None = None,
        name: str = "federated",
        **kw: Any,
    ) -> None:
        super().__init__(module, input_shape=input_shape, num_classes=num_classes, name=name, **kw)
        self.setup = setup
        self.observations = None if observations is None else tuple(observations)

    def describe(self) -> str:
        return f"{self.access.name} (federated: {self.setup.describe()})"
