"""The standard output policies."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from invguard.core.access import Access
from invguard.core.params import NON_NEGATIVE, POSITIVE, Int, Options, Spec, check
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

    constraints: ClassVar[Mapping[str, Spec]] = {"k": Int(1)}

    def __init__(self, k: int = 3) -> None:
        check(self.name, {"k": k}, self.constraints)
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

    constraints: ClassVar[Mapping[str, Spec]] = {"decimals": Int(0, 10)}

    def __init__(self, decimals: int = 2) -> None:
        check(self.name, {"decimals": decimals}, self.constraints)
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

    constraints: ClassVar[Mapping[str, Spec]] = {
        "scale": NON_NEGATIVE,
        "kind": Options("gaussian", "laplace"),
        "seed": (None, Int()),
    }

    def __init__(self, scale: float = 0.05, kind: str = "gaussian", seed: int | None = None) -> None:
        check(self.name, {"scale": scale, "kind": kind, "seed": seed}, self.constraints)
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

    constraints: ClassVar[Mapping[str, Spec]] = {"t": POSITIVE}

    def __init__(self, t: float = 2.0) -> None:
        check(self.name, {"t": t}, self.constraints)
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

    constraints: ClassVar[Mapping[str, Spec]] = {"beta": POSITIVE, "gamma": POSITIVE}

    def __init__(self, beta: float = 1.0, gamma: float = 0.1) -> None:
        check(self.name, {"beta": beta, "gamma": gamma}, self.constraints)
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
