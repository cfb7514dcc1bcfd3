"""A torch ``nn.Module`` as a white-box target: logits, scores, labels and gradients."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from invguard.core.access import Access
from invguard.core.errors import ConfigError
from invguard.core.target import BaseTarget, Prediction


class TorchTarget(BaseTarget):
    """Wrap a classifier whose forward pass returns logits of shape ``(n, num_classes)``.

    ``access`` defaults to ``WHITEBOX``: the module is exposed as ``.module`` and ``forward(x)``
    gives differentiable logits (each row counts as a query). Give ``access="logits"`` (or lower)
    for a torch model that should be attacked as a black box. The module is put in eval mode.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        *,
        input_shape: tuple[int, ...],
        num_classes: int | None = None,
        access: Access | str = Access.WHITEBOX,
        budget: int | None = None,
        batch_size: int = 1024,
        name: str = "torch",
    ) -> None:
        if not isinstance(module, torch.nn.Module):
            raise ConfigError(f"{name}: expected a torch.nn.Module, got {type(module).__name__}")
        module.eval()
        if num_classes is None:
            with torch.no_grad():
                num_classes = int(module(torch.zeros((1, *input_shape))).shape[-1])
        super().__init__(
            num_classes=num_classes,
            input_shape=tuple(input_shape),
            access=Access.parse(access),
            budget=budget,
            name=name,
        )
        self._module = module
        self.batch_size = int(batch_size)

    @property
    def module(self) -> torch.nn.Module:
        if self.access < Access.WHITEBOX:
            from invguard.core.errors import AccessError

            raise AccessError(
                f"{self.name}: the module is only exposed at WHITEBOX access; this target grants "
                f"{self.access.name}"
            )
        return self._module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Differentiable logits for a batch (WHITEBOX only); counts ``len(x)`` queries."""
        module = self.module
        self.charge(int(x.shape[0]))
        out: torch.Tensor = module(x)
        return out

    def _predict(self, x: np.ndarray) -> Prediction:
        chunks: list[Any] = []
        with torch.no_grad():
            for i in range(0, x.shape[0], self.batch_size):
                chunks.append(self._module(torch.from_numpy(x[i : i + self.batch_size])).double().numpy())
        logits = np.concatenate(chunks, axis=0)
        return Prediction.from_logits(logits, min(self.access, Access.LOGITS))
