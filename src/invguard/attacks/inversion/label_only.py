"""Label-only model inversion: boundary-repelling search (BREP-MI: Kahla, Chen, Just & Jia,
"Label-Only Model Inversion Attacks via Boundary Repulsion", CVPR 2022).

Only predicted labels are used. For a class the public data holds, the search runs in the latent
space of a generator trained on the public split; for a class it does not hold (the identity
setting) it runs in the public-statistics pixel prior (mean and principal components), since a
generator trained on other classes cannot produce it. From a point the target labels as the class,
the search moves away from the class boundary and grows a sphere that stays inside the class: its
centre is a robust, typical member of the class in the target's eyes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from invguard.attacks.base import ATTACKS, RunContext
from invguard.attacks.inversion.common import (
    _FAST,
    InversionAttack,
    latent_space,
    pca_space,
)
from invguard.attacks.inversion.priors import Space
from invguard.attacks.inversion.search import Meter, SearchState, brep_search, score_prior_pool
from invguard.core.access import Access
from invguard.core.params import NON_NEGATIVE, OPEN_UNIT, POSITIVE, Int, Options, Real, Spec
from invguard.core.target import Target


@ATTACKS.register("inversion.label_only")
@dataclass(frozen=True)
class LabelOnlyInversion(InversionAttack):
    """BREP-MI. ``queries_per_class`` hard cap; ``init_fraction`` of it samples the prior for starting
    points the target labels as the class; ``points`` probes per sphere of ``radius`` (grown by
    ``growth`` when the sphere stays in the class; moves of ``step`` x radius). ``space``: ``"auto"``
    (generator latent for public classes, public pixel prior otherwise), ``"latent"`` or ``"pca"``."""

    name: ClassVar[str] = "inversion.label_only"
    requires: ClassVar[Access] = Access.LABEL
    strength: ClassVar[int] = 10
    fast_params: ClassVar[Mapping[str, Any]] = {**_FAST, "queries_per_class": 600}

    queries_per_class: int = 2000
    init_fraction: float = 0.25
    points: int = 16
    radius: float = 0.5
    growth: float = 1.3
    step: float = 1.0
    space: str = "auto"
    latent_dim: int = 0
    generator_epochs: int = 200
    components: int = 40
    prior_weight: float = 0.5

    constraints: ClassVar[Mapping[str, Spec]] = {
        "queries_per_class": Int(10),
        "init_fraction": OPEN_UNIT,
        "points": Int(2),
        "radius": POSITIVE,
        "growth": Real(1),
        "step": POSITIVE,
        "space": Options("auto", "latent", "pca"),
        "latent_dim": Int(0),
        "generator_epochs": Int(1),
        "components": Int(1),
        "prior_weight": NON_NEGATIVE,
    }

    def allowance(self, num_classes: int, target: Target) -> int | None:
        return self.queries_per_class * num_classes

    def _reconstruct(
        self,
        target: Target,
        splits: Any,
        classes: np.ndarray,
        meter: Meter,
        rng: np.random.Generator,
        ctx: RunContext,
    ) -> tuple[SearchState, dict[str, Any]]:
        public = set(np.unique(splits.public.y).tolist())
        groups: dict[str, np.ndarray] = {}
        for c in np.unique(classes):
            kind = self.space if self.space != "auto" else ("latent" if int(c) in public else "pca")
            groups.setdefault(kind, np.zeros(0, dtype=np.int64))
            groups[kind] = np.concatenate([groups[kind], np.flatnonzero(classes == c)])
        shape = (len(classes), *target.input_shape)
        images = np.zeros(shape)
        margin = np.full(len(classes), -1.0)
        conf = np.zeros(len(classes))
        radius = np.zeros(len(classes))
        used: dict[str, int] = {}
        for kind, ix in sorted(groups.items()):
            space: Space
            if kind == "latent":
                space = latent_space(
                    splits,
                    ctx,
                    latent_dim=self.latent_dim,
                    epochs=self.generator_epochs,
                    weight=self.prior_weight,
                )
            else:
                space = pca_space(splits, components=self.components, weight=self.prior_weight)
            sub = classes[ix]
            n_cls = len(np.unique(sub))
            budget = self.queries_per_class * n_cls
            pool = max(n_cls, int(budget * self.init_fraction))
            before = meter.spent
            start = score_prior_pool(meter, space, sub, pool, rng, margin_cap=1.0, labels_only=True)
            state, R = brep_search(
                meter,
                space,
                sub,
                start,
                queries_per_trajectory=max(0, (budget - pool) // len(sub)),
                points=self.points,
                radius=self.radius,
                growth=self.growth,
                step=self.step,
                rng=rng,
            )
            images[ix], margin[ix], conf[ix], radius[ix] = state.images, state.margin, state.confidence, R
            used[kind] = meter.spent - before
        state = SearchState(np.zeros((len(classes), 0)), images, margin, conf)
        return state, {
            "space": {k: ("generator latent" if k == "latent" else "public pixel prior") for k in groups},
            "optimiser": "BREP-MI boundary repulsion (labels only)",
            "confidence_meaning": "fraction of the final sphere the target labels as the class",
            "final_radius_mean": float(radius.mean()),
        }
