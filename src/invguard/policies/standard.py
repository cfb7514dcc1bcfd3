"""The standard output policies."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from invguard.core.access import Access
from invguard.core.errors import ConfigError
from invguard.core.target import Prediction, softmax
from invguard.policies.base import POLICIES, OutputPolicy


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _scored(pred: Prediction, scores: NDArray[np.float64]) -> Prediction:
    """A SCORES-level prediction with the model's own labels and the given scores."""
    return Prediction.derived(pred, scores=scores, access=Access.SCORES)


@POLICIES.register("identity")
class Identity(OutputPolicy):
    """Return everything the target gives (logits included). For trusted, internal roles."""

    name = "identity"
    cap = Access.LOGITS

    def apply(self, pred: Prediction) -> Prediction:
        return pred

    def transform(self, pred: Prediction) -> Prediction:
        return pred

    def label(self) -> str:
        return "full output"


@POLICIES.register("scores")
class ScoresOnly(OutputPolicy):
    """Return the probability vector but never logits."""

    name = "scores"
    cap = Access.SCORES

    def transform(self, pred: Prediction) -> Prediction:
        p = pred.probabilities()
        assert p is not None  # apply() only calls transform above LABEL
        return _scored(pred, p)

    def label(self) -> str:
        return "scores"


@POLICIES.register("label_only")
class LabelOnly(OutputPolicy):
    """Return the predicted label and nothing else."""

    name = "label_only"
    cap = Access.LABEL

    def transform(self, pred: Prediction) -> Prediction:
        return Prediction.derived(pred, access=Access.LABEL)

    def label(self) -> str:
        return "label only"


@POLICIES.register("top_k")
class TopK(OutputPolicy):
    """Keep the ``k`` highest scores, set the rest to zero and renormalise the kept ones to sum to 1.

    The result has at most ``k`` non-zero entries (exactly ``k`` unless the model itself gave exact
    zeros). Ties at the k-th place are broken by class index. The model's label is always kept,
    so the argmax is preserved.
    """

    name = "top_k"

    def __init__(self, k: int = 3) -> None:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ConfigError(f"top_k: k must be an integer >= 1, got {k!r}")
        self.k = int(k)

    def params(self) -> dict[str, Any]:
        return {"k": self.k}

    @property
    def leaves(self) -> Access:
        """Top-1 scores are renormalised to a one-hot vector: the label and nothing more."""
        return Access.LABEL if self.k == 1 else Access.SCORES

    def label(self) -> str:
        return f"top_k={self.k}"

    def transform(self, pred: Prediction) -> Prediction:
        p = pred.probabilities()
        assert p is not None
        n, c = p.shape
        k = min(self.k, c)
        # highest first, ties by lower class index; the model's own label always ranks first
        key = np.negative(p)
        rows = np.arange(n)
        key[rows, pred.labels] = -np.inf
        drop = np.argsort(key, axis=1, kind="stable")[:, k:]
        out = p.copy()
        out[rows[:, None], drop] = 0.0
        total = out.sum(axis=1, keepdims=True)
        ok = total > 0
        np.divide(out, total, out=out, where=ok)
        if not ok.all():  # a row the model scored all zero stays all zero
            out[~ok[:, 0]] = 0.0
        return _scored(pred, out)


@POLICIES.register("round")
class Round(OutputPolicy):
    """Round each score to ``decimals`` decimal places (idempotent).

    Rounded scores need not sum exactly to 1; with ``decimals=0`` a row whose top score is below
    0.5 rounds to all zeros (the label is still returned). Labels are the model's own, so the label is
    preserved even where rounding creates a tie.
    """

    name = "round"

    def __init__(self, decimals: int = 2) -> None:
        if (
            isinstance(decimals, bool)
            or not isinstance(decimals, (int, np.integer))
            or not 0 <= decimals <= 10
        ):
            raise ConfigError(f"round: decimals must be an integer in [0, 10], got {decimals!r}")
        self.decimals = int(decimals)

    def params(self) -> dict[str, Any]:
        return {"decimals": self.decimals}

    def label(self) -> str:
        return f"rounded to {self.decimals} decimals"

    def transform(self, pred: Prediction) -> Prediction:
        p = pred.probabilities()
        assert p is not None
        return _scored(pred, np.round(p, self.decimals))


