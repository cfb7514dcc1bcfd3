"""The membership judge: per-candidate scores in, metrics with CIs, ROC, risk ranking and the verdict out.

Metrics (AUC, TPR at 1% and 0.1% FPR, balanced accuracy at the attack's own calibrated threshold)
come from :mod:`invguard.metrics.membership` with bootstrap 95% CIs; the verdict is decided on the
lower ends of those intervals, so a weak signal is never called a leak.
"""

from __future__ import annotations

import numpy as np

from invguard.core.evidence import MembershipScores
from invguard.core.result import Finding, Metric
from invguard.core.run import AttackOutput, Case
from invguard.judges.registry import register_judge

__all__ = ["judge_membership", "membership_output", "run_seed_draw"]


def run_seed_draw(seed: int) -> int:
    """The bootstrap seed of a membership run: the first draw of the run seed's stream."""
    return int(np.random.default_rng(seed).integers(2**31))


@register_judge(MembershipScores)
def judge_membership(ev: MembershipScores, case: Case) -> AttackOutput:
    """Reads ``n_boot`` (bootstrap resamples) and ``top`` (rows of the risk ranking) from the attack;
    the bootstrap seed is the first draw of the run seed's stream."""
    attack = case.attack
    return membership_output(
        attack.name,
        ev.scores,
        is_member=ev.is_member,
        indices=ev.indices,
        labels=ev.labels,
        decision_threshold=ev.decision_threshold,
        n_boot=int(getattr(attack, "n_boot", 1000)),
        seed=run_seed_draw(case.seed),
        top=int(getattr(attack, "top", 20)),
        notes=list(ev.notes),
    )


def membership_output(
    attack: str,
    scores: np.ndarray,
    *,
    is_member: np.ndarray,
    indices: np.ndarray,
    labels: np.ndarray,
    decision_threshold: float | None,
    n_boot: int,
    seed: int,
    top: int = 20,
    notes: list[Finding] | None = None,
) -> AttackOutput:
    """Metrics with CIs, ROC arrays, per-record scores and the risk ranking, plus findings (shared by
    every judge of membership scores, e.g. the text family's)."""
    from invguard.metrics.membership import membership_metrics, risk_ranking, roc_for_plot
    from invguard.metrics.privacy import roc_epsilon_metric

    scores = np.asarray(scores, dtype=np.float64)
    is_member = np.asarray(is_member, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    indices = np.asarray(indices, dtype=np.int64)
    metrics = membership_metrics(
        scores, is_member, decision_threshold=decision_threshold, n_boot=n_boot, seed=seed
    )
    # "this model behaves as no better than epsilon >= x": the bound its ROC implies at low FPR
    metrics["epsilon_at_fpr_0.01"] = roc_epsilon_metric(scores, is_member, max_fpr=0.01)
    fpr, tpr = roc_for_plot(scores, is_member)
    ranking = risk_ranking(scores, is_member, indices, labels, top=top)
    findings = [_verdict(attack, metrics, len(scores), int(is_member.sum()))]
    if ranking:
        top_rows = ", ".join(f"#{r['index']} (class {r['class']})" for r in ranking[:5])
        findings.append(
            Finding(
                "Most exposed training records",
                f"The training records scored most confidently as members are {top_rows}; "
                f"see the risk_ranking table for the top {len(ranking)}.",
                "info",
            )
        )
    findings += list(notes or [])
    return AttackOutput(
        metrics=metrics,
        arrays={
            "roc_fpr": fpr,
            "roc_tpr": tpr,
            "scores": scores,
            "is_member": is_member,
            "indices": indices,
            "labels": labels,
        },
        tables={"risk_ranking": ranking},
        findings=findings,
        info={
            "candidates": len(scores),
            "members": int(is_member.sum()),
            "decision_threshold": decision_threshold,
        },
    )


def _verdict(attack: str, m: dict[str, Metric], n: int, members: int) -> Finding:
    auc, t1, t01 = m["auc"], m["tpr_at_fpr_0.01"], m["tpr_at_fpr_0.001"]
    auc_low = auc.low if auc.low is not None else auc.value
    t1_low = t1.low if t1.low is not None else t1.value
    detail = (
        f"On {n} candidate records ({members} members), {attack} reaches AUC {auc:.3f}, "
        f"TPR {t1:.3f} at 1% FPR and {t01:.3f} at 0.1% FPR (95% bootstrap CIs)."
    )
    eps = m.get("epsilon_at_fpr_0.01")
    if eps is not None and eps.low is not None:
        detail += (
            f" Its ROC at FPR <= 1% says the model behaves as no better than epsilon >= {eps.low:.2f}-DP "
            f"(95% confidence, delta 0; estimate {eps.value:.2f})."
        )
    if auc_low > 0.5 and t1_low > 0.01:
        sev = "high" if t1.value >= 0.1 or auc.value >= 0.75 else "medium"
        return Finding(
            "Training membership is exposed",
            detail + " The model reveals who was in its "
            "training set, most sharply for the records in the risk ranking.",
            sev,
        )
    if auc_low > 0.5:
        return Finding(
            "Weak average membership signal",
            detail + " Members score higher on average, but no confident low-FPR identification.",
            "low",
        )
    return Finding("No membership leak found", detail + " The attack does no better than chance.", "info")
