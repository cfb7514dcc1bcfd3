"""Empirical lower bounds on differential privacy's epsilon, from membership guesses.

Two bounds, both valid at a stated confidence (default 95%):

- **One training run** (Steinke, Nasr & Jagielski, "Privacy Auditing with One (1) Training Run",
  NeurIPS 2023, Theorem 3.3 and Algorithm 2 / Appendix D): ``m`` canaries are each included in the
  training set independently with probability 1/2; the auditor guesses "in" for the ``k+``
  highest-scoring canaries and "out" for the ``k-`` lowest, abstaining on the rest. Under an
  ``(eps, delta)``-DP algorithm the number of correct guesses ``V`` among ``r = k+ + k-`` guesses is
  stochastically dominated so that ``P[V >= v] <= beta + 2 m delta alpha`` with
  ``beta = P[Binomial(r, q) >= v]``, ``q = e^eps / (1 + e^eps)`` and
  ``alpha = max_{1<=i<=v} P[v - i <= Binomial(r, q) < v] / i``. The bound is the largest ``eps`` whose
  p-value stays below ``1 - confidence``. Choosing ``(k+, k-)`` after seeing the scores would
  invalidate it, so every candidate pair of a fixed grid is tested at ``(1 - confidence) / grid
  size`` (Bonferroni) and the best is reported.
- **The classic two-point bound** (Jagielski, Ullman & Oprea 2020; Nasr et al. 2021): an
  ``(eps, delta)``-DP mechanism has ``TPR <= e^eps FPR + delta`` and ``TNR <= e^eps FNR + delta`` at every
  threshold, so ``eps >= log((TPR_lo - delta) / FPR_hi)`` with Clopper-Pearson one-sided limits
  (each at half the significance), Bonferroni-corrected over the thresholds tried.

``epsilon_metric`` and ``roc_epsilon_metric`` package them as a ``Metric`` with a 95% interval.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import optimize, special, stats

from invguard.core.result import Metric
from invguard.metrics.stats import bootstrap_metric

F64 = NDArray[np.float64]

EPS_CAP = 50.0  # the search never returns more than this (a perfect attack on many canaries)


# ------------------------------------------------------------------------------------- one run


def one_run_p_value(m: int, r: int, v: int, eps: float, delta: float = 0.0) -> float:
    """Probability of at least ``v`` correct guesses out of ``r`` (``m`` canaries) under ``(eps, delta)``-DP.

    Steinke, Nasr & Jagielski 2023, Theorem 3.3: ``min(1, beta + 2 m delta alpha)``.
    """
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= correct ({v}) <= guesses ({r}) <= canaries ({m})")
    if eps < 0 or not 0 <= delta <= 1:
        raise ValueError(f"need eps >= 0 and 0 <= delta <= 1, got {eps} and {delta}")
    q = float(special.expit(eps))
    beta = float(stats.binom.sf(v - 1, r, q))
    if delta == 0 or v == 0:
        return min(1.0, beta)
    i = np.arange(1, v + 1)
    window = stats.binom.sf(v - i - 1, r, q) - beta  # P[v - i <= Binomial(r, q) < v]
    alpha = float(np.max(window / i))
    return min(1.0, beta + alpha * delta * 2 * m)


def one_run_epsilon(m: int, r: int, v: int, *, delta: float = 0.0, significance: float = 0.05) -> float:
    """The largest ``eps`` that ``v`` correct out of ``r`` guesses on ``m`` canaries refutes at
    ``significance`` (0 when even ``eps = 0`` is not refuted)."""
    if not 0 < significance < 1:
        raise ValueError(f"significance must be in (0, 1), got {significance}")
    return _one_run_epsilon(int(m), int(r), int(v), float(delta), float(significance))


@functools.lru_cache(maxsize=65536)
def _one_run_epsilon(m: int, r: int, v: int, delta: float, significance: float) -> float:
    """Pure function of its arguments, cached: bootstrap replicates repeat the same counts."""

    def objective(eps: float) -> float:
        return significance - one_run_p_value(m, r, v, eps, delta)

    if r == 0 or objective(0.0) <= 0:
        return 0.0
    hi = 1.0
    while objective(hi) > 0:
        if hi >= EPS_CAP:
            return EPS_CAP
        hi = min(2 * hi, EPS_CAP)
    return float(optimize.brentq(objective, 0.0, hi, xtol=1e-6))


def guess_grid(m: int, *, points: int = 8) -> list[tuple[int, int]]:
    """The fixed grid of ``(k+, k-)`` the one-run audit tries: log-spaced guess counts from
    ``m / 100`` to ``m / 2``, each one-sided (``k- = 0``) and two-sided (``k- = k+``)."""
    hi = max(1, m // 2)
    lo = max(1, min(hi, m // 100))
    ks = sorted({round(k) for k in np.geomspace(lo, hi, points)})
    grid = [(k, 0) for k in ks] + [(k, k) for k in ks if 2 * k <= m]
    return grid


@dataclass(frozen=True)
class OneRunBound:
    """The one-run bound and the guesses that achieved it."""

    epsilon: float
    k_pos: int
    k_neg: int
    guesses: int
    correct: int
    canaries: int
    hypotheses: int
    significance: float
    delta: float


def one_run_bound(
    scores: ArrayLike,
    is_member: ArrayLike,
    *,
    delta: float = 0.0,
    significance: float = 0.05,
    grid: Sequence[tuple[int, int]] | None = None,
) -> OneRunBound:
    """The one-run epsilon lower bound of canary membership scores (higher = "more likely in").

    ``is_member`` says which canaries were really included (each with probability 1/2 by design).
    Ties in the scores are broken by position, never by the truth.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    truth = np.asarray(is_member).reshape(-1).astype(bool)
    if s.shape != truth.shape or s.size == 0:
        raise ValueError(f"scores ({s.size}) and is_member ({truth.size}) need the same, non-zero length")
    if not np.all(np.isfinite(s)):
        raise ValueError("canary scores contain NaN or infinite values")
    m = int(s.size)
    pairs = list(grid) if grid is not None else guess_grid(m)
    if not pairs:
        raise ValueError("the guess grid is empty")
    order = np.argsort(-s, kind="mergesort")
    ranked = truth[order]
    in_hits = np.r_[0, np.cumsum(ranked)]  # correct "in" guesses among the top k
    out_hits = np.r_[0, np.cumsum(~ranked[::-1])]  # correct "out" guesses among the bottom k
    sig = significance / len(pairs)
    best = OneRunBound(0.0, 0, 0, 0, 0, m, len(pairs), significance, delta)
    for kp, kn in pairs:
        if kp < 0 or kn < 0 or kp + kn > m:
            raise ValueError(f"guess counts ({kp}, {kn}) do not fit {m} canaries")
        v = int(in_hits[kp] + out_hits[kn])
        r = kp + kn
        if r == 0 or v / r <= special.expit(best.epsilon):
            continue  # cannot beat the best so far
        e = one_run_epsilon(m, r, v, delta=delta, significance=sig)
        if e > best.epsilon:
            best = OneRunBound(e, kp, kn, r, v, m, len(pairs), significance, delta)
    return best


