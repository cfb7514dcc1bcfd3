"""The judge of gradient leakage: reconstructed client inputs against the true ones.

The federated setting has ground truth: the simulation knows which records were behind each
update. Per update, reconstructions are matched to the true records by an optimal assignment on
pixel MSE (Hungarian algorithm, ``scipy.optimize.linear_sum_assignment``: a batch comes back in no
particular order), then scored with PSNR, SSIM (cosine similarity for vectors) and MSE; labels by
the multiset overlap of recovered and true labels; recognisability by the independent evaluator
(:func:`invguard.models.evaluator.build_evaluator`, trained on the evaluation split only; a
reconstruction is credited when it names the record's true class). Beside them, the no-model
baseline: the public mean image scored against the same records, so that an SSIM means something
(8x8 digits are similar to their mean). Every number has a 95% CI that resamples *updates* (the
cluster bootstrap over rounds and clients: the records of one update share one optimisation), and
the lift over the baseline is paired by update. The M5 raw-access count of the observed rounds is
reported as ``raw_accesses``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from invguard.attacks.gradient.common import GradientEvidence
from invguard.core.result import Finding, Metric
from invguard.core.run import AttackOutput, Case
from invguard.judges.registry import register_judge
from invguard.metrics.inversion import class_metric, paired_class_difference, pixel_similarity
from invguard.models.evaluator import build_evaluator

MAX_SHOWN = 16


def match(recs: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Index into ``recs`` for each true record: the assignment of least total pixel MSE."""
    from scipy.optimize import linear_sum_assignment

    a = recs.reshape(recs.shape[0], -1)
    b = truth.reshape(truth.shape[0], -1)
    cost = ((b[:, None, :] - a[None, :, :]) ** 2).mean(axis=2)
    rows, cols = linear_sum_assignment(cost)
    out = np.empty(truth.shape[0], dtype=np.int64)
    out[rows] = cols
    return out


def label_overlap(recovered: np.ndarray, true: np.ndarray) -> int:
    """How many true labels the recovered multiset accounts for (order-free)."""
    r = np.bincount(
        np.asarray(recovered, dtype=np.int64), minlength=int(max(true.max(), recovered.max(initial=0)) + 1)
    )
    t = np.bincount(np.asarray(true, dtype=np.int64), minlength=r.size)
    return int(np.minimum(r[: t.size], t).sum())


