"""Membership-inference metrics: ROC, AUC, TPR at a low FPR, balanced accuracy, advantage.

Scores are "higher means more likely a member". Following Carlini et al. 2022 ("Membership
Inference Attacks From First Principles", Section III), the headline figure is the true-positive
rate at a low false-positive rate, read off the ROC curve as the TPR of the last ROC point whose FPR
is at most ``alpha``; AUC and the membership advantage (Yeom et al. 2018, max TPR - FPR) are given
too. Every rate carries a percentile-bootstrap 95% CI that resamples members and non-members
separately (:func:`invguard.metrics.bootstrap_metric` with ``stratify``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from invguard.core.result import Metric
from invguard.metrics.stats import bootstrap_metric

F64 = NDArray[np.float64]


def _prep(scores: ArrayLike, is_member: ArrayLike) -> tuple[F64, NDArray[np.bool_]]:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    m = np.asarray(is_member).reshape(-1).astype(bool)
    if s.shape != m.shape:
        raise ValueError(f"scores ({s.size}) and is_member ({m.size}) need the same length")
    if not np.all(np.isfinite(s)):
        raise ValueError("membership scores contain NaN or infinite values")
    return s, m


def roc_curve(scores: ArrayLike, is_member: ArrayLike) -> tuple[F64, F64, F64]:
    """The ROC curve ``(fpr, tpr, thresholds)``, one point per distinct score, from (0, 0) to (1, 1).

    Point ``i`` is the rule "member if score >= thresholds[i]" (the first threshold is +inf).
    Ties share a point, so a constant score gives the chance diagonal's two end points only.
    """
    s, m = _prep(scores, is_member)
    n_pos, n_neg = int(m.sum()), int((~m).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"an ROC curve needs members and non-members; got {n_pos} and {n_neg}")
    order = np.argsort(-s, kind="mergesort")
    s_sorted, m_sorted = s[order], m[order]
    tp = np.cumsum(m_sorted)
    fp = np.cumsum(~m_sorted)
    last = np.r_[np.flatnonzero(np.diff(s_sorted)), s_sorted.size - 1]  # last index of each tie group
    tpr = np.r_[0.0, tp[last] / n_pos]
    fpr = np.r_[0.0, fp[last] / n_neg]
    thresholds = np.r_[np.inf, s_sorted[last]]
    return fpr.astype(np.float64), tpr.astype(np.float64), thresholds.astype(np.float64)


def auc(scores: ArrayLike, is_member: ArrayLike) -> float:
    """Area under the ROC curve (trapezoidal, so ties count one half)."""
    fpr, tpr, _ = roc_curve(scores, is_member)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def tpr_at_fpr(scores: ArrayLike, is_member: ArrayLike, alpha: float) -> float:
    """TPR of the last ROC point with FPR <= ``alpha`` (no interpolation, so it never flatters)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    fpr, tpr, _ = roc_curve(scores, is_member)
    ok = np.flatnonzero(fpr <= alpha + 1e-12)
    return float(tpr[ok[-1]])


def advantage(scores: ArrayLike, is_member: ArrayLike) -> float:
    """Membership advantage: max over thresholds of TPR - FPR (Yeom et al. 2018, Definition 4)."""
    fpr, tpr, _ = roc_curve(scores, is_member)
    return float(np.max(tpr - fpr))


def balanced_accuracy(scores: ArrayLike, is_member: ArrayLike, threshold: float | None = None) -> float:
    """(TPR + TNR) / 2 of the decision "member if score >= threshold".

    With ``threshold=None`` the best threshold is used, which equals ``(1 + advantage) / 2``; attacks
    pass their own threshold, calibrated without the evaluation labels.
    """
    s, m = _prep(scores, is_member)
    if threshold is None:
        return 0.5 * (1.0 + advantage(s, m))
    pred = s >= threshold
    tpr = float(np.mean(pred[m])) if m.any() else float("nan")
    tnr = float(np.mean(~pred[~m])) if (~m).any() else float("nan")
    return 0.5 * (tpr + tnr)


