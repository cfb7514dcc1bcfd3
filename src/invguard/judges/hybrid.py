"""The hybrid judge: what leaked from the records a membership ranking found most exposed.

The headline is measured against the strongest attacker that uses no model, built here from the
public split: for tabular data the better of the marginal guess and imputation (Jayaraman & Evans
2022); for images the better of the public class mean and a public-only inpainting (the hidden
region of the ``neighbours`` public images of the class closest on the visible region, averaged;
Hays & Efros 2007). The same inference on as many random candidates is the control. A leak is
"high" only when the model beats that baseline on the top records *and* the ranking is what found
them (top beats control by a two-sample bootstrap, members among the top beat their base rate by
Wilson's lower bound); "medium" when the model beats public data but not through the ranking.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from invguard.attacks.attribute.baseline import SensitiveColumn, baseline_guess, correct_array
from invguard.core.evidence import ExposedAttributes, ExposedRegions, RankedCandidates
from invguard.core.result import Finding, Metric
from invguard.core.run import AttackOutput, Case
from invguard.judges.attribute import advantage_metric, strongest_baseline
from invguard.judges.membership import run_seed_draw
from invguard.judges.registry import register_judge
from invguard.metrics.stats import bootstrap_metric, proportion_metric

__all__ = ["judge_exposed_attributes", "judge_exposed_regions", "public_inpainting"]


def _ranking(ev: RankedCandidates) -> tuple[dict[str, Metric], bool]:
    """The membership ranking's own metrics, and whether it picks members beyond their base rate."""
    k = ev.top.size
    precision = proportion_metric(
        int(ev.is_member[ev.top].sum()), k, description="share of the top-ranked records that are members"
    )
    base_rate = float(np.mean(ev.is_member))
    base = {
        "top_precision": precision,
        "member_base_rate": Metric(
            base_rate, description="share of members among all candidates (what a random pick gets)"
        ),
        "membership_auc": ev.membership_metrics.get("auc", Metric(float("nan"))),
    }
    return base, precision.low is not None and precision.low > base_rate


def _row(ev: RankedCandidates, r: int, i: int) -> dict[str, Any]:
    return {
        "rank": r + 1,
        "index": int(ev.indices[i]),
        "class": int(ev.labels[i]),
        "membership_score": float(ev.scores[i]),
        "is_member": int(ev.is_member[i]),
    }


@register_judge(ExposedAttributes)
def judge_exposed_attributes(ev: ExposedAttributes, case: Case) -> AttackOutput:
    seed = run_seed_draw(case.seed)
    base, ranked = _ranking(ev)
    col: SensitiveColumn = ev.column
    pub = case.data.public
    X, y, truth, guess = ev.X, ev.y, ev.truth, ev.guess
    guesses = {m: baseline_guess(m, col, pub, X, y, seed) for m in ("marginal", "imputation")}
    strongest = strongest_baseline(truth, guesses)
    k = ev.top.size
    c = correct_array(guess, truth)
    b = correct_array(guesses[strongest], truth)
    nb = int(case.attack.n_boot)
    metrics = {
        "accuracy": bootstrap_metric(
            np.mean, c[:k], n_boot=nb, seed=seed, description="MAP accuracy, top records"
        ),
        "baseline_accuracy": bootstrap_metric(
            np.mean,
            b[:k],
            n_boot=nb,
            seed=seed,
            description=f"{strongest} baseline (the stronger no-model attacker), top records",
        ),
        "advantage": advantage_metric(
            c[:k], b[:k], nb, seed, f"accuracy minus the {strongest} baseline's, top records"
        ),
        "control_advantage": advantage_metric(
            c[k:], b[k:], nb, seed, "the same on random candidates (control)"
        ),
        "top_vs_control": difference_metric(
            c[:k] - b[:k],
            c[k:] - b[k:],
            nb,
            seed,
            "advantage on the top records minus on the random control (> 0: the ranking finds the "
            "records that leak)",
        ),
    }
    table = [
        {
            **_row(ev, r, i),
            "true_value": col.labels[int(truth[r])],
            "inferred_value": col.labels[int(guess[r])],
            "leaked": bool(c[r]),
        }
        for r, i in enumerate(ev.top)
    ]
    adv = metrics["advantage"]
    leak = adv.low is not None and adv.low > 0
    findings = [
        Finding(
            f"{col.name} of the most exposed records",
            f"Of the {k} records membership inference ranks most exposed "
            f"({int(ev.is_member[ev.top].sum())} truly members), the model gives away {col.name} for "
            f"{int(c[:k].sum())}: advantage {adv:.3f} over the {strongest} guess (the stronger attacker "
            f"without the model); on random candidates {metrics['control_advantage']:.3f}. "
            + _verdict(leak, ranked, metrics["top_vs_control"]),
            _severity(leak, ranked, metrics["top_vs_control"]),
        )
    ]
    return AttackOutput(
        metrics={**base, **metrics},
        tables={"records": table},
        findings=findings,
        info={"sensitive": col.name, "baseline": strongest},
    )