# ------------------------------------------------------------------------ Clopper-Pearson bound


def clopper_pearson(k: ArrayLike, n: ArrayLike, *, significance: float = 0.05) -> tuple[F64, F64]:
    """Exact (Clopper-Pearson 1934) two-sided ``1 - significance`` interval of a binomial rate."""
    k_ = np.asarray(k, dtype=np.float64)
    n_ = np.asarray(n, dtype=np.float64)
    a = significance / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        low = np.where(k_ > 0, stats.beta.ppf(a, k_, n_ - k_ + 1), 0.0)
        high = np.where(k_ < n_, stats.beta.ppf(1 - a, k_ + 1, n_ - k_), 1.0)
    return np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)


def _threshold_counts(s: F64, truth: NDArray[np.bool_]) -> tuple[F64, F64, int, int]:
    """True and false positives of "in if score >= t" for every distinct score ``t``."""
    order = np.argsort(-s, kind="mergesort")
    ss, tt = s[order], truth[order]
    last = np.r_[np.flatnonzero(np.diff(ss)), ss.size - 1]
    tp = np.cumsum(tt)[last].astype(np.float64)
    fp = np.cumsum(~tt)[last].astype(np.float64)
    return tp, fp, int(truth.sum()), int((~truth).sum())


def _two_point(
    tp: F64, fp: F64, n_pos: int, n_neg: int, delta: float, significance: float
) -> tuple[F64, F64, F64]:
    """Per threshold: the point estimate, lower and upper ends of eps from both inequalities."""
    tpr_lo, tpr_hi = clopper_pearson(tp, n_pos, significance=significance)
    fpr_lo, fpr_hi = clopper_pearson(fp, n_neg, significance=significance)
    tnr_lo, tnr_hi = 1 - fpr_hi, 1 - fpr_lo
    fnr_lo, fnr_hi = 1 - tpr_hi, 1 - tpr_lo
    tpr, fpr = tp / n_pos, fp / n_neg
    floor_pos, floor_neg = 0.5 / n_pos, 0.5 / n_neg  # keep the plug-in estimate finite at 0 counts

    def ratio(num: F64, den: F64) -> F64:
        with np.errstate(divide="ignore", invalid="ignore"):
            out = np.log(np.clip(num - delta, 0, None)) - np.log(den)
        return np.where(np.isfinite(out), out, np.where(num - delta > 0, np.inf, 0.0))

    point = np.maximum(ratio(tpr, np.maximum(fpr, floor_neg)), ratio(1 - fpr, np.maximum(1 - tpr, floor_pos)))
    low = np.maximum(ratio(tpr_lo, fpr_hi), ratio(tnr_lo, fnr_hi))
    high = np.maximum(
        ratio(tpr_hi, np.maximum(fpr_lo, floor_neg)), ratio(tnr_hi, np.maximum(fnr_lo, floor_pos))
    )
    return np.clip(point, 0, EPS_CAP), np.clip(low, 0, EPS_CAP), np.clip(high, 0, EPS_CAP)


