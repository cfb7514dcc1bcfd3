"""The inversion judge: reconstructions in, what they show out.

Every inversion attack's evidence (:class:`~invguard.core.evidence.Reconstructions`) is judged the
same way: the independent evaluator (:mod:`invguard.models.evaluator`) scores the reconstructions,
the no-model public prior and the public-ranking baseline the search queried; lifts over each are
paired by class with sign-flip tests; the private-specificity test on this split is repeated on a
role-swap control (:mod:`.control`); the verdict is put in words (:mod:`.verdict`). The judge never
queries the attacked target: the control is a model of its own.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from invguard.core.evidence import Reconstructions
from invguard.core.result import Metric
from invguard.core.run import AttackOutput, Case
from invguard.core.target import unwrap
from invguard.judges.inversion.control import Reconstructor, control_target, role_swap
from invguard.judges.inversion.scoring import (
    InversionScores,
    baseline_row,
    mean_ci,
    prior_baseline,
    renamed,
    score_reconstructions,
)
from invguard.judges.inversion.verdict import Specificity, beats_baselines, findings, weak_evaluator
from invguard.judges.registry import register_judge

__all__ = ["beats_baselines", "control_target", "judge_reconstructions", "run_seeds"]


def run_seeds(seed: int) -> np.ndarray:
    """The four seeds of an inversion run, the first draws of the run seed's stream: [0] the
    public-ranking baseline, [1] the search (the role-swap control is searched with it too),
    [2] bootstrap and permutation tests, [3] the no-model prior."""
    out: np.ndarray = np.random.default_rng(seed).integers(0, 2**31 - 1, size=4)
    return out


@register_judge(Reconstructions)
def judge_reconstructions(ev: Reconstructions, case: Case) -> AttackOutput:
    from invguard.metrics.inversion import lift_test, paired_class_difference, private_specificity
    from invguard.models.evaluator import build_evaluator

    attack: Any = case.attack
    splits = case.data
    seeds = run_seeds(case.seed)
    boot_seed = int(seeds[2])
    per_rec = np.asarray(ev.classes, dtype=np.int64)
    notes = list(ev.notes)
    spec = unwrap(case.target).spec
    evaluator = build_evaluator(
        splits,
        target_arch=None if spec is None else spec.get("arch"),
        cache_dir=case.ctx.cache_dir,
        epochs=attack.evaluator_epochs,
        adversarial_eps=attack.evaluator_eps,
    )
    kw: dict[str, Any] = {
        "similarity_threshold": attack.similarity_threshold,
        "n_boot": attack.bootstrap,
        "seed": boot_seed,
    }
    ours = score_reconstructions(ev.images, per_rec, splits, evaluator, converged=ev.converged, **kw)
    prior = score_reconstructions(
        prior_baseline(splits, per_rec, np.random.default_rng(seeds[3])), per_rec, splits, evaluator, **kw
    )
    ranked = (
        None if ev.ranking is None else score_reconstructions(ev.ranking, per_rec, splits, evaluator, **kw)
    )

    metrics: dict[str, Metric] = dict(ours.metrics)
    conf = np.asarray(ev.confidence)
    metrics["target_confidence"] = Metric(
        float(np.mean(conf)),
        *mean_ci(conf, attack.bootstrap, boot_seed),
        description="the target's own confidence in the reconstructions (never the headline: "
        "fooling the target is not leakage)",
    )
    metrics["baseline_prior_accuracy"] = renamed(prior.metrics["attack_accuracy"], "no-model public prior")
    metrics.update(
        _lifts(ours, prior, ranked, per_rec, attack.bootstrap, boot_seed, lift_test, paired_class_difference)
    )
    if ranked is not None:
        metrics["baseline_public_ranking_accuracy"] = renamed(
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
        permutations=attack.permutations,
        seed=boot_seed,
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
    reconstructor: Reconstructor = attack
    swap = role_swap(
        reconstructor,
        case.target,
        splits,
        spent=ev.queries,
        rng=np.random.default_rng(seeds[1]),
        ctx=case.ctx,
        notes=notes,
    )
    specificity = Specificity(ratio, p)
    if swap is not None:
        swap_ratio, swap_p = private_specificity(
            evaluator.features(swap.images),
            swap.classes,
            evaluator.features(swap.train.X),
            swap.train.y,
            mem_f,
            splits.members.y,
            permutations=attack.permutations,
            seed=boot_seed,
        )
        specificity = Specificity(ratio, p, swap_ratio, swap_p)
        metrics["role_swap_p"] = Metric(
            swap_p,
            description="the same test on a control model of the same architecture and recipe "
            "trained on a members-sized sample of the non-member split, attacked the same way within "
            "the queries the attack spent, roles swapped",
            higher_is_worse=False,
        )

    per_class = []
    for row in ours.per_class:
        ix = per_rec == row["class"]
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
    baselines = [
        baseline_row("attack (" + attack.name + ")", ours, ev.queries),
        baseline_row("no-model public prior", prior, 0),
    ]
    if ranked is not None:
        baselines.append(baseline_row("public ranking through the target", ranked, ev.ranking_queries))

    verdict = findings(splits.setting, metrics, specificity, per_class)
    weak = weak_evaluator(evaluator.holdout_accuracy)
    if weak is not None:
        verdict.append(weak)
    n_classes = max(1, len(np.unique(per_rec)))
    info: dict[str, Any] = {
        "queries_per_class": ev.queries / n_classes,
        "attack_queries": ev.queries,
        "search_time_s": ev.search_time_s,
        "baseline_queries": ev.ranking_queries,
        "evaluator": {
            "arch": evaluator.arch,
            "spec": evaluator.spec,
            "holdout_accuracy": evaluator.holdout_accuracy,
            "trained_on": "evaluation split",
        },
        "role_swap": "ran" if swap is not None else "not run",
        "notes": notes,
    }
    if swap is not None:
        info["role_swap_control"] = swap.info
        info["role_swap_ratio"] = specificity.swap_ratio
    return AttackOutput(
        metrics=metrics,
        arrays={
            "reconstructions": np.asarray(ev.images).astype(np.float32),
            "reconstruction_classes": per_rec,
            "nearest_private": ours.nearest_private.astype(np.float32),
            "converged": ev.converged.astype(np.int64),
            "confidence": conf.astype(np.float64),
        },
        tables={"per_class": per_class, "baselines": baselines},
        findings=verdict,
        info=info,
    )


def _lifts(
    ours: InversionScores,
    prior: InversionScores,
    ranked: InversionScores | None,
    per_rec: np.ndarray,
    n_boot: int,
    seed: int,
    lift_test: Any,
    paired_class_difference: Any,
) -> dict[str, Metric]:
    """Accuracy lift and KNN gain over each baseline, paired by class, with sign-flip p-values."""
    out: dict[str, Metric] = {}
    compared = [("prior", "no-model prior", prior)] + (
        [] if ranked is None else [("public_ranking", "public-ranking", ranked)]
    )
    for key, label, base in compared:
        lift, lift_p = lift_test(
            ours.correct, base.correct, name=label, n_boot=n_boot, seed=seed, classes=per_rec
        )
        out[f"lift_over_{key}"] = lift
        out[f"lift_over_{key}_p"] = Metric(
            lift_p,
            description="one-sided exact sign-flip test over classes that the attack's accuracy beats "
            f"the {label} baseline's",
            higher_is_worse=False,
        )
        gain, gain_p = paired_class_difference(
            base.knn,
            ours.knn,
            per_rec,
            n_boot=n_boot,
            seed=seed,
            description=f"the {label} baseline's KNN distance minus the attack's (positive: the "
            "reconstructions sit closer to the private members; 95% CI resampling classes, paired)",
        )
        out[f"knn_gain_over_{key}"] = gain
        out[f"knn_gain_over_{key}_p"] = Metric(
            gain_p,
            description=f"one-sided exact sign-flip test over classes that the attack's KNN distance is "
            f"below the {label} baseline's",
            higher_is_worse=False,
        )
    return out
