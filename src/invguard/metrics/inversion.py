"""How much a model-inversion attack reconstructed, measured the way the field does.

- **Attack accuracy** (Zhang et al., "The Secret Revealer", CVPR 2020): an *independent evaluation
  classifier* (a different architecture, trained on the evaluation split, never the target)
  classifies each reconstruction; top-1 and top-5, with bootstrap 95% CIs. The target's own
  confidence is reported but never the headline: fooling the target with noise is not leakage.
  For images the evaluator is *robust*: two adversarially trained members of different families
  (Madry et al., ICLR 2018) that must agree, so noise that fools the target (and would transfer
  to a plainly trained classifier) is not credited as a recognisable reconstruction.
- **KNN distance**: squared L2 distance, in the evaluator's feature space, from each reconstruction
  to the nearest *private member* of its class; pixel SSIM/PSNR/MSE (Wang et al. 2004, scikit-image)
  to the nearest private member in pixel space.
- **Reconstructed-similarity rate** ("M1"): the fraction of reconstructions whose nearest-private
  SSIM (images) or cosine similarity (vectors) exceeds a threshold.
- **Baselines**: what an attacker knows with no model (public class means, or random public draws
  for classes absent from the public data) and *public ranking* (query the target with public
  records, keep the top-scored per class).
- **Confidence intervals** resample *classes*, not reconstructions (a cluster bootstrap; Field &
  Welsh 2007, "Bootstrapping clustered data"): the reconstructions of one class share a start, a
  target and a baseline (in the shared-class setting the prior baseline is one class mean copied),
  so they are not independent. A rate whose bootstrap collapses (every class at 0 or at 1) gets
  Wilson's interval with the number of classes as the sample size instead of a zero-width one.
  Lifts are paired by class, and decided with an exact sign-flip permutation test on the per-class
  differences (Fisher's randomisation test; Good 2000).
- **Private-specificity**: are reconstructions closer to the model's training members than to
  held-out non-members of the same class? Distance ratio and a one-sided permutation test
  (Good, "Permutation Tests", 2000); the caller pairs it with a role-swap control.

Pure functions on arrays. The evaluation classifier is :mod:`invguard.models.evaluator`; scoring a
set of reconstructions with it, the baselines and the verdict are :mod:`invguard.judges.inversion`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from invguard.core.result import Metric
from invguard.metrics.stats import proportion_metric

F64 = NDArray[np.float64]

__all__ = [
    "class_metric",
    "knn_distances",
    "lift_metric",
    "lift_test",
    "nearest_pixel",
    "paired_class_difference",
    "private_specificity",
]


# ----------------------------------------------------------------------------------- distances


def _sqdist(A: F64, B: F64) -> F64:
    """Pairwise squared L2 distances between the rows of ``A`` and ``B``."""
    a2 = np.sum(A * A, axis=1)[:, None]
    b2 = np.sum(B * B, axis=1)[None, :]
    d: F64 = np.maximum(a2 + b2 - 2.0 * A @ B.T, 0.0)
    return d


def knn_distances(rec_features: F64, classes: NDArray[Any], ref_features: F64, ref_y: NDArray[Any]) -> F64:
    """Per reconstruction: min squared L2 distance to the reference rows of its own class (NaN if none)."""
    out = np.full(rec_features.shape[0], np.nan)
    for c in np.unique(classes):
        ix = np.flatnonzero(classes == c)
        ref = ref_features[ref_y == c]
        if ref.shape[0]:
            out[ix] = _sqdist(rec_features[ix], ref).min(axis=1)
    return out


def nearest_pixel(
    recs: NDArray[Any], classes: NDArray[Any], private: NDArray[Any], private_y: NDArray[Any]
) -> F64:
    """Per reconstruction: the private member of its class nearest in pixel space (MSE)."""
    flat = recs.reshape(recs.shape[0], -1).astype(np.float64)
    pflat = private.reshape(private.shape[0], -1).astype(np.float64)
    out = np.zeros_like(flat)
    for c in np.unique(classes):
        ix = np.flatnonzero(classes == c)
        ref = pflat[private_y == c]
        if ref.shape[0] == 0:
            out[ix] = np.nan
            continue
        j = _sqdist(flat[ix], ref).argmin(axis=1)
        out[ix] = ref[j]
    res: F64 = out.reshape(recs.shape)
    return res


def pixel_similarity(recs: F64, nearest: F64) -> tuple[F64, F64, F64, bool]:
    """(SSIM or cosine, PSNR, MSE) per pair; the flag says whether SSIM (images) was used."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    n = recs.shape[0]
    mse = np.mean((recs.reshape(n, -1) - nearest.reshape(n, -1)) ** 2, axis=1)
    psnr = np.array(
        [
            peak_signal_noise_ratio(nearest[i], recs[i], data_range=1.0)  # type: ignore[no-untyped-call]
            if mse[i] > 0
            else np.inf
            for i in range(n)
        ],
        dtype=np.float64,
    )
    is_image = recs.ndim == 4 and min(recs.shape[2:]) >= 7
    if is_image:
        sim = np.array(
            [
                structural_similarity(  # type: ignore[no-untyped-call]
                    np.moveaxis(recs[i], 0, -1),
                    np.moveaxis(nearest[i], 0, -1),
                    data_range=1.0,
                    channel_axis=-1,
                    win_size=7,
                )
                for i in range(n)
            ],
            dtype=np.float64,
        )
    else:
        a, b = recs.reshape(n, -1), nearest.reshape(n, -1)
        denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        sim = np.sum(a * b, axis=1) / np.where(denom > 0, denom, 1.0)
    return sim, psnr, mse, is_image


