"""The search side every inversion attack shares: its parameters, the classes it attacks, the
public-ranking baseline (queried through the target before the search, so a budget covers both)
and the :class:`~invguard.core.evidence.Reconstructions` it returns.

A subclass implements only ``_reconstruct`` (its search engine). What the reconstructions show
(the independent evaluator, the no-model prior, the private-specificity test with its role-swap
control, the verdict) is decided by :mod:`invguard.judges.inversion`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from invguard.attacks.base import Attack, RunContext
from invguard.attacks.inversion.priors import LatentSpace, PCASpace, generator_for
from invguard.attacks.inversion.search import Meter, SearchState
from invguard.core.data import Splits, require_splits
from invguard.core.errors import ConfigError
from invguard.core.evidence import Reconstructions
from invguard.core.params import POSITIVE, Int, Options, Real, Satisfies, Sequence, Spec
from invguard.core.target import Target, unwrap


def _known_recipe(name: Any) -> bool:
    from invguard.models.train import RECIPES

    return name == "auto" or (isinstance(name, str) and name in RECIPES)


def latent_space(
    splits: Splits, ctx: RunContext, *, latent_dim: int, epochs: int, weight: float
) -> LatentSpace:
    d = latent_dim or (8 if int(np.prod(splits.input_shape)) <= 100 else 16)
    vae = generator_for(splits, latent_dim=d, hidden=256, epochs=epochs, seed=0, cache_dir=ctx.cache_dir)
    return LatentSpace(vae, weight=weight)


def pca_space(splits: Splits, *, components: int, weight: float, tv: float = 0.0) -> PCASpace:
    return PCASpace(splits.public.X, components=components, weight=weight, tv=tv)


#: the fast configuration every inversion attack shares (its own ``fast_params`` add the search's)
_FAST: dict[str, Any] = {
    "reconstructions_per_class": 2,
    "permutations": 200,
    "bootstrap": 200,
    "evaluator_epochs": 30,
}


@dataclass(frozen=True)
class InversionAttack(Attack):
    """Shared parameters of the inversion attacks.

    ``reconstructions_per_class`` images per attacked class (at least 5 keeps attack accuracy
    comparable); ``classes``: the classes to attack (default: every class in the shared-class
    setting, the classes absent from the public data in the disjoint-class setting); ``margin_cap``:
    the logit margin at which the class objective stops pulling; ``ranking_queries_per_class``: public
    records per class for the public-ranking baseline; ``role_swap``: ``"auto"`` runs the control
    when the target's architecture is known (an invguard-built torch module), ``"on"`` requires it,
    ``"off"`` skips it; ``control_recipe``: the training recipe of the control model, ``"auto"``
    (default) takes the target's own recipe from the model's metadata (``invguard_meta``) when it is
    known, else ``"standard"`` (said in the result's notes). The control mirrors the target: its
    architecture, its recipe, a training set the size of the target's (a random subsample of the
    non-member split when that is larger) and at most the queries the attack spent on the target.
    """

    #: the sweep compares exposures; the role-swap control belongs to the attack run alone
    sweep_params: ClassVar[Mapping[str, Any]] = {"role_swap": "off"}
    portable_params: ClassVar[tuple[str, ...]] = ("queries_per_class",)

    reconstructions_per_class: int = 5
    classes: tuple[int, ...] | None = None
    margin_cap: float = 15.0
    ranking_queries_per_class: int = 10
    similarity_threshold: float = 0.5
    role_swap: str = "auto"
    control_recipe: str = "auto"
    permutations: int = 1000
    bootstrap: int = 1000
    evaluator_epochs: int = 30
    evaluator_eps: float | None = None

    constraints: ClassVar[Mapping[str, Spec]] = {
        "reconstructions_per_class": Int(1),
        "classes": (None, Sequence(Int(0), unique=True)),
        "margin_cap": POSITIVE,
        "ranking_queries_per_class": Int(1),
        "similarity_threshold": Real(0, 1),
        "role_swap": Options("auto", "on", "off"),
        "control_recipe": Satisfies(
            _known_recipe, "'auto' or the name of a training recipe (invguard.models.train)", "no-such-recipe"
        ),
        "permutations": Int(0),
        "bootstrap": Int(10),
        "evaluator_epochs": Int(1),
        "evaluator_eps": (None, Real(0, 1, "left")),
    }

    # ------------------------------------------------------------------ what a subclass implements

    def allowance(self, num_classes: int, target: Target) -> int | None:
        """The most queries this attack may spend on ``num_classes`` classes of ``target`` (None: none)."""
        return None

    def _reconstruct(
        self,
        target: Target,
        splits: Splits,
        classes: np.ndarray,
        meter: Meter,
        rng: np.random.Generator,
        ctx: RunContext,
    ) -> tuple[SearchState, dict[str, Any]]:  # pragma: no cover - abstract
        raise NotImplementedError

    # ------------------------------------------------------------------------------------ search

    def attacked_classes(self, splits: Splits) -> np.ndarray:
        chosen = tuple(splits.private_classes) if self.classes is None else tuple(self.classes)
        bad = [c for c in chosen if c >= splits.num_classes]
        if bad:
            raise ConfigError(f"{self.name}: classes {bad} out of range [0, {splits.num_classes})")
        return np.asarray(sorted(set(int(c) for c in chosen)), dtype=np.int64)

    def reconstruct(
        self, target: Target, splits: Splits, rng: np.random.Generator, ctx: RunContext
    ) -> tuple[SearchState, np.ndarray, int, dict[str, Any]]:
        """Just the search: (state, class per reconstruction, queries spent, details)."""
        classes = self.attacked_classes(splits)
        per_rec = np.repeat(classes, self.reconstructions_per_class)
        meter = Meter(target, self.allowance(len(classes), target))
        state, details = self._reconstruct(target, splits, per_rec, meter, rng, ctx)
        return state, per_rec, meter.spent, details

    def search(
        self, target: Target, data: Splits, rng: np.random.Generator, ctx: RunContext
    ) -> Reconstructions:
        splits = require_splits(data, self.name, nonempty=(), target=target)
        classes = self.attacked_classes(splits)
        per_rec = np.repeat(classes, self.reconstructions_per_class)
        seeds = rng.integers(0, 2**31 - 1, size=4)  # the four of invguard.judges.inversion.run_seeds
        notes: list[str] = []
        # baseline (b): public ranking through the target, before the attack so a budget covers it
        rank_n = min(len(splits.public), self.ranking_queries_per_class * len(classes))
        left = unwrap(target).queries_left()
        ranking = None
        ranking_queries = 0
        if left is None or rank_n <= left:
            ranking, ranking_queries = public_ranking_baseline(
                target,
                splits,
                per_rec,
                queries_per_class=self.ranking_queries_per_class,
                rng=np.random.default_rng(seeds[0]),
            )
        else:
            notes.append(
                f"public-ranking baseline skipped: it needs {rank_n} queries, the budget has {left} left"
            )
        t0 = time.perf_counter()
        state, per_rec, spent, details = self.reconstruct(
            target, splits, np.random.default_rng(seeds[1]), ctx
        )
        return Reconstructions(
            images=state.images,
            classes=per_rec,
            margin=state.margin,
            confidence=state.confidence,
            queries=int(spent),
            search_time_s=time.perf_counter() - t0,
            ranking=ranking,
            ranking_queries=int(ranking_queries),
            notes=tuple(notes),
            info={"setting": splits.setting, "classes": classes.tolist(), **details},
        )


def public_ranking_baseline(
    target: Target,
    splits: Splits,
    classes: np.ndarray,
    *,
    queries_per_class: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, int]:
    """The model used, no optimisation: query the target with public records and, per class, keep
    the top-scored ones (by label when the target gives labels only). Returns (images, queries).

    ``queries_per_class`` x the number of distinct classes public records are drawn (fewer if the
    public split is smaller).
    """
    pub = splits.public
    wanted = np.asarray(classes)
    distinct = np.unique(wanted)
    m = min(pub.X.shape[0], max(1, queries_per_class * distinct.size))
    pick = rng.choice(pub.X.shape[0], size=m, replace=False)
    X = pub.X[pick]
    pred = target.predict(X)
    if pred.scores is not None or pred.logits is not None:
        z = pred.logits if pred.logits is not None else np.log(np.clip(pred.scores, 1e-12, None))  # type: ignore[arg-type]
        score = np.asarray(z, dtype=np.float64)
    else:
        score = np.eye(target.num_classes)[pred.labels] + rng.random((m, target.num_classes)) * 1e-3
    out = np.zeros((len(wanted), *X.shape[1:]))
    for c in distinct:
        ix = np.flatnonzero(wanted == c)
        order = np.argsort(-score[:, c], kind="stable")
        for j, i in enumerate(ix):
            out[i] = X[order[j % m]]
    return out, m
