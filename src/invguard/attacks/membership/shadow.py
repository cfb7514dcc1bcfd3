"""Shadow-model membership inference (Shokri et al. 2017, "Membership Inference Attacks Against
Machine Learning Models", IEEE S&P 2017).

Shadow models are trained like the target on random halves of the public split; each one is queried
on its own training half (labelled IN) and the other half (OUT). An attack classifier learns to tell
IN from OUT from the output vector, one per class (as in the paper) or a single global one, and then
scores the target's outputs on the candidates. Shadow outputs pass through the target's own output
policy, so the attack model sees what the target's clients see.
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
    probabilities,
    run_references,
    scored,
    splits_of,
)
from invguard.core.access import Access
from invguard.core.data import Splits
from invguard.core.errors import ConfigError
from invguard.core.evidence import MembershipScores
from invguard.core.params import Options, Spec
from invguard.core.target import Prediction, Target


def features(pred: Prediction, y: np.ndarray) -> np.ndarray:
    """Attack-model input: log-probabilities in class order, sorted, and of the true class."""
    p = np.clip(probabilities(pred), 1e-12, 1.0)
    lp = np.log(p)
    srt = -np.sort(-lp, axis=1)
    return np.concatenate([lp, srt, lp[np.arange(len(y)), y][:, None]], axis=1)


@ATTACKS.register("membership.shadow")
@dataclass(frozen=True)
class ShadowAttack(ReferenceAttack):
    """Shokri et al.'s shadow-model attack.

    ``n_models``: shadow models; ``attack_model``: ``per_class`` (one classifier per true class,
    falling back to the global one for a class with too few shadow records) or ``global``;
    ``arch``/``recipe``/``train`` as in ``membership.lira``. The decision is the attack classifier's
    own (IN probability >= 0.5).
    """

    name: ClassVar[str] = "membership.shadow"
    requires: ClassVar[Access] = Access.SCORES
    strength: ClassVar[int] = 30
    fast_params: ClassVar[Mapping[str, Any]] = {"n_models": 4, "n_boot": 300}

    n_models: int = 8
    attack_model: str = "per_class"

    constraints: ClassVar[Mapping[str, Spec]] = {"attack_model": Options("per_class", "global")}

    def search(
        self, target: Target, data: Splits, rng: np.random.Generator, ctx: RunContext
    ) -> MembershipScores:
        from sklearn.ensemble import HistGradientBoostingClassifier

        splits = splits_of(data, self.name)
        cand = candidates_of(splits)
        ref = self.reference(target)
        pub = splits.public
        if len(pub) < 4:
            raise ConfigError(f"{self.name}: the public split needs at least 4 records, has {len(pub)}")
        seed = int(rng.integers(2**31))
        X = pub.X.astype(np.float32)
        masks = paired_masks(self.n_models, len(pub), seed)
        logits = run_references(
            ctx, ref, X, pub.y, masks, X[:, None], seed, task=f"{self.name} shadow models"
        )
        feats = np.concatenate([features(as_target_would(lg[:, 0], target), pub.y) for lg in logits])
        inside = masks.reshape(-1).astype(np.int64)
        cls = np.tile(pub.y, self.n_models)

        def clf() -> Any:
            return HistGradientBoostingClassifier(max_iter=100, learning_rate=0.1, random_state=seed % 2**31)

        global_model = clf().fit(feats, inside)
        target_feats = features(target.predict(cand.X), cand.y)
        scores = global_model.predict_proba(target_feats)[:, 1]
        per_class_used = 0
        if self.attack_model == "per_class":
            for c in np.unique(cand.y):
                sel = cls == c
                if sel.sum() < 20 or len(np.unique(inside[sel])) < 2:
                    continue
                model = clf().fit(feats[sel], inside[sel])
                rows = cand.y == c
                scores[rows] = model.predict_proba(target_feats[rows])[:, 1]
                per_class_used += 1
        return scored(
            scores,
            cand,
            decision_threshold=0.5,
            info={
                "attack_model": self.attack_model,
                "per_class_models": per_class_used,
                **self.reference_info(ref, masks),
            },
        )
