"""Black-box model inversion from scores: the capped class objective with zeroth-order gradients.

Natural evolution strategies with antithetic samples (Wierstra et al., JMLR 2014; Ilyas et al.,
ICML 2018) under a query budget, through any Target (HTTP, policy-wrapped: top-k, rounded). The
search runs in a pixel prior built from public statistics (the public mean and principal
components, ``space="pca"``), which can express classes the public data does not hold and makes a
28x28 search tractable; ``space="pixel"`` searches raw pixels with a total-variation prior.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from invguard.attacks.base import ATTACKS, RunContext
from invguard.attacks.inversion.common import _FAST, InversionAttack, pca_space
from invguard.attacks.inversion.priors import PixelSpace, Space
from invguard.attacks.inversion.search import Meter, SearchState, nes_search, score_prior_pool
from invguard.core.access import Access
from invguard.core.params import NON_NEGATIVE, OPEN_UNIT, Int, Options, Spec
from invguard.core.target import Target


@dataclass(frozen=True)
class _ZerothOrder(InversionAttack):
    """Parameters of the score-based searches."""

    margin_cap: float = 10.0
    queries_per_class: int = 2000
    init_fraction: float = 0.2
    population: int = 20
    sigma: float = 0.0
    nes_lr: float = 0.0
    prior_weight: float = 0.5

    constraints: ClassVar[Mapping[str, Spec]] = {
        "queries_per_class": Int(10),
        "init_fraction": OPEN_UNIT,
        "population": Int(2),
        "sigma": NON_NEGATIVE,
        "nes_lr": NON_NEGATIVE,
        "prior_weight": NON_NEGATIVE,
    }

    def allowance(self, num_classes: int, target: Target) -> int | None:
        return self.queries_per_class * num_classes

    def _zeroth_order(
        self,
        space: Space,
        classes: np.ndarray,
        meter: Meter,
        rng: np.random.Generator,
        budget: int,
        start: SearchState | None = None,
    ) -> SearchState:
        """Prior pool (``init_fraction`` of ``budget``) unless a start is given, then NES."""
        n_traj = len(classes)
        if start is None:
            pool = max(len(np.unique(classes)), int(budget * self.init_fraction))
            start = score_prior_pool(meter, space, classes, pool, rng, self.margin_cap)
            budget -= pool
        sigma = self.sigma or space.scale()
        lr = self.nes_lr or sigma / 2
        return nes_search(
            meter,
            space,
            classes,
            start,
            queries_per_trajectory=max(0, budget // n_traj),
            population=self.population,
            sigma=sigma,
            lr=lr,
            margin_cap=self.margin_cap,
            rng=rng,
        )


@ATTACKS.register("inversion.blackbox")
@dataclass(frozen=True)
class BlackBoxInversion(_ZerothOrder):
    """Score-based inversion with NES. ``queries_per_class`` is a hard cap (prior pool included);
    ``space``: ``"pca"`` (public mean + ``components`` principal components) or ``"pixel"``."""

    name: ClassVar[str] = "inversion.blackbox"
    requires: ClassVar[Access] = Access.SCORES
    strength: ClassVar[int] = 20
    fast_params: ClassVar[Mapping[str, Any]] = {**_FAST, "queries_per_class": 600}

    space: str = "pca"
    components: int = 40
    tv: float = 0.3

    constraints: ClassVar[Mapping[str, Spec]] = {
        "space": Options("pca", "pixel"),
        "components": Int(1),
        "tv": NON_NEGATIVE,
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
            space = pca_space(splits, components=self.components, weight=self.prior_weight)
        else:
            space = PixelSpace(tuple(target.input_shape), tv=self.tv, l2=0.0)
        budget = self.queries_per_class * len(np.unique(classes))
        state = self._zeroth_order(space, classes, meter, rng, budget)
        return state, {"space": self.space, "search_dim": space.dim, "optimiser": "NES, antithetic"}
