"""A scikit-learn classifier as a target (SCORES through ``predict_proba``, else LABEL)."""

from __future__ import annotations

from typing import Any

import numpy as np

from invguard.core.access import Access
from invguard.core.errors import ConfigError
from invguard.core.target import BaseTarget, Prediction
from invguard.targets.registry import TARGETS


@TARGETS.register("sklearn")
class SklearnTarget(BaseTarget):
    """Wrap a fitted scikit-learn classifier. Inputs are flattened to 2-D before ``predict_proba``.

    Class indices are positions in ``estimator.classes_`` (so labels are ``0..C-1``).
    """

    def __init__(
        self,
        estimator: Any,
        *,
        input_shape: tuple[int, ...] | None = None,
        budget: int | None = None,
        name: str = "sklearn",
    ) -> None:
        classes = getattr(estimator, "classes_", None)
        if classes is None:
            raise ConfigError(f"{name}: the estimator is not fitted (it has no classes_)")
        n_features = getattr(estimator, "n_features_in_", None)
        if input_shape is None:
            if n_features is None:
                raise ConfigError(f"{name}: give input_shape; the estimator does not record n_features_in_")
            input_shape = (int(n_features),)
        if n_features is not None and int(np.prod(input_shape)) != int(n_features):
            raise ConfigError(
                f"{name}: input_shape {tuple(input_shape)} has {int(np.prod(input_shape))} features, "
                f"the estimator expects {n_features}"
            )
        access = Access.SCORES if hasattr(estimator, "predict_proba") else Access.LABEL
        super().__init__(
            num_classes=len(classes), input_shape=tuple(input_shape), access=access, budget=budget, name=name
        )
        self.estimator = estimator
        self._index = {c: i for i, c in enumerate(classes.tolist())}

    def _predict(self, x: np.ndarray) -> Prediction:
        flat = x.reshape(x.shape[0], -1)
        if self.access >= Access.SCORES:
            return Prediction.from_scores(self.estimator.predict_proba(flat), Access.SCORES)
        raw = self.estimator.predict(flat)
        labels = np.asarray([self._index[c] for c in np.asarray(raw).tolist()], dtype=np.int64)
        return Prediction(labels=labels, access=Access.LABEL)
