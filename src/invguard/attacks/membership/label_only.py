"""Label-only membership inference by robustness to augmentation and noise (Choquette-Choo et al.
2021, "Label-Only Membership Inference Attacks", ICML 2021, Sec. 4: the data-augmentation and
noise-robustness attacks).

Training records sit further from the decision boundary than unseen ones, so the model's label for
them survives more perturbations. Each candidate is queried as is and under ``queries_per_record``
random perturbations (for images a random translation of up to ``max_shift`` pixels plus Gaussian
noise; for tabular data Gaussian noise); the score is the share of answers equal to the true label.
Needs only LABEL access. The decision threshold is calibrated on the public (population) split.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from invguard.attacks.base import ATTACKS, Attack, RunContext
from invguard.attacks.membership.common import candidates_of, scored, shift, splits_of
from invguard.core.access import Access
from invguard.core.data import Splits
from invguard.core.evidence import MembershipScores
from invguard.core.params import NON_NEGATIVE, OPEN_UNIT, Int, Spec
from invguard.core.target import Target


def perturb(X: np.ndarray, k: int, noise: float, max_shift: int, rng: np.random.Generator) -> np.ndarray:
    """``(n, k + 1, *shape)``: each record as is, then ``k`` random perturbations of it."""
    views = [X]
    image = X.ndim == 4
    for _ in range(k):
        v = X
        if image and max_shift > 0:
            dy, dx = (int(d) for d in rng.integers(-max_shift, max_shift + 1, size=2))
            v = shift(v, dy, dx)
        if noise > 0:
            v = v + rng.normal(0.0, noise, size=v.shape).astype(np.float32)
            if image:
                v = np.clip(v, 0.0, 1.0)
        views.append(v)
    return np.stack(views, axis=1).astype(np.float32)


@ATTACKS.register("membership.label_only")
@dataclass(frozen=True)
class LabelOnlyAttack(Attack):
    """Augmentation/noise robustness attack with a population-calibrated threshold."""

    name: ClassVar[str] = "membership.label_only"
    requires: ClassVar[Access] = Access.LABEL
    strength: ClassVar[int] = 10
    fast_params: ClassVar[Mapping[str, Any]] = {"queries_per_record": 8, "n_boot": 300}

    queries_per_record: int = 16
    noise: float = 0.1
    max_shift: int = 1
    decision_fpr: float = 0.05
    n_boot: int = 1000
    top: int = 20

    constraints: ClassVar[Mapping[str, Spec]] = {
        "queries_per_record": Int(1),
        "noise": NON_NEGATIVE,
        "max_shift": Int(0),
        "decision_fpr": OPEN_UNIT,
        "n_boot": Int(0),
        "top": Int(0),
    }

    def cross_checks(self) -> list[str]:
        if self.noise == 0 and self.max_shift == 0:
            return ["noise and max_shift are both 0: the perturbations would all be the record itself"]
        return []

    def _robustness(
        self, target: Target, X: np.ndarray, y: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        views = perturb(X, self.queries_per_record, self.noise, self.max_shift, rng)
        n, a = views.shape[:2]
        labels = target.predict(views.reshape((n * a, *views.shape[2:]))).labels.reshape(n, a)
        out: np.ndarray = (labels == y[:, None]).mean(axis=1)
        return out

    def search(
        self, target: Target, data: Splits, rng: np.random.Generator, ctx: RunContext
    ) -> MembershipScores:
        splits = splits_of(data, self.name)
        cand = candidates_of(splits)
        scores = self._robustness(target, cand.X, cand.y, rng)
        population = self._robustness(target, splits.public.X, splits.public.y, rng)
        threshold = float(np.quantile(population, 1.0 - self.decision_fpr, method="higher"))
        if np.mean(population >= threshold) > self.decision_fpr:  # ties at the top: go one step up
            higher = population[population > threshold]
            threshold = float(higher.min()) if higher.size else float(np.nextafter(1.0, 2.0))
        return scored(
            scores,
            cand,
            decision_threshold=threshold,
            info={
                "queries_per_record": self.queries_per_record + 1,
                "population_records": len(splits.public),
            },
        )