@register_judge(ExposedRegions)
def judge_exposed_regions(ev: ExposedRegions, case: Case) -> AttackOutput:
    seed = run_seed_draw(case.seed)
    base, ranked = _ranking(ev)
    attack = case.attack
    pub = case.data.public
    X, y, mask, recon = ev.X, ev.y, ev.mask, ev.reconstructions
    means = np.stack(
        [
            pub.X[pub.y == c].mean(0) if np.any(pub.y == c) else pub.X.mean(0)
            for c in range(case.target.num_classes)
        ]
    )
    init = means[y]
    hidden = mask.astype(bool)
    inpaint = public_inpainting(pub.X, pub.y, X * (1 - mask), y, mask, attack.neighbours)
    err = ((recon - X) ** 2)[:, hidden].mean(1)
    mean_err = ((init - X) ** 2)[:, hidden].mean(1)
    nn_err = ((inpaint - X) ** 2)[:, hidden].mean(1)
    # the stronger no-model attacker on these records (lower hidden-region MSE overall)
    strongest = "public inpainting" if nn_err.mean() <= mean_err.mean() else "public class mean"
    base_err = nn_err if strongest == "public inpainting" else mean_err
    k = ev.top.size
    nb = int(attack.n_boot)

    def mse(v: np.ndarray, d: str) -> Metric:
        return bootstrap_metric(np.mean, v, n_boot=nb, seed=seed, higher_is_worse=False, description=d)

    metrics = {
        "reconstruction_mse": mse(err[:k], "MSE of the hidden region, top records"),
        "baseline_mse": mse(
            base_err[:k], f"MSE of the {strongest} (the stronger no-model attacker) on the hidden region"
        ),
        "class_mean_mse": mse(mean_err[:k], "MSE of the public class mean on the hidden region"),
        "inpainting_mse": mse(
            nn_err[:k],
            f"MSE of the mean hidden region of the {attack.neighbours} public images of the class closest "
            "on the visible region",
        ),
        "improvement": advantage_metric(
            base_err[:k],
            err[:k],
            nb,
            seed,
            f"{strongest} MSE minus inversion MSE, top records (> 0: the model leaks beyond public data)",
        ),
        "improvement_over_class_mean": advantage_metric(
            mean_err[:k], err[:k], nb, seed, "public class mean MSE minus inversion MSE, top records"
        ),
        "improvement_over_inpainting": advantage_metric(
            nn_err[:k], err[:k], nb, seed, "public inpainting MSE minus inversion MSE, top records"
        ),
        "control_improvement": advantage_metric(
            base_err[k:], err[k:], nb, seed, "the same on random candidates (control)"
        ),
        "top_vs_control": difference_metric(
            base_err[:k] - err[:k],
            base_err[k:] - err[k:],
            nb,
            seed,
            "improvement on the top records minus on the random control (> 0: the ranking finds the "
            "records that leak)",
        ),
    }
    table = [
        {
            **_row(ev, r, i),
            "hidden_mse": float(err[r]),
            "baseline_mse": float(base_err[r]),
            "class_mean_mse": float(mean_err[r]),
            "inpainting_mse": float(nn_err[r]),
            "leaked": bool(err[r] < base_err[r]),
        }
        for r, i in enumerate(ev.top)
    ]
    imp = metrics["improvement"]
    leak = imp.low is not None and imp.low > 0
    findings = [
        Finding(
            "Hidden regions of the most exposed images",
            f"Seeded inversion fills the hidden {attack.mask.replace('_', ' ')} of the {k} most exposed "
            f"records with MSE {metrics['reconstruction_mse']:.4f} vs "
            f"{metrics['baseline_mse']:.4f} for the {strongest} (the stronger attacker without the "
            f"model; public class mean {metrics['class_mean_mse']:.4f}): improvement {imp:.4f}; "
            f"on random candidates {metrics['control_improvement']:.4f}. "
            + _verdict(leak, ranked, metrics["top_vs_control"]),
            _severity(leak, ranked, metrics["top_vs_control"]),
        )
    ]
    return AttackOutput(
        metrics={**base, **metrics},
        arrays={"originals": X[:k], "reconstructions": recon[:k], "mask": mask},
        tables={"records": table},
        findings=findings,
        info={"baseline": strongest},
    )


