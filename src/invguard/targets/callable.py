"""Any Python callable as a target."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from invguard.core.access import Access
from invguard.core.errors import ConfigError, TargetError
from invguard.core.target import BaseTarget, Prediction
from invguard.targets.registry import TARGETS

_KINDS = {"labels": Access.LABEL, "scores": Access.SCORES, "logits": Access.LOGITS}


def prediction_from_output(out: Any, kind: str, n: int, num_classes: int, where: str) -> Prediction:
    """Validate a model's raw output (``labels``, ``scores`` or ``logits``) and build a Prediction.

    Anything that is not a valid prediction raises ``TargetError`` naming ``where``: wrong row count,
    wrong number of classes, NaN or infinite values, scores outside [0, 1], labels out of range.
    """
    try:
        arr = np.asarray(out, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise TargetError(f"{where}: output is not numeric ({e})") from None
    if kind == "labels":
        arr = arr.reshape(-1)
        if arr.shape[0] != n:
            raise TargetError(f"{where}: expected {n} labels, got {arr.shape[0]}")
        if (
            not np.all(np.isfinite(arr))
            or np.any(arr != np.round(arr))
            or np.any((arr < 0) | (arr >= num_classes))
        ):
            raise TargetError(
                f"{where}: labels must be integers in [0, {num_classes}), got {arr[:5].tolist()}..."
            )
        return Prediction(labels=arr.astype(np.int64), access=Access.LABEL)
    if arr.ndim != 2 or arr.shape[0] != n:
        raise TargetError(f"{where}: expected {kind} of shape ({n}, {num_classes}), got {arr.shape}")
    if arr.shape[1] != num_classes:
        raise TargetError(f"{where}: expected {num_classes} classes, got {arr.shape[1]} {kind} per row")
    if not np.all(np.isfinite(arr)):
        raise TargetError(f"{where}: {kind} contain NaN or infinite values")
    if kind == "scores":
        if np.any(arr < -1e-6) or np.any(arr > 1 + 1e-6):
            raise TargetError(
                f"{where}: scores must lie in [0, 1]; got values in [{arr.min():.3g}, {arr.max():.3g}]"
            )
        return Prediction.from_scores(np.clip(arr, 0.0, 1.0), Access.SCORES)
    return Prediction.from_logits(arr, Access.LOGITS)


@TARGETS.register("callable")
class CallableTarget(BaseTarget):
    """Wrap ``fn(x: ndarray[n, *input_shape]) -> labels | scores | logits``.

    ``outputs`` says what ``fn`` returns and so what access the target grants.
    """

    def __init__(
        self,
        fn: Callable[[np.ndarray], Any],
        *,
        input_shape: tuple[int, ...],
        num_classes: int,
        outputs: str = "scores",
        budget: int | None = None,
        name: str = "callable",
    ) -> None:
        if outputs not in _KINDS:
            raise ConfigError(f"{name}: outputs must be one of {sorted(_KINDS)}, got {outputs!r}")
        super().__init__(
            num_classes=num_classes, input_shape=input_shape, access=_KINDS[outputs], budget=budget, name=name
        )
        self.fn = fn
        self.outputs = outputs

    def _predict(self, x: np.ndarray) -> Prediction:
        try:
            out = self.fn(x)
        except Exception as e:  # the user's function failed: report it as a target failure
            raise TargetError(f"{self.name}: the model function raised {type(e).__name__}: {e}") from e
        return prediction_from_output(out, self.outputs, x.shape[0], self.num_classes, self.name)