# ------------------------------------------------------------------------------------- scoring


def _class_groups(classes: NDArray[Any], finite: NDArray[np.bool_]) -> list[NDArray[np.intp]]:
    cls = np.asarray(classes)
    groups = [np.flatnonzero((cls == c) & finite) for c in np.unique(cls)]
    return [g for g in groups if g.size]


def _wilson(value: float, n_classes: int, higher_is_worse: bool, description: str) -> Metric:
    """Wilson's interval for a rate with the number of classes as the effective sample size."""
    w = proportion_metric(
        round(value * n_classes), n_classes, higher_is_worse=higher_is_worse, description=description
    )
    return Metric(value, w.low, w.high, higher_is_worse, description)


def class_metric(
    values: NDArray[Any],
    classes: NDArray[Any],
    *,
    n_boot: int,
    seed: int,
    higher_is_worse: bool = True,
    description: str = "",
    rate: bool = False,
) -> Metric:
    """Mean of ``values`` with a cluster-bootstrap 95% CI that resamples classes (with replacement).

    ``rate``: the values are 0/1; when the bootstrap collapses to one value (every class at 0, or at
    1) the interval is Wilson's with the number of classes as the sample size, never zero-width.
    Non-finite values are left out. With a single class there is no between-class spread to
    resample: a rate gets Wilson's interval on n=1, a mean no interval.
    """
    v = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(v)
    if not finite.any():
        return Metric(float("nan"), None, None, higher_is_worse, description)
    value = float(v[finite].mean())
    groups = _class_groups(classes, finite)
    if len(groups) < 2:
        if rate:
            return _wilson(value, len(groups), higher_is_worse, description)
        return Metric(value, None, None, higher_is_worse, description)
    rng = np.random.default_rng(seed)
    reps = np.empty(n_boot)
    for b in range(n_boot):
        pick = rng.integers(0, len(groups), len(groups))
        reps[b] = v[np.concatenate([groups[i] for i in pick])].mean()
    low, high = (float(q) for q in np.quantile(reps, [0.025, 0.975]))
    if rate and high - low <= 1e-12:
        return _wilson(value, len(groups), higher_is_worse, description)
    return Metric(value, low, high, higher_is_worse, description)


def _sign_flip_p(d: F64, seed: int, exact_up_to: int = 14, draws: int = 20000) -> float:
    """One-sided p-value that the mean per-class difference ``d`` is > 0 (sign-flip permutation).

    Exact (all 2^n sign patterns) up to ``exact_up_to`` classes, Monte Carlo beyond.
    """
    n = d.size
    if n == 0 or not np.any(d != 0):
        return 1.0
    observed = float(d.mean())
    if n <= exact_up_to:
        signs = 1 - 2 * ((np.arange(2**n)[:, None] >> np.arange(n)[None, :]) & 1)
        stats = (signs * d[None, :]).mean(axis=1)
        return float(np.mean(stats >= observed - 1e-12))
    rng = np.random.default_rng(seed)
    signs = rng.choice(np.array([-1.0, 1.0]), size=(draws, n))
    stats = (signs * d[None, :]).mean(axis=1)
    return float((1 + np.sum(stats >= observed - 1e-12)) / (1 + draws))