@POLICIES.register("noise")
class Noise(OutputPolicy):
    """Add Gaussian or Laplace noise of scale ``scale`` to the scores, clip at 0 and renormalise.

    ``seed=None`` (the default) draws fresh OS entropy, as a deployment must: a known seed gives
    an attacker the noise stream to subtract. Give a seed for reproducible audits. Independent
    noise per answer averages out over repeated queries of the same input; budgets and the
    guard's detection are the counter to that. The returned label stays the model's own; the
    noised scores' argmax may differ from it (``preserves_argmax`` is False).
    """

    name = "noise"
    preserves_argmax = False
    random = True

    def __init__(self, scale: float = 0.05, kind: str = "gaussian", seed: int | None = None) -> None:
        if not _is_number(scale) or not np.isfinite(scale) or scale < 0:
            raise ConfigError(f"noise: scale must be a finite number >= 0, got {scale!r}")
        if kind not in ("gaussian", "laplace"):
            raise ConfigError(f"noise: kind must be 'gaussian' or 'laplace', got {kind!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise ConfigError(f"noise: seed must be a whole number or None, got {seed!r}")
        self.scale = float(scale)
        self.kind = kind
        self.seed = seed
        self._rng = np.random.default_rng(seed)

    def params(self) -> dict[str, Any]:
        return {"scale": self.scale, "kind": self.kind, "seed": self.seed}

    def reseeded(self, seed: int | None) -> Noise:
        return Noise(self.scale, self.kind, seed=seed)

    def seeded_by_default(self, seed: int) -> Noise:
        return self if self.seed is not None else self.reseeded(seed)

    def label(self) -> str:
        return f"{self.kind} noise scale={self.scale:g}"

    def transform(self, pred: Prediction) -> Prediction:
        p = pred.probabilities()
        assert p is not None
        if self.kind == "gaussian":
            noisy = p + self._rng.normal(0.0, self.scale, size=p.shape)
        else:
            noisy = p + self._rng.laplace(0.0, self.scale, size=p.shape)
        noisy = np.clip(noisy, 0.0, None)
        total = noisy.sum(axis=1, keepdims=True)
        onehot = np.eye(p.shape[1])[pred.labels]
        out = np.where(total > 0, noisy / np.where(total > 0, total, 1.0), onehot)
        return _scored(pred, out)


@POLICIES.register("temperature")
class Temperature(OutputPolicy):
    """Soften (``T`` > 1) or sharpen (``T`` < 1) the scores: ``softmax(log p / T)``. Argmax preserved."""

    name = "temperature"

    def __init__(self, t: float = 2.0) -> None:
        if not _is_number(t) or not np.isfinite(t) or t <= 0:
            raise ConfigError(f"temperature: t must be a finite number > 0, got {t!r}")
        self.t = float(t)

    def params(self) -> dict[str, Any]:
        return {"t": self.t}

    def label(self) -> str:
        return f"temperature={self.t:g}"

    def transform(self, pred: Prediction) -> Prediction:
        if pred.logits is not None:
            z = np.asarray(pred.logits, dtype=np.float64)
        else:
            p = pred.probabilities()
            assert p is not None
            z = np.log(np.clip(p, 1e-300, None))
        return _scored(pred, softmax(z / self.t))


@POLICIES.register("reverse_sigmoid")
class ReverseSigmoid(OutputPolicy):
    """The reverse-sigmoid perturbation of Lee et al., "Defending Against NN Model Stealing Attacks
    Using Deceptive Perturbations" (IEEE S&P Workshops 2019).

    ``r = beta * (sigmoid(gamma * logit(p)) - 1/2)``, ``p' = normalise(clip(p - r, 0, 1))``. It keeps
    the answer's shape but makes the scores a poor (non-invertible) function of the logits. Large
    ``beta`` can change the argmax of the perturbed scores; labels stay the model's own.
    """

    name = "reverse_sigmoid"
    preserves_argmax = False

    def __init__(self, beta: float = 1.0, gamma: float = 0.1) -> None:
        for n, v in (("beta", beta), ("gamma", gamma)):
            if not _is_number(v) or not np.isfinite(v) or v <= 0:
                raise ConfigError(f"reverse_sigmoid: {n} must be a finite number > 0, got {v!r}")
        self.beta = float(beta)
        self.gamma = float(gamma)

    def params(self) -> dict[str, Any]:
        return {"beta": self.beta, "gamma": self.gamma}

    def label(self) -> str:
        return f"reverse sigmoid beta={self.beta:g} gamma={self.gamma:g}"

    def transform(self, pred: Prediction) -> Prediction:
        p = pred.probabilities()
        assert p is not None
        eps = 1e-12
        q = np.clip(p, eps, 1 - eps)
        r = self.beta * (1.0 / (1.0 + np.exp(-self.gamma * np.log(q / (1 - q)))) - 0.5)
        out = np.clip(p - r, 0.0, 1.0)
        total = out.sum(axis=1, keepdims=True)
        onehot = np.eye(p.shape[1])[pred.labels]
        out = np.where(total > 0, out / np.where(total > 0, total, 1.0), onehot)
        return _scored(pred, out)