def clopper_pearson_epsilon(
    scores: ArrayLike,
    is_member: ArrayLike,
    *,
    delta: float = 0.0,
    significance: float = 0.05,
    max_fpr: float = 1.0,
) -> tuple[float, float, float]:
    """``(estimate, lower, upper)`` of eps from TPR/FPR over thresholds with FPR <= ``max_fpr``.

    ``lower`` is a ``1 - significance`` lower bound: at each threshold, Clopper-Pearson limits of
    the rates (two-sided, so each end at ``significance / 2``) are put into both inequalities of
    (eps, delta)-DP, and the thresholds are Bonferroni-corrected. ``estimate`` is the plug-in value
    at the best threshold (rates floored at half a count) and ``upper`` the other end of its interval.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    truth = np.asarray(is_member).reshape(-1).astype(bool)
    if s.shape != truth.shape:
        raise ValueError(f"scores ({s.size}) and is_member ({truth.size}) need the same length")
    if not np.all(np.isfinite(s)):
        raise ValueError("membership scores contain NaN or infinite values")
    tp, fp, n_pos, n_neg = _threshold_counts(s, truth)
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"an epsilon bound needs members and non-members; got {n_pos} and {n_neg}")
    keep = fp / n_neg <= max_fpr + 1e-12
    if not keep.any():
        return 0.0, 0.0, 0.0
    tp, fp = tp[keep], fp[keep]
    sig = significance / int(tp.size)
    _, low, _ = _two_point(tp, fp, n_pos, n_neg, delta, sig)
    point, _, high = _two_point(tp, fp, n_pos, n_neg, delta, significance)
    best = int(np.argmax(point))
    return float(point[best]), float(np.max(low)), float(high[best])


def roc_epsilon_metric(
    scores: ArrayLike, is_member: ArrayLike, *, max_fpr: float = 0.01, delta: float = 0.0
) -> Metric:
    """The epsilon a membership attack's ROC implies at FPR <= ``max_fpr``, as a Metric.

    ``low`` is the 95% lower bound ("this model behaves as no better than eps >= low").
    """
    est, low, high = clopper_pearson_epsilon(scores, is_member, delta=delta, max_fpr=max_fpr)
    return Metric(
        est,
        low,
        max(high, est),
        True,
        f"epsilon implied by the ROC at FPR <= {max_fpr:g} (delta {delta:g}): TPR <= e^eps FPR + delta; "
        "low end: 95% Clopper-Pearson lower bound, Bonferroni over thresholds",
    )


def one_run_metric(
    scores: ArrayLike,
    is_member: ArrayLike,
    *,
    delta: float = 0.0,
    significance: float = 0.05,
    n_boot: int = 200,
    seed: int = 0,
) -> tuple[Metric, OneRunBound]:
    """The one-run bound as a Metric: ``value`` is the paper's bound at ``1 - significance``
    confidence; ``low``/``high`` a percentile-bootstrap 95% interval of that bound over the
    canaries (members and non-members resampled separately), showing how much it could move."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    truth = np.asarray(is_member).reshape(-1).astype(np.int64)
    grid = guess_grid(int(s.size))
    bound = one_run_bound(s, truth, delta=delta, significance=significance, grid=grid)
    metric = bootstrap_metric(
        lambda a, b: one_run_bound(a, b, delta=delta, significance=significance, grid=grid).epsilon,
        s,
        truth,
        n_boot=n_boot,
        seed=seed,
        stratify=list(truth),
        description=(
            f"one-run empirical epsilon (Steinke, Nasr & Jagielski 2023) at {1 - significance:.0%} "
            f"confidence on {s.size} canaries, delta {delta:g}; interval: bootstrap over the canaries"
        ),
    )
    return metric, bound