def paired_class_difference(
    a: NDArray[Any],
    b: NDArray[Any],
    classes: NDArray[Any],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    description: str = "",
    rate: bool = False,
) -> tuple[Metric, float]:
    """(mean of ``a`` minus mean of ``b`` with a class-paired cluster-bootstrap CI, sign-flip p-value).

    ``a`` and ``b`` are measured on the same reconstructions' classes (row i of both belongs to
    ``classes[i]``); each bootstrap replicate resamples whole classes and takes both means over the
    same classes. The p-value tests "a exceeds b" on the per-class mean differences. ``rate``: 0/1
    values; a collapsed bootstrap falls back to the MOVER interval (Newcombe 1998) built from the
    two Wilson intervals with the number of classes as the sample size.
    """
    av = np.asarray(a, dtype=np.float64)
    bv = np.asarray(b, dtype=np.float64)
    finite = np.isfinite(av) & np.isfinite(bv)
    if not finite.any():
        return Metric(float("nan"), None, None, True, description), float("nan")
    value = float(av[finite].mean() - bv[finite].mean())
    groups = _class_groups(classes, finite)
    d = np.array([av[g].mean() - bv[g].mean() for g in groups])
    p = _sign_flip_p(d, seed)
    low: float | None
    high: float | None
    low = high = None
    if len(groups) >= 2:
        rng = np.random.default_rng(seed)
        reps = np.empty(n_boot)
        for i in range(n_boot):
            ix = np.concatenate([groups[j] for j in rng.integers(0, len(groups), len(groups))])
            reps[i] = av[ix].mean() - bv[ix].mean()
        low, high = (float(q) for q in np.quantile(reps, [0.025, 0.975]))
    if rate and (low is None or high is None or high - low <= 1e-12):
        n = len(groups)
        pa, pb = float(av[finite].mean()), float(bv[finite].mean())
        wa, wb = _wilson(pa, n, True, ""), _wilson(pb, n, True, "")
        assert wa.low is not None and wa.high is not None and wb.low is not None and wb.high is not None
        low = value - float(np.hypot(pa - wa.low, wb.high - pb))
        high = value + float(np.hypot(wa.high - pa, pb - wb.low))
    return Metric(value, low, high, True, description), p


# ---------------------------------------------------------------------------- private-specificity


def private_specificity(
    rec_features: F64,
    classes: NDArray[Any],
    member_features: F64,
    member_y: NDArray[Any],
    nonmember_features: F64,
    nonmember_y: NDArray[Any],
    *,
    permutations: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """(distance ratio, one-sided permutation p-value) of reconstructions to members vs non-members.

    The ratio is mean nearest-member distance / mean nearest-non-member distance (feature space,
    per class). Below 1: closer to the training members. The p-value permutes, within each class,
    which pooled records are called members (same counts), and is the fraction of permutations
    whose ratio is at most the observed one. A small p on one split alone is not evidence of a
    leak: pair it with the role-swap control.
    """
    rng = np.random.default_rng(seed)
    classes = np.asarray(classes)
    blocks: list[tuple[F64, int]] = []
    for c in np.unique(classes):
        mem = member_features[member_y == c]
        non = nonmember_features[nonmember_y == c]
        if mem.shape[0] == 0 or non.shape[0] == 0:
            continue
        D = _sqdist(rec_features[classes == c], np.concatenate([mem, non]))
        blocks.append((D, mem.shape[0]))
    if not blocks:
        return float("nan"), float("nan")

    def ratio(assign: list[NDArray[np.intp]] | None) -> float:
        dm, dn = [], []
        for bi, (D, n_mem) in enumerate(blocks):
            cols = np.arange(D.shape[1]) if assign is None else assign[bi]
            dm.append(D[:, cols[:n_mem]].min(axis=1))
            dn.append(D[:, cols[n_mem:]].min(axis=1))
        num, den = float(np.mean(np.concatenate(dm))), float(np.mean(np.concatenate(dn)))
        return num / den if den > 0 else float("inf")

    observed = ratio(None)
    count = 0
    for _ in range(permutations):
        perm = [rng.permutation(D.shape[1]) for D, _ in blocks]
        if ratio(perm) <= observed:
            count += 1
    return observed, (1 + count) / (1 + permutations)


def lift_metric(
    attack_correct: NDArray[Any],
    baseline_correct: NDArray[Any],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    name: str,
    classes: NDArray[Any] | None = None,
) -> Metric:
    """Attack accuracy minus a baseline's accuracy on the same classes, paired by class.

    ``classes``: the class of each reconstruction (row i of both arrays); without it every row is
    its own cluster. See :func:`lift_test` for the p-value that goes with it.
    """
    m, _ = lift_test(attack_correct, baseline_correct, n_boot=n_boot, seed=seed, name=name, classes=classes)
    return m


def lift_test(
    attack_correct: NDArray[Any],
    baseline_correct: NDArray[Any],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    name: str,
    classes: NDArray[Any] | None = None,
) -> tuple[Metric, float]:
    """(:func:`lift_metric`, one-sided sign-flip p-value that the attack beats the baseline)."""
    a = np.asarray(attack_correct, dtype=np.float64)
    cls = np.arange(a.size) if classes is None else np.asarray(classes)
    return paired_class_difference(
        a,
        baseline_correct,
        cls,
        n_boot=n_boot,
        seed=seed,
        rate=True,
        description=f"attack accuracy minus the {name} baseline's on the same classes (positive: the attack "
        f"learned more than {name}; 95% CI resampling classes, paired)",
    )
