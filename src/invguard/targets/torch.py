"""A torch ``nn.Module`` as a white-box target: logits, scores, labels and gradients."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from invguard.core.access import Access
from invguard.core.errors import ConfigError, TargetError
from invguard.core.target import BaseTarget, Prediction
from invguard.targets.callable import prediction_from_output
from invguard.targets.registry import TARGETS


@TARGETS.register("torch")
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
        param = next(iter(module.parameters()), None)
        self._dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        if num_classes is None:
            try:
                with torch.no_grad():
                    out = module(torch.zeros((1, *input_shape), dtype=self._dtype))
            except RuntimeError as e:
                raise ConfigError(
                    f"{name}: the module does not accept inputs of shape {tuple(input_shape)}: {e}"
                ) from e
            if out.ndim != 2:
                raise ConfigError(
                    f"{name}: the module must return logits of shape (n, classes), got {tuple(out.shape)}"
                )
            num_classes = int(out.shape[-1])
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

    def inner_module(self) -> torch.nn.Module:
        """The module this target holds, whatever its access (for its architecture metadata; use
        ``module`` for white-box access)."""
        return self._module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Differentiable logits for a batch (WHITEBOX only); counts ``len(x)`` queries."""
        module = self.module
        self.charge(int(x.shape[0]))
        out: torch.Tensor = module(x.to(self._dtype))
        return out

    def _predict(self, x: np.ndarray) -> Prediction:
        chunks: list[Any] = []
        try:
            with torch.no_grad():
                for i in range(0, x.shape[0], self.batch_size):
                    xb = torch.from_numpy(x[i : i + self.batch_size]).to(self._dtype)
                    chunks.append(self._module(xb).detach().double().cpu().numpy())
        except RuntimeError as e:
            raise TargetError(f"{self.name}: the module failed on a batch of shape {x.shape}: {e}") from e
        pred = prediction_from_output(
            np.concatenate(chunks, axis=0), "logits", x.shape[0], self.num_classes, self.name
        )
        if self.access >= Access.LOGITS:
            return pred
        return Prediction.from_logits(pred.logits, self.access)  # type: ignore[arg-type]