def membership_metrics(
    scores: ArrayLike,
    is_member: ArrayLike,
    *,
    decision_threshold: float | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Metric]:
    """The standard membership metrics, each with a bootstrap 95% CI stratified by membership.

    Keys: ``auc``, ``tpr_at_fpr_0.01``, ``tpr_at_fpr_0.001``, ``balanced_accuracy`` and
    ``advantage``.
    """
    s, m = _prep(scores, is_member)
    mi = m.astype(np.int64)
    strata = list(mi)
    n_neg = int((~m).sum())

    def boot(fn: Any, description: str) -> Metric:
        return bootstrap_metric(fn, s, mi, n_boot=n_boot, seed=seed, description=description, stratify=strata)

    low_fpr_note = f" ({n_neg} non-members: the smallest FPR step is {1.0 / max(1, n_neg):.2g})"
    bal_desc = (
        "balanced accuracy of the attack's own decision rule (calibrated without evaluation labels)"
        if decision_threshold is not None
        else "balanced accuracy at the best threshold, (1 + advantage) / 2"
    )
    return {
        "auc": boot(auc, "area under the ROC curve (0.5 = chance)"),
        "tpr_at_fpr_0.01": boot(
            lambda a, b: tpr_at_fpr(a, b, 0.01), "TPR at the last ROC point with FPR <= 1%" + low_fpr_note
        ),
        "tpr_at_fpr_0.001": boot(
            lambda a, b: tpr_at_fpr(a, b, 0.001),
            "TPR at the last ROC point with FPR <= 0.1%" + low_fpr_note,
        ),
        "balanced_accuracy": boot(lambda a, b: balanced_accuracy(a, b, decision_threshold), bal_desc),
        "advantage": boot(advantage, "membership advantage, max over thresholds of TPR - FPR"),
    }


def roc_for_plot(scores: ArrayLike, is_member: ArrayLike, max_points: int = 2000) -> tuple[F64, F64]:
    """ROC points ``(fpr, tpr)`` for a log-log plot, thinned to at most ``max_points``.

    Thinning keeps the low-FPR region intact: points are kept at log-spaced FPR positions (the last
    point of each position), plus both end points.
    """
    fpr, tpr, _ = roc_curve(scores, is_member)
    if fpr.size <= max_points:
        return fpr, tpr
    positive = fpr[fpr > 0]
    grid = np.geomspace(positive.min(), 1.0, max_points - 2)
    idx = np.unique(np.r_[0, np.searchsorted(fpr, grid, side="right") - 1, fpr.size - 1])
    return fpr[idx], tpr[idx]


def risk_ranking(
    scores: ArrayLike,
    is_member: ArrayLike,
    indices: ArrayLike,
    classes: ArrayLike,
    *,
    top: int = 20,
    members_only: bool = True,
) -> list[dict[str, Any]]:
    """The most exposed records, highest membership score first.

    Each row: ``rank``, ``index`` (into the source dataset), ``class``, ``score``, ``is_member`` and
    ``percentile`` (share of non-members scoring below the record: how far it stands out). With
    ``members_only`` (the default) only true training records are listed: those are the ones an
    owner can act on.
    """
    s, m = _prep(scores, is_member)
    ix = np.asarray(indices).reshape(-1)
    cl = np.asarray(classes).reshape(-1)
    if ix.size != s.size or cl.size != s.size:
        raise ValueError("indices and classes need one entry per score")
    neg = np.sort(s[~m])
    order = np.argsort(-s, kind="mergesort")
    if members_only:
        order = order[m[order]]
    rows: list[dict[str, Any]] = []
    for rank, i in enumerate(order[: max(0, int(top))], start=1):
        below = float(np.searchsorted(neg, s[i], side="left") / neg.size) if neg.size else float("nan")
        rows.append(
            {
                "rank": rank,
                "index": int(ix[i]),
                "class": int(cl[i]),
                "score": float(s[i]),
                "is_member": int(m[i]),
                "percentile": below,
            }
        )
    return rows
