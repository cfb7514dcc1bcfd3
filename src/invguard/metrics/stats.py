"""Confidence intervals: the percentile bootstrap (Efron & Tibshirani 1993) and Wilson's score
interval for a proportion (Wilson 1927)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from invguard.core.result import Metric


def bootstrap_metric(
    statistic: Callable[..., float],
    *arrays: ArrayLike,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    higher_is_worse: bool = True,
    description: str = "",
    stratify: Sequence[Any] | None = None,
) -> Metric:
    """``statistic(*arrays)`` with a percentile-bootstrap (1 - alpha) CI, resampling rows jointly.

    ``stratify`` (one label per row) resamples within each stratum, e.g. members and non-members
    separately so that every replicate keeps both.
    """
    arrs = [np.asarray(a) for a in arrays]
    n = arrs[0].shape[0]
    if any(a.shape[0] != n for a in arrs):
        raise ValueError("bootstrap_metric: all arrays need the same number of rows")
    value = float(statistic(*arrs))
    if n < 2:
        return Metric(value, None, None, higher_is_worse, description)
    rng = np.random.default_rng(seed)
    if stratify is None:
        groups = [np.arange(n)]
    else:
        s = np.asarray(stratify)
        groups = [np.flatnonzero(s == g) for g in np.unique(s)]
    reps = np.empty(n_boot)
    for b in range(n_boot):
        ix = np.concatenate([g[rng.integers(0, g.size, g.size)] for g in groups])
        reps[b] = statistic(*(a[ix] for a in arrs))
    reps = reps[np.isfinite(reps)]
    if reps.size == 0:
        return Metric(value, None, None, higher_is_worse, description)
    low, high = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
    return Metric(value, float(low), float(high), higher_is_worse, description)


def proportion_metric(
    successes: int, total: int, *, alpha: float = 0.05, higher_is_worse: bool = True, description: str = ""
) -> Metric:
    """A rate ``successes / total`` with Wilson's score interval (good for small counts and 0 or 1)."""
    from scipy.stats import norm

    if total <= 0:
        return Metric(float("nan"), None, None, higher_is_worse, description)
    p = successes / total
    z = float(norm.ppf(1 - alpha / 2))
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * np.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == total else min(1.0, centre + half)
    return Metric(p, float(low), float(high), higher_is_worse, description)


def wilson_interval(successes: int, total: int, z: float) -> tuple[float, float]:
    """Wilson's score interval (Wilson 1927) for ``successes / total`` at normal quantile ``z``."""
    import math

    if total <= 0:
        return 0.0, 1.0
    p = successes / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == total else min(1.0, centre + half)
    return low, high


def difference_interval(
    k1: int, n1: int, k2: int, n2: int, *, confidence: float = 0.95
) -> tuple[float, float, float]:
    """``p1 - p2`` of two independent proportions with Newcombe's hybrid score interval (Newcombe
    1998, "Interval estimation for the difference between independent proportions: comparison of
    eleven methods", Statistics in Medicine 17, method 10): each rate's Wilson interval, combined by
    the square-and-add rule. Well behaved near 0 and 1, where the Wald interval is not.

    ``confidence`` is per bound: ``lower > margin`` at ``confidence=0.999`` is a one-sided test of
    ``p1 - p2 <= margin`` at level 0.001. Returns ``(difference, lower, upper)``."""
    import math
    from statistics import NormalDist

    if n1 <= 0 or n2 <= 0:
        raise ValueError("difference_interval: both samples need at least one trial")
    if not 0.5 < confidence < 1:
        raise ValueError(f"difference_interval: confidence must be in (0.5, 1), got {confidence}")
    z = NormalDist().inv_cdf(confidence)
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson_interval(k1, n1, z)
    l2, u2 = wilson_interval(k2, n2, z)
    d = p1 - p2
    lower = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    upper = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return d, lower, upper
