"""White-box model inversion: optimise inputs through the target's gradients.

Fredrikson, Jha & Ristenpart, "Model Inversion Attacks that Exploit Confidence Information and Basic
Countermeasures" (CCS 2015), with the image priors of Mahendran & Vedaldi (CVPR 2015): total
variation, L2, a box constraint and random jitter, several restarts keeping the best. The class
objective is *capped*: a hinge on the logit margin, so that once the target is confident the priors
take over (maximising log-softmax instead keeps adding adversarial detail).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from invguard.attacks.base import ATTACKS, RunContext
from invguard.attacks.inversion.common import _FAST, InversionAttack, pca_space
from invguard.attacks.inversion.priors import PixelSpace, Space
from invguard.attacks.inversion.search import Meter, SearchState, gradient_search
from invguard.core.access import Access
from invguard.core.params import NON_NEGATIVE, POSITIVE, Int, Options, Spec
from invguard.core.target import Target


@ATTACKS.register("inversion.whitebox")
@dataclass(frozen=True)
class WhiteBoxInversion(InversionAttack):
    """Gradient inversion in pixel space. ``steps`` Adam steps at rate ``lr``; ``tv``/``l2`` prior
    weights; ``jitter`` pixels of random shift per step; ``restarts`` random starts per
    reconstruction (the best is kept); ``patience`` steps without improvement before stopping.

    ``space="pca"`` searches the whitened principal components of the public data (``components``
    of them) with a Gaussian prior of weight ``prior_weight``; when some attacked class is absent
    from the public data (the disjoint-class setting) those components describe *other* classes,
    and the weaker ``unseen_prior_weight`` is used instead. Measured with the robust evaluator,
    disjoint-class: 8x8 digits (test MLP) 0.80 attack accuracy at 0.5, 0.92 at 0.1 (the 8 was out
    of reach); MNIST-5k CNN 0.96 at 0.5, 0.92 at 0.1."""

    name: ClassVar[str] = "inversion.whitebox"
    requires: ClassVar[Access] = Access.WHITEBOX
    strength: ClassVar[int] = 40
    fast_params: ClassVar[Mapping[str, Any]] = {**_FAST, "steps": 120, "restarts": 1}

    steps: int = 300
    lr: float = 0.05
    tv: float = 0.01
    l2: float = 0.001
    jitter: int = 1
    restarts: int = 2
    patience: int = 50
    space: str = "pca"
    components: int = 40
    prior_weight: float = 0.5
    unseen_prior_weight: float = 0.1

    constraints: ClassVar[Mapping[str, Spec]] = {
        "steps": Int(1),
        "lr": POSITIVE,
        "tv": NON_NEGATIVE,
        "l2": NON_NEGATIVE,
        "jitter": Int(0),
        "restarts": Int(1),
        "patience": Int(1),
        "space": Options("pca", "pixel"),
        "components": Int(1),
        "prior_weight": NON_NEGATIVE,
        "unseen_prior_weight": NON_NEGATIVE,
    }

    def _reconstruct(
        self,
        target: Target,
        splits: Any,
        classes: np.ndarray,
        meter: Meter,
        rng: np.random.Generator,
        ctx: RunContext,
    ) -> tuple[SearchState, dict[str, Any]]:
        space: Space
        if self.space == "pca":
            seen = set(np.unique(splits.public.y).tolist())
            unseen = any(int(c) not in seen for c in np.unique(classes))
            weight = self.unseen_prior_weight if unseen else self.prior_weight
            space = pca_space(splits, components=self.components, weight=weight, tv=self.tv)
        else:
            space = PixelSpace(tuple(target.input_shape), tv=self.tv, l2=self.l2)
        theta0 = space.sample(len(classes) * self.restarts, rng)
        state = gradient_search(
            meter,
            space,
            classes,
            theta0,
            steps=self.steps,
            lr=self.lr,
            margin_cap=self.margin_cap,
            jitter=self.jitter,
            rng=rng,
            restarts=self.restarts,
            patience=self.patience,
        )
        return state, {"space": self.space, "optimiser": "adam, capped logit margin"}
