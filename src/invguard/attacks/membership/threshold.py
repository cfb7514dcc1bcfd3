"""Threshold membership attacks on a per-record statistic (loss, confidence, entropy, modified entropy).

Yeom et al. 2018 ("Privacy Risk in Machine Learning: Analyzing the Connection to Overfitting"):
loss; Salem et al. 2019 ("ML-Leaks"): confidence and entropy; Song & Mittal 2021 ("Systematic
Evaluation of Privacy Risks of Machine Learning Models"): modified entropy. The decision threshold
is calibrated on population data (the public split, non-members by construction) to a chosen
false-positive rate, never on the evaluation records.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from invguard.attacks.base import ATTACKS, Attack, RunContext
from invguard.attacks.membership.common import (
    calibrated_threshold,
    candidates_of,
    scored,
    splits_of,
    statistic,
)
from invguard.core.access import Access
from invguard.core.data import Splits
from invguard.core.evidence import MembershipScores
from invguard.core.params import OPEN_UNIT, Int, Options, Spec
from invguard.core.target import Target

STATISTICS = ("loss", "confidence", "entropy", "modified_entropy")


@ATTACKS.register("membership.threshold")
@dataclass(frozen=True)
class ThresholdAttack(Attack):
    """Score each candidate by ``statistic``; decide "member" above a population-calibrated threshold.

    ``decision_fpr``: the false-positive rate the threshold is calibrated to on the public split
    (sets the balanced accuracy; the ROC metrics do not depend on it); ties in the population scores
    never push the real rate above it (the threshold steps above a tie group). ``n_boot``: bootstrap
    replicates for the CIs. ``top``: rows in the risk ranking.
    """

    name: ClassVar[str] = "membership.threshold"
    requires: ClassVar[Access] = Access.SCORES
    strength: ClassVar[int] = 20
    fast_params: ClassVar[Mapping[str, Any]] = {"n_boot": 300}

    statistic: str = "loss"
    decision_fpr: float = 0.05
    n_boot: int = 1000
    top: int = 20

    constraints: ClassVar[Mapping[str, Spec]] = {
        "statistic": Options(*STATISTICS),
        "decision_fpr": OPEN_UNIT,
        "n_boot": Int(0),
        "top": Int(0),
    }

    def search(
        self, target: Target, data: Splits, rng: np.random.Generator, ctx: RunContext
    ) -> MembershipScores:
        splits = splits_of(data, self.name)
        cand = candidates_of(splits)
        scores = statistic(target.predict(cand.X), cand.y, self.statistic)
        population = statistic(target.predict(splits.public.X), splits.public.y, self.statistic)
        threshold = calibrated_threshold(population, self.decision_fpr)
        return scored(
            scores,
            cand,
            decision_threshold=threshold,
            info={
                "statistic": self.statistic,
                "population_records": len(splits.public),
                "population_fpr": float(np.mean(population >= threshold)),
            },
        )
