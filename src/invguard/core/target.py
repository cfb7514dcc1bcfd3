"""The Target protocol: what an attacker can ask a model, with query counting and budgets.

A target declares the highest :class:`Access` it grants. ``predict`` always returns labels; scores
only at ``Access.SCORES`` or above and logits only at ``Access.LOGITS`` or above. Every row of an
input batch counts as one query; a budget is checked *before* a query is sent, so a budget is
never exceeded.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from invguard.core.access import Access
from invguard.core.errors import BudgetExhausted, ConfigError, TargetError

FloatArray = NDArray[np.floating[Any]]
IntArray = NDArray[np.integer[Any]]


def softmax(logits: FloatArray, axis: int = -1) -> NDArray[np.float64]:
    """Numerically stable softmax in float64."""
    z = np.asarray(logits, dtype=np.float64)
    out: NDArray[np.float64] = z - z.max(axis=axis, keepdims=True)
    np.exp(out, out=out)
    out /= out.sum(axis=axis, keepdims=True)
    return out


@dataclass(frozen=True)
class Prediction:
    """What a target answers for a batch of ``n`` inputs.

    ``labels`` has shape ``(n,)``; ``scores`` and ``logits``, where present, ``(n, num_classes)``.
    ``access`` is the level this prediction was produced at (what the caller was allowed to see).
    """

    labels: IntArray
    scores: FloatArray | None = None
    logits: FloatArray | None = None
    access: Access = Access.LABEL

    def __post_init__(self) -> None:
        labels, scores, logits = self.labels, self.scores, self.logits
        if labels.ndim != 1:
            raise ValueError(f"Prediction.labels must be 1-D, got shape {labels.shape}")
        if labels.dtype.kind not in "iu":
            raise ValueError(f"Prediction.labels must be integers, got dtype {labels.dtype}")
        n = labels.shape[0]
        if n and int(labels.min()) < 0:
            raise ValueError("Prediction.labels must be >= 0")
        width = None
        for name, arr in (("scores", scores), ("logits", logits)):
            if arr is not None:
                if arr.ndim != 2 or arr.shape[0] != n:
                    raise ValueError(f"Prediction.{name} must have shape (n={n}, classes), got {arr.shape}")
                if width is None:
                    width = arr.shape[1]
        if width is not None and n and int(labels.max()) >= width:
            raise ValueError(f"Prediction.labels must be < the number of classes ({width})")
        if self.access < Access.SCORES and scores is not None:
            raise ValueError("a LABEL-access prediction cannot carry scores")
        if self.access < Access.LOGITS and logits is not None:
            raise ValueError("a prediction below LOGITS access cannot carry logits")

    @classmethod
    def derived(
        cls,
        base: Prediction,
        *,
        scores: FloatArray | None = None,
        logits: FloatArray | None = None,
        access: Access,
    ) -> Prediction:
        """A prediction derived from the validated ``base``: its labels, with ``scores`` / ``logits``
        of as many rows (an output policy's answer). Only the access invariants and the row count
        are re-checked; the per-row validation of ``__post_init__`` was done when ``base`` was
        built. This is the hot path of the guard's output policies."""
        if (access < Access.SCORES and scores is not None) or (access < Access.LOGITS and logits is not None):
            raise ValueError(
                f"a {access.name} prediction cannot carry outputs above its access "
                "(scores need SCORES, logits need LOGITS)"
            )
        shape = (base.labels.shape[0], -1)
        for arr in (scores, logits):
            if arr is not None and (arr.ndim != 2 or arr.shape[0] != shape[0]):
                raise ValueError(f"a derived prediction must keep {shape[0]} rows, got {arr.shape}")
        return cls._unchecked(base.labels, scores, logits, access)

    @classmethod
    def _unchecked(
        cls, labels: IntArray, scores: FloatArray | None, logits: FloatArray | None, access: Access
    ) -> Prediction:
        obj = object.__new__(cls)
        object.__setattr__(obj, "labels", labels)
        object.__setattr__(obj, "scores", scores)
        object.__setattr__(obj, "logits", logits)
        object.__setattr__(obj, "access", access)
        return obj

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def probabilities(self) -> NDArray[np.float64] | None:
        """The probability vector behind this prediction: its scores, or the softmax of its logits
        (float64, one row per input); None for a label-only prediction."""
        if self.scores is not None:
            return np.asarray(self.scores, dtype=np.float64)
        if self.logits is not None:
            return softmax(self.logits)
        return None

    @classmethod
    def from_logits(cls, logits: FloatArray, access: Access) -> Prediction:
        """Build the prediction a target at ``access`` returns for raw ``logits``."""
        logits = np.asarray(logits, dtype=np.float64)
        if logits.ndim != 2:
            raise ValueError(f"logits must have shape (n, classes), got {logits.shape}")
        # argmax of a 2-D array: n labels in [0, classes), so nothing is left to validate
        labels = logits.argmax(axis=1).astype(np.int64, copy=False)
        return cls._unchecked(
            labels,
            softmax(logits) if access >= Access.SCORES else None,
            logits if access >= Access.LOGITS else None,
            min(access, Access.LOGITS),
        )

    @classmethod
    def from_scores(cls, scores: FloatArray, access: Access) -> Prediction:
        """Build the prediction a target at ``access`` (at most SCORES) returns for probabilities."""
        scores = np.asarray(scores, dtype=np.float64)
        if scores.ndim != 2:
            raise ValueError(f"scores must have shape (n, classes), got {scores.shape}")
        labels = scores.argmax(axis=1).astype(np.int64, copy=False)
        level = min(access, Access.SCORES)
        return cls._unchecked(labels, scores if level >= Access.SCORES else None, None, level)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (lists of numbers), the shape the guard returns."""
        out: dict[str, Any] = {"labels": self.labels.tolist(), "access": self.access.name.lower()}
        if self.scores is not None:
            out["scores"] = self.scores.tolist()
        if self.logits is not None:
            out["logits"] = self.logits.tolist()
        return out


@runtime_checkable
class Target(Protocol):
    """What an attack may ask of a model."""

    @property
    def num_classes(self) -> int: ...

    @property
    def input_shape(self) -> tuple[int, ...]: ...

    @property
    def access(self) -> Access: ...

    @property
    def queries_used(self) -> int: ...

    @property
    def budget(self) -> int | None: ...

    def predict(self, x: FloatArray) -> Prediction: ...

    def describe(self) -> str: ...


@runtime_checkable
class WhiteBox(Protocol):
    """The white-box capability: a target granting ``Access.WHITEBOX`` exposes its torch module and
    differentiable logits. ``forward`` counts ``len(x)`` queries like ``predict``."""

    @property
    def module(self) -> Any: ...

    def forward(self, x: Any) -> Any: ...


@dataclass(frozen=True)
class Unwrapped:
    """A target seen through every wrapper around it (output policies, ...).

    ``chain``: the targets from the outermost (the one given) to ``base``, the innermost;
    ``policies``: the output policies on the way, outermost first; ``whitebox``: the target itself
    when it grants WHITEBOX access and implements :class:`WhiteBox`, else None; ``module``: the
    model object behind ``base`` when the adapter holds one (a torch module), whatever the access:
    read for its published architecture (``invguard_spec``) and recipe (``invguard_meta``), never
    for gradients below WHITEBOX.
    """

    chain: tuple[Any, ...]
    policies: tuple[Any, ...]
    whitebox: WhiteBox | None
    module: Any

    @property
    def base(self) -> Any:
        return self.chain[-1]

    @property
    def spec(self) -> dict[str, Any] | None:
        """The invguard architecture spec of the module (``invguard.models.build``), or None."""
        spec = getattr(self.module, "invguard_spec", None)
        return None if spec is None else dict(spec)

    @property
    def meta(self) -> dict[str, Any]:
        """The module's saved metadata (``invguard_meta``: recipe, ...), empty when unknown."""
        return dict(getattr(self.module, "invguard_meta", None) or {})

    def queries_left(self) -> int | None:
        """Queries left before the first budget along the chain runs out (None: no budget)."""
        lefts = [int(t.budget) - int(t.queries_used) for t in self.chain if t.budget is not None]
        return None if not lefts else max(0, min(lefts))


def unwrap(target: Target) -> Unwrapped:
    """Walk ``target``'s wrappers down to the model adapter: the one place that reads them.

    A wrapper declares itself by an ``inner`` target and, for an output policy, its ``policy``;
    an adapter declares the model object it holds with ``inner_module()``.
    """
    chain: list[Any] = [target]
    policies: list[Any] = []
    t: Any = target
    while getattr(t, "inner", None) is not None and len(chain) < 64:
        if getattr(t, "policy", None) is not None:
            policies.append(t.policy)
        t = t.inner
        chain.append(t)
    held = getattr(t, "inner_module", None)
    module = held() if callable(held) else None
    whitebox = target if target.access >= Access.WHITEBOX and isinstance(target, WhiteBox) else None
    return Unwrapped(chain=tuple(chain), policies=tuple(policies), whitebox=whitebox, module=module)


class BaseTarget:
    """Shared machinery of every adapter: input validation, query counting and budgets.

    Subclasses implement ``_predict(x) -> Prediction`` on a validated float batch of shape
    ``(n, *input_shape)``; they never see a request that would break the budget.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        input_shape: tuple[int, ...],
        access: Access,
        budget: int | None = None,
        name: str = "target",
    ) -> None:
        if int(num_classes) < 2:
            raise ConfigError(f"{name}: num_classes must be >= 2, got {num_classes}")
        if budget is not None and (
            isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 0
        ):
            raise ConfigError(f"{name}: budget must be a whole number >= 0 or None, got {budget!r}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
            raise ConfigError(f"{name}: num_classes must be a whole number, got {num_classes!r}")
        try:
            input_shape = tuple(int(d) for d in input_shape)
        except (TypeError, ValueError):
            raise ConfigError(
                f"{name}: input_shape must be a tuple of whole numbers, got {input_shape!r}"
            ) from None
        if not input_shape or any(d < 1 for d in input_shape):
            raise ConfigError(f"{name}: input_shape must be non-empty with sizes >= 1, got {input_shape}")
        self._num_classes = int(num_classes)
        self._input_shape = tuple(int(d) for d in input_shape)
        self._access = Access.parse(access)
        self._budget = None if budget is None else int(budget)
        self._queries = 0
        self._lock = threading.Lock()
        self.name = name

    @property
    def num_classes(self) -> int:
        return self._num_classes

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self._input_shape

    @property
    def access(self) -> Access:
        return self._access

    @property
    def queries_used(self) -> int:
        return self._queries

    @property
    def budget(self) -> int | None:
        return self._budget

    @property
    def queries_left(self) -> int | None:
        return None if self._budget is None else max(0, self._budget - self._queries)

    def describe(self) -> str:
        return self._access.name

    def reset_queries(self) -> None:
        with self._lock:
            self._queries = 0

    def _as_batch(self, x: FloatArray) -> NDArray[np.float32]:
        """Validate ``x``: one sample of ``input_shape``, a batch ``(n, *input_shape)`` or flat ``(n, d)``.

        Anything else (including channels-last images) is refused, never silently reshaped.
        """
        try:
            arr = np.asarray(x, dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{self.name}: input is not a numeric array ({e})") from None
        shape = self._input_shape
        size = int(np.prod(shape))
        if arr.shape == shape:
            arr = arr[None, ...]
        elif arr.ndim == 2 and len(shape) > 1 and arr.shape[1] == size:
            arr = arr.reshape((arr.shape[0], *shape))
        if arr.shape[1:] != shape:
            hint = ""
            if arr.ndim == len(shape) + 1 and sorted(arr.shape[1:]) == sorted(shape):
                hint = " (channels-last? transpose the batch to channels-first)"
            raise ConfigError(
                f"{self.name}: input of shape {tuple(np.shape(x))} does not match the target's input shape "
                f"{shape}{hint}; pass one sample of shape {shape}, a batch of shape "
                f"(n, {', '.join(map(str, shape))}) or a flat batch of shape (n, {size})"
            )
        if arr.shape[0] == 0:
            raise ConfigError(f"{self.name}: empty batch: pass at least one sample")
        if not np.all(np.isfinite(arr)):
            raise ConfigError(f"{self.name}: input contains NaN or infinite values")
        return arr

    def charge(self, n: int) -> None:
        """Count ``n`` queries, refusing (before any is spent) if that would exceed the budget."""
        with self._lock:
            if self._budget is not None and self._queries + n > self._budget:
                raise BudgetExhausted(
                    f"{self.name}: query budget exhausted: {self._queries} of {self._budget} queries used, "
                    f"this request needs {n} more",
                    used=self._queries,
                    budget=self._budget,
                    requested=n,
                )
            self._queries += n

    def refund(self, n: int) -> None:
        """Give back ``n`` charged queries that were never sent (e.g. chunks after a failure)."""
        with self._lock:
            self._queries = max(0, self._queries - n)

    def predict(self, x: FloatArray) -> Prediction:
        batch = self._as_batch(x)
        self.charge(batch.shape[0])
        pred = self._predict(batch)
        if len(pred) != batch.shape[0]:
            raise TargetError(f"{self.name}: asked for {batch.shape[0]} predictions, got {len(pred)}")
        return pred

    def _predict(self, x: NDArray[np.float32]) -> Prediction:  # pragma: no cover - abstract
        raise NotImplementedError