def clopper_pearson_metric(
    scores: ArrayLike, is_member: ArrayLike, *, delta: float = 0.0, significance: float = 0.05
) -> Metric:
    """The classic TPR/FPR bound as a Metric: value = the ``1 - significance`` lower bound; its
    interval: the plug-in estimate's Clopper-Pearson range at the best threshold."""
    est, low, high = clopper_pearson_epsilon(scores, is_member, delta=delta, significance=significance)
    return Metric(
        low,
        low,
        max(high, low),
        True,
        f"epsilon lower bound from TPR/FPR with Clopper-Pearson intervals at {1 - significance:.0%} "
        f"confidence, Bonferroni over thresholds, delta {delta:g} (plug-in estimate {est:.3g})",
    )


def randomised_response(bits: ArrayLike, eps: float, rng: np.random.Generator) -> NDArray[np.int64]:
    """Warner's randomised response: each bit kept with probability ``e^eps / (1 + e^eps)``, else
    flipped. Exactly ``eps``-DP per bit; the reference mechanism for testing the bounds."""
    b = np.asarray(bits).astype(np.int64)
    keep = rng.random(b.shape) < special.expit(eps)
    out: NDArray[np.int64] = np.where(keep, b, 1 - b)
    return out


def basic_composition(epsilons: Sequence[float], deltas: Sequence[float]) -> tuple[float, float]:
    """Sequential composition of ``(eps_i, delta_i)`` releases on the same data: ``(sum eps, sum delta)``
    (Dwork & Roth 2014, Theorem 3.16), an upper bound on the total spent."""
    e = float(math.fsum(epsilons))
    d = float(min(1.0, math.fsum(deltas)))
    return e, d


def describe_privacy(privacy: Mapping[str, Any] | None) -> str:
    """One sentence on the privacy a model's training spent (what reports show about it)."""
    if not privacy:
        return "trained without differential privacy (no privacy guarantee)"
    poisson = (
        " (Poisson)" if privacy.get("poisson_sampling", True) else " (NOT Poisson: the guarantee assumes it)"
    )
    return (
        f"trained with {privacy.get('mechanism', 'DP-SGD')}: (epsilon {privacy['epsilon']:.3g}, "
        f"delta {privacy['delta']:.2g})-DP by the {str(privacy['accountant']).upper()} accountant; "
        f"noise multiplier {privacy['noise_multiplier']:.3g}, sampling rate {privacy['sample_rate']:.3g}"
        f"{poisson}, "
        f"{privacy['steps']} steps, clipping norm {privacy['max_grad_norm']:g}"
    )
