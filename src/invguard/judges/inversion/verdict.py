"""The inversion verdict in words, decided on CIs and p-values the judge computed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from invguard.core.result import Finding, Metric

ALPHA = 0.05
# below this held-out accuracy the evaluation classifier is too weak to read a low attack accuracy
WEAK_EVALUATOR = 0.8


@dataclass(frozen=True)
class Specificity:
    """The private-specificity test on this split and, when it ran, on the role-swap control."""

    ratio: float
    p: float
    swap_ratio: float | None = None
    swap_p: float | None = None


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


def findings(
    setting: str,
    metrics: dict[str, Metric],
    specificity: Specificity,
    per_class: list[dict[str, Any]],
) -> list[Finding]:
    """The verdict in words: a training-data leak (confirmed by the role-swap control), a class
    prototype beyond every baseline, or no leakage beyond public knowledge; plus the notes."""
    ratio, p = specificity.ratio, specificity.p
    swap_p, swap_ratio = specificity.swap_p, specificity.swap_ratio
    acc = metrics["attack_accuracy"]
    out: list[Finding] = []
    beats_acc, beats_knn = beats_baselines(metrics)
    knn = metrics["knn_distance"]
    single = np.isfinite(p) and p < ALPHA and ratio < 1
    confirmed = single and swap_p is not None and swap_p < ALPHA and (swap_ratio or 1.0) < 1
    identity = setting == "disjoint-class"
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


def weak_evaluator(holdout_accuracy: float) -> Finding | None:
    if holdout_accuracy >= WEAK_EVALUATOR:
        return None
    return Finding(
        "Weak evaluation classifier",
        f"The evaluation classifier recognises only {holdout_accuracy:.2f} of held-out "
        f"records (below {WEAK_EVALUATOR:.2f}): attack accuracy measured with it understates "
        "what leaks, so a low figure here is not evidence that nothing leaks. Give it more "
        "evaluation data, more evaluator_epochs or a smaller evaluator_eps.",
        "medium",
    )
