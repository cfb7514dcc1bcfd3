"""RMIA, the relative membership inference attack of Zarifzadeh et al. 2024 ("Low-Cost High-Power
Membership Inference Attacks", ICML 2024), offline.

For a candidate ``x`` and population samples ``z`` it computes the pairwise likelihood ratio

    LR(x, z) = (Pr(x | theta) / Pr(x)) / (Pr(z | theta) / Pr(z))

with ``Pr(. | theta)`` the target's probability of the true class, ``Pr(z)`` the mean over reference
models (trained on random halves of the population, so this is the population marginal) and, offline
(no reference model trained on ``x``), ``Pr(x) = ((1 + a) Pr_OUT(x) + (1 - a)) / 2``: the paper's
linear approximation of the unseen IN term from the OUT models. The score of ``x`` is the fraction of
population samples it dominates, ``mean_z 1[LR(x, z) > gamma]``. The yes/no decision threshold on
that score is calibrated to ``decision_fpr`` on a held-out slice of the population that no reference
model trains on (scored exactly like a non-member candidate).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from invguard.attacks.base import ATTACKS, RunContext
from invguard.attacks.membership.common import (
    ReferenceAttack,
    as_target_would,
    candidates_of,
    paired_masks,
    run_references,
    scored,
    splits_of,
    true_prob,
)
from invguard.core.access import Access
from invguard.core.data import Splits
from invguard.core.errors import ConfigError
from invguard.core.evidence import MembershipScores
from invguard.core.params import OPEN_UNIT, POSITIVE, Int, Real, Spec
from invguard.core.target import Target


@ATTACKS.register("membership.rmia")
@dataclass(frozen=True)
class RMIA(ReferenceAttack):
    """Offline RMIA.

    ``n_models``: reference models trained on random halves of the public split; ``a``: the offline
    approximation parameter (0.3 in the reference implementation); ``gamma``: the pairwise
    likelihood-ratio threshold; ``n_population``: population samples ``z`` drawn from the public
    split (all of it when smaller); ``n_calibration``: public records held out of reference training
    to calibrate the decision (at most a quarter of the split); ``arch``/``recipe``/``train`` as in
    ``membership.lira``.
    """

    name: ClassVar[str] = "membership.rmia"
    requires: ClassVar[Access] = Access.SCORES
    strength: ClassVar[int] = 40
    fast_params: ClassVar[Mapping[str, Any]] = {"n_models": 2, "n_boot": 300}

    n_models: int = 4
    a: float = 0.3
    gamma: float = 2.0
    n_population: int = 2000
    n_calibration: int = 200
    decision_fpr: float = 0.05

    constraints: ClassVar[Mapping[str, Spec]] = {
        "a": Real(0, 1),
        "gamma": POSITIVE,
        "n_population": Int(1),
        "n_calibration": Int(0),
        "decision_fpr": OPEN_UNIT,
    }

    def search(
        self, target: Target, data: Splits, rng: np.random.Generator, ctx: RunContext
    ) -> MembershipScores:
        splits = splits_of(data, self.name)
        cand = candidates_of(splits)
        ref = self.reference(target)
        pub = splits.public
        if len(pub) < 2:
            raise ConfigError(f"{self.name}: the public split needs at least 2 records, has {len(pub)}")
        seed = int(rng.integers(2**31))
        # a held-out slice of the population, never trained on by a reference model, calibrates the
        # yes/no decision: those records are scored exactly like non-member candidates
        order = rng.permutation(len(pub))
        n_cal = min(self.n_calibration, len(pub) // 4)
        cal_idx, rest = np.sort(order[:n_cal]), np.sort(order[n_cal:])
        z_idx = np.sort(rng.permutation(rest)[: min(self.n_population, rest.size)])
        zX, zy = pub.X[z_idx], pub.y[z_idx]

        queries = np.concatenate([cand.X, pub.X[cal_idx], zX]).astype(np.float32)
        labels = np.concatenate([cand.y, pub.y[cal_idx], zy])
        p_target = true_prob(target.predict(queries), labels)

        masks = paired_masks(self.n_models, rest.size, seed)
        logits = run_references(
            ctx,
            ref,
            pub.X[rest].astype(np.float32),
            pub.y[rest],
            masks,
            queries[:, None],
            seed,
            task=f"{self.name} reference models",
        )
        p_ref = np.stack([true_prob(as_target_would(lg[:, 0], target), labels) for lg in logits])

        n = len(cand) + n_cal  # candidates and calibration records: OUT for every reference model
        px_out = p_ref[:, :n].mean(0)
        px = 0.5 * ((1.0 + self.a) * px_out + (1.0 - self.a))
        pz = p_ref[:, n:].mean(0)
        tiny = 1e-30
        ratio_x = p_target[:n] / np.maximum(px, tiny)
        ratio_z = p_target[n:] / np.maximum(pz, tiny)
        # LR(x, z) > gamma  <=>  ratio_z < ratio_x / gamma: count the z below
        sorted_z = np.sort(ratio_z)
        all_scores = np.searchsorted(sorted_z, ratio_x / self.gamma, side="left") / sorted_z.size
        scores, cal_scores = all_scores[: len(cand)], all_scores[len(cand) :]
        if cal_scores.size:
            threshold = float(np.quantile(cal_scores, 1.0 - self.decision_fpr, method="higher"))
            if np.mean(cal_scores >= threshold) > self.decision_fpr:
                higher = cal_scores[cal_scores > threshold]
                threshold = float(higher.min()) if higher.size else 1.0 + 1e-9
        else:
            threshold = 1.0 - self.decision_fpr
        return scored(
            scores.astype(np.float64),
            cand,
            decision_threshold=threshold,
            info={
                "population_samples": int(z_idx.size),
                "calibration_records": int(n_cal),
                "a": self.a,
                "gamma": self.gamma,
                **self.reference_info(ref, masks),
            },
        )