def public_inpainting(
    pub_X: np.ndarray, pub_y: np.ndarray, known: np.ndarray, y: np.ndarray, mask: np.ndarray, neighbours: int
) -> np.ndarray:
    """A no-model attacker: per record, average the ``neighbours`` public images of its class closest
    on the visible region (squared L2) and take their hidden region; the visible part is kept."""
    vis = (1 - mask).astype(bool)
    out = np.array(known, dtype=np.float64)
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        pool = pub_X[pub_y == c] if np.any(pub_y == c) else pub_X
        a = known[rows][:, vis].astype(np.float64)
        b = pool[:, vis].astype(np.float64)
        d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
        near = np.argsort(d, axis=1, kind="stable")[:, : min(neighbours, pool.shape[0])]
        fill = pool[near].mean(axis=1)
        out[rows] = out[rows] * (1 - mask) + fill * mask
    return out


def difference_metric(
    top: np.ndarray, control: np.ndarray, n_boot: int, seed: int, description: str
) -> Metric:
    """Mean of ``top`` minus mean of ``control`` (independent samples, each resampled on its own)."""
    values = np.r_[top, control]
    group = np.r_[np.ones(top.size, np.int64), np.zeros(control.size, np.int64)]
    return bootstrap_metric(
        lambda v, g: float(np.mean(v[g == 1]) - np.mean(v[g == 0])),
        values,
        group,
        n_boot=n_boot,
        seed=seed,
        stratify=list(group),
        description=description,
    )


def _severity(leak: bool, ranked: bool, top_vs_control: Metric) -> str:
    targeted = ranked and top_vs_control.low is not None and top_vs_control.low > 0
    return "high" if leak and targeted else "medium" if leak else "info"


def _verdict(leak: bool, ranked: bool, top_vs_control: Metric) -> str:
    if not leak:
        return "No leak beyond what public data gives an attacker without the model."
    why = []
    if not ranked:
        why.append("the top records are not members more often than a random pick")
    if top_vs_control.low is None or top_vs_control.low <= 0:
        why.append(f"they leak no more than random candidates (difference {top_vs_control:.4f})")
    if why:
        return "The model leaks beyond public data, but the membership ranking does not pick the exposed " + (
            "records: " + "; ".join(why) + "."
        )
    return (
        f"The membership ranking finds the records that leak: they beat the random control by "
        f"{top_vs_control:.4f} and are members more often than chance."
    )
