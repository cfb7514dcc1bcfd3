"""Generative-prior model inversion (GMI: Zhang et al., "The Secret Revealer: Generative
Model-Inversion Attacks Against Deep Neural Networks", CVPR 2020).

A small VAE trained on the *public* split only gives a latent space of plausible images; the attack
searches it for the target class, with gradients when the target is white-box and with NES
(antithetic, far fewer queries than pixel space because the latent is small) when it only answers
scores. A generator trained on other classes cannot produce an unseen class, so every
reconstruction is then refined in the public-statistics pixel prior (mean and principal
components): with gradients and a total-variation prior when white-box; with NES otherwise, where
classes absent from the public data skip the latent stage altogether.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from invguard.attacks.base import ATTACKS, RunContext
from invguard.attacks.inversion.blackbox import _ZerothOrder
from invguard.attacks.inversion.common import _FAST, latent_space, pca_space
from invguard.attacks.inversion.search import Meter, SearchState, gradient_search
from invguard.core.access import Access
from invguard.core.params import NON_NEGATIVE, POSITIVE, Int, Real, Spec
from invguard.core.target import Target


@ATTACKS.register("inversion.generative")
@dataclass(frozen=True)
class GenerativeInversion(_ZerothOrder):
    """Latent search in a public-data generator, then refinement.

    ``latent_dim`` (0: 8 for small inputs, else 16) and ``generator_epochs`` shape the VAE;
    black-box: ``latent_fraction`` of ``queries_per_class`` goes to the latent search, the rest to
    refinement in the public pixel prior (``components``); white-box: ``steps`` gradient steps in
    the latent space, then ``refine_steps`` in the public pixel prior (``tv``, ``lr``).
    """

    name: ClassVar[str] = "inversion.generative"
    requires: ClassVar[Access] = Access.SCORES
    strength: ClassVar[int] = 30
    fast_params: ClassVar[Mapping[str, Any]] = {
        **_FAST,
        "queries_per_class": 600,
        "generator_epochs": 60,
        "steps": 80,
        "refine_steps": 40,
        "restarts": 1,
    }

    latent_dim: int = 0
    generator_epochs: int = 200
    latent_fraction: float = 0.5
    components: int = 40
    steps: int = 200
    refine_steps: int = 150
    lr: float = 0.05
    tv: float = 0.01
    restarts: int = 2

    constraints: ClassVar[Mapping[str, Spec]] = {
        "latent_dim": Int(0),
        "generator_epochs": Int(1),
        "latent_fraction": Real(0, 1, "right"),
        "components": Int(1),
        "steps": Int(1),
        "refine_steps": Int(0),
        "lr": POSITIVE,
        "tv": NON_NEGATIVE,
        "restarts": Int(1),
    }

    def allowance(self, num_classes: int, target: Target) -> int | None:
        return None if target.access >= Access.WHITEBOX else self.queries_per_class * num_classes

    def _reconstruct(
        self,
        target: Target,
        splits: Any,
        classes: np.ndarray,
        meter: Meter,
        rng: np.random.Generator,
        ctx: RunContext,
    ) -> tuple[SearchState, dict[str, Any]]:
        latent = latent_space(
            splits, ctx, latent_dim=self.latent_dim, epochs=self.generator_epochs, weight=self.prior_weight
        )
        if target.access >= Access.WHITEBOX:
            theta0 = latent.sample(len(classes) * self.restarts, rng)
            state = gradient_search(
                meter,
                latent,
                classes,
                theta0,
                steps=self.steps,
                lr=self.lr,
                margin_cap=self.margin_cap,
                jitter=1,
                rng=rng,
                restarts=self.restarts,
            )
            if self.refine_steps:
                pca = pca_space(splits, components=self.components, weight=self.prior_weight, tv=self.tv)
                state = gradient_search(
                    meter,
                    pca,
                    classes,
                    pca.encode(state.images),
                    steps=self.refine_steps,
                    lr=self.lr,
                    margin_cap=self.margin_cap,
                    jitter=1,
                    rng=rng,
                )
            return state, {
                "space": f"VAE latent ({latent.dim}) + public pixel prior ({self.components})",
                "optimiser": "adam (gradients)",
            }
        # a generator trained on other classes cannot produce an unseen class: for classes absent from
        # the public data the search defers to the public pixel prior with the whole budget
        public = set(np.unique(splits.public.y).tolist())
        seen = np.isin(classes, list(public))
        pca = pca_space(splits, components=self.components, weight=self.prior_weight)
        n = len(classes)
        state = SearchState(np.zeros((n, 0)), np.zeros((n, *target.input_shape)), np.zeros(n), np.zeros(n))
        for mask in (seen, ~seen):
            if not mask.any():
                continue
            sub = classes[mask]
            budget = self.queries_per_class * len(np.unique(sub))
            before = meter.spent
            start: SearchState | None = None
            if mask is seen:
                part = self._zeroth_order(latent, sub, meter, rng, int(budget * self.latent_fraction))
                start = SearchState(pca.encode(part.images), part.images, part.margin, part.confidence)
            rest = budget - (meter.spent - before)
            if rest > 0 or start is None:
                part = self._zeroth_order(pca, sub, meter, rng, max(rest, 0), start=start)
            else:
                part = start
            state.images[mask], state.margin[mask], state.confidence[mask] = (
                part.images,
                part.margin,
                part.confidence,
            )
        return state, {
            "space": f"VAE latent ({latent.dim}) + public pixel prior ({self.components})",
            "optimiser": "NES, antithetic",
            "deferred_to_pixel_prior": sorted({int(c) for c in classes[~seen]}),
        }
