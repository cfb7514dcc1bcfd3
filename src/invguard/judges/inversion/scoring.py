"""Scoring one set of reconstructions with the independent evaluator, and the no-model prior.

Attack accuracy (top-1/top-5), KNN distance in the evaluator's feature space, pixel SSIM/PSNR/MSE
and the similarity rate, each with a 95% CI resampling classes (see :mod:`invguard.metrics.inversion`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from invguard.core.data import Splits
from invguard.core.result import Metric
from invguard.metrics.inversion import class_metric, knn_distances, nearest_pixel, pixel_similarity
from invguard.models.evaluator import Evaluator

F64 = NDArray[np.float64]


@dataclass
class InversionScores:
    """Everything measured about one set of reconstructions."""

    metrics: dict[str, Metric]
    per_class: list[dict[str, Any]]
    nearest_private: F64
    correct: NDArray[np.bool_]
    knn: F64
    features: F64


def score_reconstructions(
    recs: NDArray[Any],
    classes: NDArray[Any],
    splits: Splits,
    evaluator: Evaluator,
    *,
    converged: NDArray[Any] | None = None,
    member_split: str = "members",
    similarity_threshold: float = 0.5,
    n_boot: int = 1000,
    seed: int = 0,
) -> InversionScores:
    """Attack accuracy (top-1/top-5), KNN distance, SSIM/PSNR/MSE and similarity rate, with CIs.

    A reconstruction that did not converge (the attack never reached its class on the target)
    counts as a failure for attack accuracy, whatever the evaluator says of it.
    """
    recs = np.asarray(recs, dtype=np.float64)
    classes = np.asarray(classes, dtype=np.int64)
    n = recs.shape[0]
    conv = np.ones(n, dtype=bool) if converged is None else np.asarray(converged).astype(bool)
    members = splits.split(member_split)
    logits = evaluator.logits(recs)
    k = min(5, logits.shape[1])
    top5 = np.argsort(-logits, axis=1)[:, :k]
    correct = (evaluator.predict(recs) == classes) & conv
    correct5 = np.any(top5 == classes[:, None], axis=1) & conv
    feats = evaluator.features(recs)
    mem_feats = evaluator.features(members.X)
    knn = knn_distances(feats, classes, mem_feats, members.y)
    nearest = nearest_pixel(recs, classes, members.X, members.y)
    ok = np.all(np.isfinite(nearest.reshape(n, -1)), axis=1)
    sim = np.full(n, np.nan)
    psnr = np.full(n, np.nan)
    mse = np.full(n, np.nan)
    is_image = recs.ndim == 4
    if ok.any():
        s, p, m, is_image = pixel_similarity(recs[ok], nearest[ok])
        sim[ok], psnr[ok], mse[ok] = s, p, m
    finite_psnr = np.where(np.isfinite(psnr), psnr, 100.0)
    similar = (sim > similarity_threshold) & ok
    what = "SSIM" if is_image else "cosine similarity"

    def by_class(values: F64, higher_is_worse: bool, description: str, rate: bool = False) -> Metric:
        return class_metric(
            values,
            classes,
            n_boot=n_boot,
            seed=seed,
            higher_is_worse=higher_is_worse,
            description=description + " (95% CI resampling classes)",
            rate=rate,
        )

    metrics = {
        "attack_accuracy": by_class(
            correct.astype(float),
            True,
            "top-1 accuracy of the independent evaluation classifier on the reconstructions",
            rate=True,
        ),
        "attack_accuracy_top5": by_class(
            correct5.astype(float),
            True,
            "top-5 accuracy of the independent evaluation classifier on the reconstructions",
            rate=True,
        ),
        "knn_distance": by_class(
            knn,
            False,
            "mean squared L2 distance in the evaluator's feature space to the nearest private member of the "
            "class (lower = closer)",
        ),
        "ssim": by_class(sim, True, f"{what} to the nearest private member (pixel space)"),
        "psnr": by_class(np.where(ok, finite_psnr, np.nan), True, "PSNR in dB to the nearest private member"),
        "mse": by_class(mse, False, "pixel MSE to the nearest private member"),
        "similarity_rate": by_class(
            similar.astype(float),
            True,
            f"M1: fraction of reconstructions whose nearest-private {what} exceeds {similarity_threshold:g}",
            rate=True,
        ),
    }
    rows: list[dict[str, Any]] = []
    for c in np.unique(classes):
        ix = classes == c
        rows.append(
            {
                "class": int(c),
                "reconstructions": int(ix.sum()),
                "converged": int(conv[ix].sum()),
                "attack_accuracy": float(correct[ix].mean()),
                "attack_accuracy_top5": float(correct5[ix].mean()),
                "knn_distance": float(np.nanmean(knn[ix])) if np.isfinite(knn[ix]).any() else float("nan"),
                "ssim": float(np.nanmean(sim[ix])) if np.isfinite(sim[ix]).any() else float("nan"),
                "psnr": float(np.mean(finite_psnr[ix])),
                "mse": float(np.nanmean(mse[ix])) if np.isfinite(mse[ix]).any() else float("nan"),
                "similarity_rate": float(similar[ix].mean()),
            }
        )
    return InversionScores(metrics, rows, nearest, correct, knn, feats)


def prior_baseline(splits: Splits, classes: NDArray[Any], rng: np.random.Generator) -> F64:
    """What an attacker knows with no model at all, one image per entry of ``classes``.

    The public class mean where the public data holds the class, else a random public record
    (the attacker has nothing better for a class it has never seen).
    """
    pub = splits.public
    out = np.zeros((len(classes), *pub.X.shape[1:]))
    for i, c in enumerate(np.asarray(classes)):
        own = pub.X[pub.y == c]
        out[i] = own.mean(axis=0) if own.shape[0] else pub.X[rng.integers(0, pub.X.shape[0])]
    return out


def mean_ci(values: NDArray[Any], n_boot: int, seed: int) -> tuple[float | None, float | None]:
    from invguard.metrics.stats import bootstrap_metric

    m = bootstrap_metric(np.mean, np.asarray(values, dtype=np.float64), n_boot=n_boot, seed=seed)
    return m.low, m.high


def renamed(m: Metric, what: str) -> Metric:
    return Metric(
        m.value, m.low, m.high, m.higher_is_worse, f"evaluator top-1 accuracy of the {what} baseline"
    )


def baseline_row(name: str, s: InversionScores, queries: int) -> dict[str, Any]:
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
