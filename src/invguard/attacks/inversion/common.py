"""The pipeline every inversion attack shares: baselines, the independent evaluation, the
private-specificity test with its role-swap control, and the verdict in words.

An attack subclass implements only ``_reconstruct`` (its search); this module turns the
reconstructions into the metrics, tables and findings of an :class:`~invguard.core.result.AttackResult`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from invguard.attacks.base import Attack, AttackOutput, RunContext
from invguard.attacks.inversion.priors import LatentSpace, PCASpace, generator_for
from invguard.attacks.inversion.search import Meter, SearchState, budget_left
from invguard.core.errors import ConfigError
from invguard.core.result import Finding, Metric
from invguard.core.target import Target

ALPHA = 0.05
# below this held-out accuracy the evaluation classifier is too weak to read a low attack accuracy
WEAK_EVALUATOR = 0.8


def _positive_int(problems: list[str], name: str, value: Any, low: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        problems.append(f"{name} must be an integer >= {low}, got {value!r}")


def _positive(problems: list[str], name: str, value: Any, *, zero: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)
    if not ok or value < 0 or (value == 0 and not zero):
        problems.append(f"{name} must be a finite number {'>=' if zero else '>'} 0, got {value!r}")


def unwrap(target: Target) -> tuple[Target, list[Any], dict[str, Any] | None]:
    """(innermost target, policies from outermost to innermost, invguard architecture spec or None)."""
    from invguard.policies.base import PolicyTarget

    pols: list[Any] = []
    t: Any = target
    while isinstance(t, PolicyTarget):
        pols.append(t.policy)
        t = t.inner
    module = getattr(t, "_module", None)
    spec = getattr(module, "invguard_spec", None) if module is not None else None
    return t, pols, None if spec is None else dict(spec)


def latent_space(splits: Any, ctx: RunContext, *, latent_dim: int, epochs: int, weight: float) -> LatentSpace:
    d = latent_dim or (8 if int(np.prod(splits.input_shape)) <= 100 else 16)
    vae = generator_for(splits, latent_dim=d, hidden=256, epochs=epochs, seed=0, cache_dir=ctx.cache_dir)
    return LatentSpace(vae, weight=weight)


def pca_space(splits: Any, *, components: int, weight: float, tv: float = 0.0) -> PCASpace:
    return PCASpace(splits.public.X, components=components, weight=weight, tv=tv)


@dataclass(frozen=True)
class InversionAttack(Attack):
    """Shared parameters of the inversion attacks.

    ``reconstructions_per_class`` images per attacked class (at least 5 keeps attack accuracy
    comparable); ``classes``: the classes to attack (default: every class in the shared-class
    setting, the classes absent from the public data in the disjoint-class setting); ``cap``: the
    margin at which the class objective stops pulling; ``ranking_queries_per_class``: public
    records per class for the public-ranking baseline; ``role_swap``: ``"auto"`` runs the control
    when the target's architecture is known (an invguard-built torch module), ``"on"`` requires it,
    ``"off"`` skips it; ``control_recipe``: the training recipe of the control model, ``"auto"``
    (default) takes the target's own recipe from the model's metadata (``invguard_meta``) when it is
    known, else ``"standard"`` (said in the result's notes). The control mirrors the target: its
    architecture, its recipe, a training set the size of the target's (a random subsample of the
    non-member split when that is larger) and at most the queries the attack spent on the target.
    """

    reconstructions_per_class: int = 5
    classes: tuple[int, ...] | None = None
    cap: float = 15.0
    ranking_queries_per_class: int = 10
    similarity_threshold: float = 0.5
    role_swap: str = "auto"
    control_recipe: str = "auto"
    permutations: int = 1000
    bootstrap: int = 1000
    evaluator_epochs: int = 30
    evaluator_eps: float | None = None

    def validate(self) -> list[str]:
        p: list[str] = []
        _positive_int(p, "reconstructions_per_class", self.reconstructions_per_class)
        if self.classes is not None and (
            not isinstance(self.classes, (tuple, list))
            or not self.classes
            or any(isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c < 0 for c in self.classes)
        ):
            p.append(f"classes must be a non-empty list of class indices >= 0 or None, got {self.classes!r}")
        _positive(p, "cap", self.cap)
        _positive_int(p, "ranking_queries_per_class", self.ranking_queries_per_class)
        if not 0 <= self.similarity_threshold <= 1:
            p.append(f"similarity_threshold must lie in [0, 1], got {self.similarity_threshold!r}")
        if self.role_swap not in ("auto", "on", "off"):
            p.append(f"role_swap must be 'auto', 'on' or 'off', got {self.role_swap!r}")
        from invguard.models.train import RECIPES

        if self.control_recipe != "auto" and self.control_recipe not in RECIPES:
            p.append(
                f"control_recipe must be 'auto' or one of {sorted(RECIPES)}, got {self.control_recipe!r}"
            )
        _positive_int(p, "permutations", self.permutations, 0)
        _positive_int(p, "bootstrap", self.bootstrap, 10)
        _positive_int(p, "evaluator_epochs", self.evaluator_epochs)
        if self.evaluator_eps is not None and (
            isinstance(self.evaluator_eps, bool)
            or not isinstance(self.evaluator_eps, (int, float))
            or not 0 <= self.evaluator_eps < 1
        ):
            p.append(f"evaluator_eps must be a number in [0, 1) or None, got {self.evaluator_eps!r}")
        return p + self._validate()

    def _validate(self) -> list[str]:
        return []

    # ------------------------------------------------------------------ what a subclass implements

    def allowance(self, num_classes: int, target: Target) -> int | None:
        """The most queries this attack may spend on ``num_classes`` classes of ``target`` (None: none)."""
        return None

    def _reconstruct(
        self,
        target: Target,
        splits: Any,
        classes: np.ndarray,
        meter: Meter,
        rng: np.random.Generator,
        ctx: RunContext,
    ) -> tuple[SearchState, dict[str, Any]]:  # pragma: no cover - abstract
        raise NotImplementedError

    # -------------------------------------------------------------------------------- the pipeline

    def _splits(self, target: Target, data: Any) -> Any:
        needed = ("members", "nonmembers", "public", "evaluation")
        if data is None or not all(hasattr(data, n) for n in needed):
            raise ConfigError(
                f"{self.name}: data must be the splits of a dataset (invguard.data.load(...)), "
                f"got {type(data).__name__}"
            )
        if tuple(data.input_shape) != tuple(target.input_shape):
            raise ConfigError(
                f"{self.name}: the data's input shape {tuple(data.input_shape)} does not match the target's "
                f"{tuple(target.input_shape)}"
            )
        if data.num_classes != target.num_classes:
            raise ConfigError(
                f"{self.name}: the data has {data.num_classes} classes but the target {target.num_classes}"
            )
        return data

    def attacked_classes(self, splits: Any) -> np.ndarray:
        chosen = tuple(splits.private_classes) if self.classes is None else tuple(self.classes)
        bad = [c for c in chosen if c >= splits.num_classes]
        if bad:
            raise ConfigError(f"{self.name}: classes {bad} out of range [0, {splits.num_classes})")
        return np.asarray(sorted(set(int(c) for c in chosen)), dtype=np.int64)

    def reconstruct(
        self, target: Target, splits: Any, rng: np.random.Generator, ctx: RunContext
    ) -> tuple[SearchState, np.ndarray, int, dict[str, Any]]:
        """Just the search: (state, class per reconstruction, queries spent, details)."""
        classes = self.attacked_classes(splits)
        per_rec = np.repeat(classes, self.reconstructions_per_class)
        meter = Meter(target, self.allowance(len(classes), target))
        state, details = self._reconstruct(target, splits, per_rec, meter, rng, ctx)
        return state, per_rec, meter.spent, details

    def _run(self, target: Target, data: Any, rng: np.random.Generator, ctx: RunContext) -> AttackOutput:
        from invguard.metrics.inversion import (
            build_evaluator,
            lift_test,
            paired_class_difference,
            prior_baseline,
            private_specificity,
            public_ranking_baseline,
            score_reconstructions,
        )

        splits = self._splits(target, data)
        classes = self.attacked_classes(splits)
        per_rec = np.repeat(classes, self.reconstructions_per_class)
        seeds = rng.integers(0, 2**31 - 1, size=4)
        notes: list[str] = []

        # baseline (b): public ranking through the target, before the attack so a budget covers it
        rank_n = min(len(splits.public), self.ranking_queries_per_class * len(classes))
        left = budget_left(target)
        ranking = None
        baseline_queries = 0
        if left is None or rank_n <= left:
            ranking, baseline_queries = public_ranking_baseline(
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
        search_time = time.perf_counter() - t0
        converged = state.margin > 0

        _, _, spec = unwrap(target)
        evaluator = build_evaluator(
            splits,
            target_arch=None if spec is None else spec.get("arch"),
            cache_dir=ctx.cache_dir,
            epochs=self.evaluator_epochs,
            adversarial_eps=self.evaluator_eps,
        )
        kw: dict[str, Any] = {
            "similarity_threshold": self.similarity_threshold,
            "n_boot": self.bootstrap,
            "seed": int(seeds[2]),
        }
        ours = score_reconstructions(state.images, per_rec, splits, evaluator, converged=converged, **kw)
        prior = score_reconstructions(
            prior_baseline(splits, per_rec, np.random.default_rng(seeds[3])), per_rec, splits, evaluator, **kw
        )
        ranked = None if ranking is None else score_reconstructions(ranking, per_rec, splits, evaluator, **kw)

        metrics: dict[str, Metric] = dict(ours.metrics)
        conf = state.confidence
        metrics["target_confidence"] = Metric(
            float(np.mean(conf)),
            *_ci(conf, self.bootstrap, int(seeds[2])),
            description="the target's own confidence in the reconstructions (never the headline: "
            "fooling the target is not leakage)",
        )
        metrics["baseline_prior_accuracy"] = _renamed(
            prior.metrics["attack_accuracy"], "no-model public prior"
        )
        boot: dict[str, Any] = {"n_boot": self.bootstrap, "seed": int(seeds[2]), "classes": per_rec}
        compared = [("prior", "no-model prior", prior)] + (
            [] if ranked is None else [("public_ranking", "public-ranking", ranked)]
        )
        for key, label, base in compared:
            lift, lift_p = lift_test(ours.correct, base.correct, name=label, **boot)
            metrics[f"lift_over_{key}"] = lift
            metrics[f"lift_over_{key}_p"] = Metric(
                lift_p,
                description="one-sided exact sign-flip test over classes that the attack's accuracy beats "
                f"the {label} baseline's",
                higher_is_worse=False,
            )
            gain, gain_p = paired_class_difference(
                base.knn,
                ours.knn,
                per_rec,
                n_boot=self.bootstrap,
                seed=int(seeds[2]),
                description=f"the {label} baseline's KNN distance minus the attack's (positive: the "
                "reconstructions sit closer to the private members; 95% CI resampling classes, paired)",
            )
            metrics[f"knn_gain_over_{key}"] = gain
            metrics[f"knn_gain_over_{key}_p"] = Metric(
                gain_p,
                description=f"one-sided exact sign-flip test over classes that the attack's KNN distance is "
                f"below the {label} baseline's",
                higher_is_worse=False,
            )
        if ranked is not None:
            metrics["baseline_public_ranking_accuracy"] = _renamed(
                ranked.metrics["attack_accuracy"], "public ranking through the target"
            )

        # private-specificity on this split, then the role-swap control
        mem_f = evaluator.features(splits.members.X)
        non_f = evaluator.features(splits.nonmembers.X)
        ratio, p = private_specificity(
            ours.features,
            per_rec,
            mem_f,
            splits.members.y,
            non_f,
            splits.nonmembers.y,
            permutations=self.permutations,
            seed=int(seeds[2]),
        )
        metrics["private_specificity_ratio"] = Metric(
            ratio,
            description="mean distance to the nearest training member / to the nearest held-out non-member "
            "of the class (evaluator features; < 1: closer to the training data)",
            higher_is_worse=False,
        )
        metrics["private_specificity_p"] = Metric(
            p,
            description="one-sided permutation-test p-value of the ratio (this split only)",
            higher_is_worse=False,
        )
        swap = self._role_swap(
            target,
            splits,
            spec,
            rng=np.random.default_rng(seeds[1]),
            ctx=ctx,
            notes=notes,
            spent=spent,
            details=details,
        )
        swap_ratio = swap_p = None
        if swap is not None:
            s_state, s_per_rec, s_train = swap
            s_feats = evaluator.features(s_state.images)
            swap_ratio, swap_p = private_specificity(
                s_feats,
                s_per_rec,
                evaluator.features(s_train.X),
                s_train.y,
                mem_f,
                splits.members.y,
                permutations=self.permutations,
                seed=int(seeds[2]),
            )
            metrics["role_swap_p"] = Metric(
                swap_p,
                description="the same test on a control model of the same architecture and recipe "
                "trained on a members-sized sample of the non-member split, attacked the same way within "
                "the queries the attack spent, roles swapped",
                higher_is_worse=False,
            )

        # tables
        per_class = []
        for row in ours.per_class:
            c = row["class"]
            ix = per_rec == c
            per_class.append(
                {
                    **row,
                    "target_confidence": float(conf[ix].mean()),
                    "baseline_prior_accuracy": float(prior.correct[ix].mean()),
                    "baseline_public_ranking_accuracy": None
                    if ranked is None
                    else float(ranked.correct[ix].mean()),
                }
            )
        queries_attack = spent
        baselines = [
            _baseline_row("attack (" + self.name + ")", ours, queries_attack),
            _baseline_row("no-model public prior", prior, 0),
        ]
        if ranked is not None:
            baselines.append(_baseline_row("public ranking through the target", ranked, baseline_queries))

        findings = self._findings(
            splits, metrics, ours, prior, ranked, ratio, p, swap_p, swap_ratio, per_class, notes
        )
        if not evaluator.holdout_accuracy >= WEAK_EVALUATOR:
            findings.append(
                Finding(
                    "Weak evaluation classifier",
                    f"The evaluation classifier recognises only {evaluator.holdout_accuracy:.2f} of held-out "
                    f"records (below {WEAK_EVALUATOR:.2f}): attack accuracy measured with it understates "
                    "what leaks, so a low figure here is not evidence that nothing leaks. Give it more "
                    "evaluation data, more evaluator_epochs or a smaller evaluator_eps.",
                    "medium",
                )
            )
        info: dict[str, Any] = {
            "setting": splits.setting,
            "classes": classes.tolist(),
            "queries_per_class": queries_attack / max(1, len(classes)),
            "attack_queries": queries_attack,
            "search_time_s": search_time,
            "baseline_queries": baseline_queries,
            "evaluator": {
                "arch": evaluator.arch,
                "spec": evaluator.spec,
                "holdout_accuracy": evaluator.holdout_accuracy,
                "trained_on": "evaluation split",
            },
            "role_swap": "ran" if swap is not None else "not run",
            "notes": notes,
            **details,
        }
        if swap_ratio is not None:
            info["role_swap_ratio"] = swap_ratio
        return AttackOutput(
            metrics=metrics,
            arrays={
                "reconstructions": state.images.astype(np.float32),
                "reconstruction_classes": per_rec,
                "nearest_private": ours.nearest_private.astype(np.float32),
                "converged": converged.astype(np.int64),
                "confidence": conf.astype(np.float64),
            },
            tables={"per_class": per_class, "baselines": baselines},
            findings=findings,
            info=info,
        )

    # -------------------------------------------------------------------------- role-swap control

    def _role_swap(
        self,
        target: Target,
        splits: Any,
        spec: dict[str, Any] | None,
        *,
        rng: np.random.Generator,
        ctx: RunContext,
        notes: list[str],
        spent: int,
        details: dict[str, Any],
    ) -> tuple[SearchState, np.ndarray, Any] | None:
        if self.role_swap == "off" or self.permutations == 0:
            notes.append("role-swap control off")
            return None
        if spec is None:
            msg = (
                f"{self.name}: the role-swap control needs the target's architecture (an invguard-built "
                "torch module); this target does not expose one"
            )
            if self.role_swap == "on":
                raise ConfigError(msg + "; set role_swap='auto' or 'off'")
            notes.append("role-swap control not run: the target's architecture is unknown")
            return None
        inner, _, _ = unwrap(target)
        meta = getattr(getattr(inner, "_module", None), "invguard_meta", None) or {}
        from invguard.models.train import RECIPES

        recipe = self.control_recipe
        if recipe == "auto":
            known = meta.get("recipe")
            if isinstance(known, str) and known in RECIPES:
                recipe = known
            else:
                recipe = "standard"
                notes.append(
                    "role-swap control trained with the 'standard' recipe: the target's training recipe "
                    "is not recorded in its metadata (set control_recipe to the target's)"
                )
        n_mem, n_non = len(splits.members), len(splits.nonmembers)
        train_ix = np.arange(n_non)
        if n_non > n_mem:
            train_ix = np.sort(np.random.default_rng(0).choice(n_non, size=n_mem, replace=False))
        elif n_non < n_mem:
            notes.append(
                f"role-swap control trained on {n_non} non-members, fewer than the target's {n_mem} members"
            )
        non = splits.nonmembers
        control_train = dataclasses.replace(
            non, X=non.X[train_ix], y=non.y[train_ix], indices=non.indices[train_ix]
        )
        control = control_target(
            target, splits, spec, recipe, ctx.cache_dir, train=control_train, budget=max(1, int(spent))
        )
        swapped = dataclasses.replace(splits, members=control_train, nonmembers=splits.members)
        state, per_rec, c_spent, _ = self.reconstruct(control, swapped, rng, ctx)
        details["role_swap_control"] = {
            "recipe": recipe,
            "train_records": len(control_train),
            "target_members": n_mem,
            "query_cap": int(spent),
            "queries": int(c_spent),
        }
        return state, per_rec, control_train

    # ------------------------------------------------------------------------------------ verdict

    def _findings(
        self,
        splits: Any,
        metrics: dict[str, Metric],
        ours: Any,
        prior: Any,
        ranked: Any,
        ratio: float,
        p: float,
        swap_p: float | None,
        swap_ratio: float | None,
        per_class: list[dict[str, Any]],
        notes: list[str],
    ) -> list[Finding]:
        acc = metrics["attack_accuracy"]
        out: list[Finding] = []
        beats_acc, beats_knn = beats_baselines(metrics)
        knn = metrics["knn_distance"]
        single = np.isfinite(p) and p < ALPHA and ratio < 1
        confirmed = single and swap_p is not None and swap_p < ALPHA and (swap_ratio or 1.0) < 1
        identity = splits.setting == "disjoint-class"
        if confirmed:
            out.append(
                Finding(
                    "Training-data leak found",
                    f"Reconstructions sit closer to the model's training members than to held-out records of "
                    f"the same class (distance ratio {ratio:.3f}, permutation p={p:.3g}), and the role-swap "
                    f"control reproduces it (p={swap_p:.3g}): the model leaks its training data, not only "
                    f"what each class looks like. Attack accuracy {acc:.2f}.",
                    "high",
                )
            )
        elif beats_acc or beats_knn:
            why = (
                f"attack accuracy {acc:.2f} beats every baseline (lift over the no-model prior "
                f"{metrics['lift_over_prior']:+.2f}, sign-flip p={metrics['lift_over_prior_p'].value:.3g} "
                "over classes)"
                if beats_acc
                else f"reconstructions are closer to private members in feature space than every baseline "
                f"(KNN distance {knn:.3g}, {metrics['knn_gain_over_prior']:.3g} closer than the no-model "
                f"prior, sign-flip p={metrics['knn_gain_over_prior_p'].value:.3g} over classes)"
            )
            out.append(
                Finding(
                    "Class prototype reconstructed (no training-data leak shown)",
                    f"The model gives away what each class looks like: {why}. "
                    + (
                        "These classes are absent from the public data, so this is a real privacy breach in "
                        "the identity setting. "
                        if identity
                        else ""
                    )
                    + f"No evidence that it leaks individual training records (private-specificity p={p:.3g}"
                    + ("" if swap_p is None else f", role-swap control p={swap_p:.3g}")
                    + ").",
                    "high" if identity else "medium",
                )
            )
        else:
            out.append(
                Finding(
                    "No leakage beyond public knowledge",
                    f"The attack (accuracy {acc:.2f}) does not beat what an attacker knows without it: the "
                    f"no-model public prior scores {metrics['baseline_prior_accuracy'].value:.2f}"
                    + (
                        ""
                        if "baseline_public_ranking_accuracy" not in metrics
                        else f" and public ranking {metrics['baseline_public_ranking_accuracy'].value:.2f}"
                    )
                    + ".",
                    "info",
                )
            )
        if single and not confirmed:
            out.append(
                Finding(
                    "Single-split specificity not confirmed",
                    f"On this split the reconstructions sit closer to the training members (p={p:.3g}), but "
                    + (
                        f"the role-swap control does not reproduce it (p={swap_p:.3g}): a split artefact, "
                        "not evidence of a training-data leak."
                        if swap_p is not None
                        else "the role-swap control could not run, so no training-data leak is claimed."
                    ),
                    "low",
                )
            )
        unreached = [r["class"] for r in per_class if r["converged"] == 0]
        if unreached:
            out.append(
                Finding(
                    "Classes not reached",
                    f"The attack could not make the target predict classes {unreached}; their "
                    "reconstructions are marked not converged and count as failures.",
                    "info",
                )
            )
        return out


def beats_baselines(metrics: dict[str, Metric]) -> tuple[bool, bool]:
    """(accuracy beats every baseline, KNN distance beats every baseline), each decided per baseline by
    a class-paired CI above 0 *and* a sign-flip p-value below ``ALPHA``."""

    def beats(prefix: str) -> bool:
        keys = [k for k in ("prior", "public_ranking") if f"{prefix}{k}" in metrics]
        return bool(keys) and all(
            (m := metrics[f"{prefix}{k}"]).low is not None
            and m.low > 0
            and metrics[f"{prefix}{k}_p"].value < ALPHA
            for k in keys
        )

    return beats("lift_over_"), beats("knn_gain_over_")


def control_target(
    target: Target,
    splits: Any,
    spec: dict[str, Any],
    recipe: str,
    cache_dir: Path | None,
    *,
    train: Any = None,
    budget: int | None = None,
) -> Target:
    """A model of the target's architecture trained on ``train`` (default: the non-member split), behind
    the same access level and output policies as the target, with an optional query ``budget``
    (cached by content hash in ``cache_dir``)."""
    from invguard import models
    from invguard.models.train import fit
    from invguard.targets.torch import TorchTarget

    inner, pols, _ = unwrap(target)
    train = splits.nonmembers if train is None else train
    key = hashlib.sha256(
        json.dumps(
            {
                "spec": spec,
                "recipe": recipe,
                "data": splits.dataset.fingerprint(),
                "train": train.hash,
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()[:16]
    path = None if cache_dir is None else Path(cache_dir) / f"inversion-control-{key}.pt"
    if path is not None and path.exists():
        module = models.load(path)
    else:
        module, _ = fit(spec, train.X, train.y, recipe=recipe, seed=0)
        if path is not None:
            models.save(module, path, meta={"role": "role-swap control"})
    t: Target = TorchTarget(
        module, input_shape=tuple(splits.input_shape), access=inner.access, budget=budget, name="control"
    )
    for pol in reversed(pols):
        t = pol.wrap(t)
    return t


def _ci(values: np.ndarray, n_boot: int, seed: int) -> tuple[float | None, float | None]:
    from invguard.metrics.stats import bootstrap_metric

    m = bootstrap_metric(np.mean, np.asarray(values, dtype=np.float64), n_boot=n_boot, seed=seed)
    return m.low, m.high


def _renamed(m: Metric, what: str) -> Metric:
    return Metric(
        m.value, m.low, m.high, m.higher_is_worse, f"evaluator top-1 accuracy of the {what} baseline"
    )


def _baseline_row(name: str, s: Any, queries: int) -> dict[str, Any]:
    m = s.metrics
    return {
        "method": name,
        "attack_accuracy": m["attack_accuracy"].value,
        "attack_accuracy_low": m["attack_accuracy"].low,
        "attack_accuracy_high": m["attack_accuracy"].high,
        "attack_accuracy_top5": m["attack_accuracy_top5"].value,
        "knn_distance": m["knn_distance"].value,
        "ssim": m["ssim"].value,
        "psnr": m["psnr"].value,
        "mse": m["mse"].value,
        "similarity_rate": m["similarity_rate"].value,
        "queries": int(queries),
    }