@register_judge(GradientEvidence)
def judge_gradient(ev: GradientEvidence, case: Case) -> AttackOutput:
    data = case.data
    pool = data.split(ev.pool) if hasattr(data, "split") else None
    n_obs = len(ev.observations)
    raw = Metric(
        float(ev.raw_accesses),
        higher_is_worse=True,
        description="M5: reads of an individual client's raw update during the observed rounds "
        f"({', '.join(f'{k}: {v}' for k, v in sorted(ev.access_by_who.items())) or 'none'})",
    )
    out = AttackOutput(metrics={"raw_accesses": raw}, info={"setup_json": ev.setup})
    if pool is None or any(t is None for t in ev.truth):
        shown = [r for r in ev.reconstructions if r is not None]
        if shown:
            out.arrays["reconstructions"] = np.concatenate(shown)[:MAX_SHOWN]
        labels = np.concatenate(ev.labels) if ev.labels else np.zeros(0)
        out.tables["per_update"] = [
            {**o, "labels": ev.labels[i].tolist()} for i, o in enumerate(ev.observations)
        ]
        out.findings.append(
            Finding(
                "No ground truth for the observed updates",
                f"{n_obs} updates came from a live deployment: the reconstructions and the {labels.size} "
                "recovered labels are shown but cannot be scored; audit a simulation of the same setup "
                "for numbers.",
            )
        )
        return out
    ids: list[int] = []
    lab_rows: list[float] = []
    rows: list[dict[str, Any]] = []
    recs_all, true_all, true_y = [], [], []
    for i in range(n_obs):
        t_ix = np.asarray(ev.truth[i], dtype=np.int64)
        X_t, y_t = pool.X[t_ix].astype(np.float64), pool.y[t_ix]
        lab_ok = label_overlap(ev.labels[i], y_t) / len(y_t)
        lab_rows.append(lab_ok)
        row: dict[str, Any] = {
            "round": ev.observations[i].get("round"),
            "clients": ev.observations[i].get("clients"),
            "records": len(t_ix),
            "label_accuracy": lab_ok,
        }
        rec = ev.reconstructions[i]
        if rec is not None:
            m = match(rec, X_t)
            recs_all.append(rec[m])
            true_all.append(X_t)
            true_y.append(y_t)
            ids.extend([i] * len(t_ix))
        rows.append(row)
    obs_ids = np.arange(n_obs)
    out.metrics["label_accuracy"] = class_metric(
        np.asarray(lab_rows),
        obs_ids,
        n_boot=1000,
        seed=case.seed,
        description="fraction of the true labels recovered per update (multiset overlap; "
        "95% CI resampling updates)",
        rate=True,
    )
    out.tables["per_update"] = rows
    if not recs_all:
        return out
    recs = np.concatenate(recs_all)
    truth = np.concatenate(true_all)
    ys = np.concatenate(true_y)
    cluster = np.asarray(ids)
    sim, psnr, mse, is_image = pixel_similarity(recs, truth)
    psnr = np.where(np.isfinite(psnr), psnr, 100.0)
    public = data.public
    mean_img = np.broadcast_to(public.X.mean(axis=0), truth.shape).astype(np.float64)
    b_sim, b_psnr, _b_mse, _ = pixel_similarity(mean_img, truth)
    b_psnr = np.where(np.isfinite(b_psnr), b_psnr, 100.0)
    what = "SSIM" if is_image else "cosine similarity"

    def by_update(
        v: np.ndarray, description: str, higher_is_worse: bool = True, rate: bool = False
    ) -> Metric:
        return class_metric(
            v,
            cluster,
            n_boot=1000,
            seed=case.seed,
            higher_is_worse=higher_is_worse,
            description=description + " (95% CI resampling updates over rounds and clients)",
            rate=rate,
        )

    out.metrics.update(
        {
            "ssim": by_update(
                sim, f"{what} of each reconstruction to its true client input (optimal matching)"
            ),
            "psnr": by_update(
                psnr, "PSNR in dB of each reconstruction to its true client input (capped at 100)"
            ),
            "mse": by_update(
                mse, "pixel MSE of each reconstruction to its true client input", higher_is_worse=False
            ),
            "baseline_ssim": by_update(
                b_sim, f"no-model baseline: {what} of the public mean image to the same inputs"
            ),
            "baseline_psnr": by_update(
                b_psnr, "no-model baseline: PSNR of the public mean image to the same inputs"
            ),
        }
    )
    lift, p = paired_class_difference(
        sim,
        b_sim,
        cluster,
        n_boot=1000,
        seed=case.seed,
        description=f"{what} of the reconstructions minus the public mean image's, on the same inputs "
        "(paired by update; 95% CI resampling updates)",
    )
    out.metrics["ssim_lift"] = lift
    evaluator_note = ""
    try:
        evaluator = build_evaluator(
            data,
            cache_dir=case.ctx.cache_dir,
            seed=case.seed,
            epochs=int(getattr(case.attack, "evaluator_epochs", 30)),
        )
        credited = (evaluator.predict(recs) == ys).astype(float)
        base_credit = (evaluator.predict(public.X.mean(axis=0, keepdims=True))[0] == ys).astype(float)
        out.metrics["evaluator_top1"] = by_update(
            credited,
            "top-1 of the independent evaluator on the reconstructions "
            "(credited when it names the true class)",
            rate=True,
        )
        out.metrics["baseline_evaluator_top1"] = by_update(
            base_credit, "no-model baseline: the evaluator's top-1 on the public mean image", rate=True
        )
        out.info["evaluator"] = {"arch": evaluator.arch, "holdout_accuracy": evaluator.holdout_accuracy}
        if evaluator.holdout_accuracy < 0.8:
            out.findings.append(
                Finding(
                    "Weak evaluator",
                    f"The independent evaluator reaches {evaluator.holdout_accuracy:.2f} held-out accuracy "
                    "(below "
                    "0.8): its top-1 on the reconstructions understates what a person would recognise.",
                    "low",
                )
            )
    except Exception as e:  # an evaluator that cannot be trained on these splits is said, not hidden
        evaluator_note = f"{type(e).__name__}: {e}"
        out.info["evaluator"] = {"error": evaluator_note}
    for i, row in enumerate(rows):
        sel = cluster == i
        if sel.any():
            row.update(
                ssim=float(sim[sel].mean()),
                psnr=float(psnr[sel].mean()),
                baseline_ssim=float(b_sim[sel].mean()),
                seconds=ev.seconds_per_update[i] if i < len(ev.seconds_per_update) else None,
            )
    k = min(MAX_SHOWN, recs.shape[0])
    out.arrays.update(
        reconstructions=recs[:k],
        true_inputs=truth[:k],
        reconstruction_classes=ys[:k].astype(np.float64),
    )
    leak = lift.low is not None and lift.low > 0
    setup = ev.info.get("setup", "")
    if leak:
        sev = "high" if out.metrics["ssim"].value >= 0.6 else "medium"
        out.findings.insert(
            0,
            Finding(
                "Clients' training inputs are reconstructed from the updates the attacker sees",
                f"Mean {what} {out.metrics['ssim']:.2f} to the true inputs against "
                f"{out.metrics['baseline_ssim']:.2f} "
                f"for the public mean image (lift {lift:.2f}, p = {p:.3g}); labels recovered "
                f"{out.metrics['label_accuracy']:.2f}. Setting: {setup}.",
                sev,
            ),
        )
    else:
        out.findings.insert(
            0,
            Finding(
                "No reconstruction beyond the no-model baseline",
                f"Mean {what} {out.metrics['ssim']:.2f} against {out.metrics['baseline_ssim']:.2f} "
                "for the public "
                f"mean image (lift {lift:.2f}; its CI reaches 0 or below). Setting: {setup}.",
            ),
        )
    ev_top1, ev_base = out.metrics.get("evaluator_top1"), out.metrics.get("baseline_evaluator_top1")
    if (
        not leak
        and ev_top1 is not None
        and ev_base is not None
        and ev_top1.low is not None
        and ev_base.high is not None
        and ev_top1.low > ev_base.high
    ):
        out.findings.append(
            Finding(
                "Class content leaks, individual inputs do not",
                "The reconstructions are no closer to the clients' own inputs than the public mean image, "
                f"but the independent evaluator names their true classes {ev_top1:.2f} of the time "
                f"(public mean image: {ev_base:.2f}): the update reveals which classes the clients hold "
                "and what they look like on average.",
                "medium",
            )
        )
    if evaluator_note:
        out.findings.append(Finding("Evaluator unavailable", evaluator_note, "low"))
    return out
