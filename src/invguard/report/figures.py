"""Figures for the HTML report, drawn with matplotlib's Agg backend and embedded as base64 PNG.

Each function takes the JSON form of a result (never live objects) and returns a ``data:`` URI, or
None when the result holds nothing to draw.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _uri(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _array(entry: dict[str, Any], name: str) -> np.ndarray | None:
    a = entry.get("arrays", {}).get(name)
    if a is None:
        return None
    data = np.asarray(
        [np.nan if v is None else v for v in np.ravel(np.asarray(a["data"], dtype=object))], dtype=np.float64
    )
    return data.reshape(a["shape"]) if data.size else None


def _as_images(a: np.ndarray) -> np.ndarray | None:
    """Images from ``(n, 1, H, W)``, ``(n, H, W)`` or ``(n, 3, H, W)`` arrays; None for tabular data."""
    if a.ndim == 4 and a.shape[1] == 1:
        return a[:, 0]
    if a.ndim == 4 and a.shape[1] == 3:
        return np.transpose(a, (0, 2, 3, 1))
    if a.ndim == 3:
        return a
    return None


def grid_selection(entry: dict[str, Any], max_items: int = 10) -> tuple[list[int], str]:
    """Which reconstructions the grid shows (the first of each class, classes in order, at most
    ``max_items``) and a caption saying so."""
    rec = entry.get("arrays", {}).get("reconstructions")
    n = int(rec["shape"][0]) if rec and rec.get("shape") else 0
    classes = _array(entry, "reconstruction_classes")
    if classes is None or classes.shape[0] != n:
        pick = list(range(min(n, max_items)))
        return pick, f"reconstructions 1-{len(pick)} of {n}"
    first: dict[int, int] = {}
    for i, c in enumerate(classes.astype(int).tolist()):
        first.setdefault(c, i)
    order = sorted(first)
    shown = order[:max_items]
    pick = [first[c] for c in shown]
    per = n // max(1, len(order))
    what = "one reconstruction per class" + (f" (of {per} per class)" if per > 1 else "")
    if len(shown) == len(order):
        span = f"all {len(order)} classes"
    else:
        span = f"classes {', '.join(map(str, shown))} of {len(order)} (the rest are in results.json)"
    return pick, f"{what}, {span}"


def reconstruction_grid(entry: dict[str, Any], max_items: int = 10) -> str | None:
    """Reconstructions (top row) beside the nearest private training member of each (bottom row), or
    beside the true input each was matched to where the result has ``true_inputs``."""
    rec = _array(entry, "reconstructions")
    if rec is None:
        return None
    imgs = _as_images(rec)
    if imgs is None:
        return None
    truth = _array(entry, "true_inputs")  # gradient leakage: the client input each reconstruction matches
    near = truth if truth is not None else _array(entry, "nearest_private")
    near_imgs = None if near is None else _as_images(near)
    classes = _array(entry, "reconstruction_classes")
    pick, _ = grid_selection(entry, max_items)
    imgs = imgs[pick]
    if near_imgs is not None and near_imgs.shape[0] == rec.shape[0]:
        near_imgs = near_imgs[pick]
    if classes is not None and classes.shape[0] == rec.shape[0]:
        classes = classes[pick]
    n = len(pick)
    rows = 2 if near_imgs is not None else 1
    plt = _plt()
    fig, axes = plt.subplots(rows, n, figsize=(1.15 * n, 1.35 * rows + 0.2), squeeze=False)
    for i in range(n):
        label = f"class {int(classes[i])}" if classes is not None and i < classes.shape[0] else f"#{i}"
        ax = axes[0][i]
        ax.imshow(np.clip(imgs[i], 0, 1), cmap="gray", vmin=0, vmax=1)
        ax.set_title(label, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        if near_imgs is not None:
            ax2 = axes[1][i]
            if i < near_imgs.shape[0]:
                ax2.imshow(np.clip(near_imgs[i], 0, 1), cmap="gray", vmin=0, vmax=1)
            ax2.set_xticks([])
            ax2.set_yticks([])
    axes[0][0].set_ylabel("attack", fontsize=8)
    if near_imgs is not None:
        axes[1][0].set_ylabel("true\ninput" if truth is not None else "nearest\nprivate", fontsize=8)
    fig.tight_layout()
    return _uri(fig)


def roc_curve(entry: dict[str, Any]) -> str | None:
    """The attack's ROC curve on log-log axes (the low-FPR regime is what matters; Carlini et al. 2022)."""
    fpr, tpr = _array(entry, "roc_fpr"), _array(entry, "roc_tpr")
    if fpr is None or tpr is None or fpr.shape != tpr.shape or fpr.size < 2:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    floor = 1e-4
    pos = fpr > 0
    ax.loglog(
        np.maximum(fpr[pos], floor),
        np.maximum(tpr[pos], floor),
        color="#c0392b",
        lw=1.8,
        label=entry.get("attack", "attack"),
    )
    grid = np.logspace(-4, 0, 50)
    ax.loglog(grid, grid, ls="--", color="#7f8c8d", lw=1, label="chance")
    ax.set_xlim(floor, 1)
    ax.set_ylim(floor, 1.05)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    auc = entry.get("metrics", {}).get("auc", {}).get("value")
    ax.set_title("ROC (log-log)" + (f", AUC {auc:.3f}" if isinstance(auc, (int, float)) else ""), fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(True, which="both", alpha=0.25)
    fig.tight_layout()
    return _uri(fig)


def _sweep_metric(rows: list[dict[str, Any]], gates: list[dict[str, Any]] | None = None) -> str | None:
    """The metric a sweep is drawn with: the one gated for that attack, else a conventional one."""
    attacks = {r.get("attack") for r in rows}
    for g in gates or []:
        if g.get("attack") in attacks and any(g.get("metric") in r.get("metrics", {}) for r in rows):
            return str(g["metric"])
    for name in ("attack_accuracy", "tpr_at_fpr_0.01", "auc", "advantage"):
        if any(name in r.get("metrics", {}) for r in rows):
            return name
    for r in rows:
        if r.get("metrics"):
            return str(next(iter(r["metrics"])))
    return None


def sweep_chart(sweep: dict[str, Any], gates: list[dict[str, Any]]) -> str | None:
    """Leakage (with 95% CI) and utility per exposure, least restrictive first, with the gate lines."""
    rows = sweep.get("rows", [])
    exposures = [e["exposure"] for e in sweep.get("exposures", [])]
    if not rows or not exposures:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.25 * len(exposures) + 2), 3.8))
    x = np.arange(len(exposures))
    colours = ["#c0392b", "#8e44ad", "#d35400", "#16a085", "#2c3e50"]
    for k, attack in enumerate(sweep.get("attacks", [])):
        mine = [r for r in rows if r["attack"] == attack]
        metric = _sweep_metric(mine, gates)
        if metric is None:
            continue
        vals, lo, hi = [], [], []
        for e in exposures:
            r = next((r for r in mine if r["exposure"] == e), None)
            m = None if r is None else r.get("metrics", {}).get(metric)
            v = np.nan if m is None or m.get("value") is None else float(m["value"])
            vals.append(v)
            lo.append(v - m["low"] if m is not None and m.get("low") is not None else 0.0)
            hi.append(m["high"] - v if m is not None and m.get("high") is not None else 0.0)
        c = colours[k % len(colours)]
        ax.errorbar(
            x,
            vals,
            yerr=[np.nan_to_num(lo), np.nan_to_num(hi)],
            marker="o",
            color=c,
            capsize=3,
            label=f"{attack}: {metric}",
        )
        for g in gates:
            if g.get("attack") == attack and g.get("metric") == metric:
                ax.axhline(g["threshold"], color=c, ls=":", lw=1)
                # x in axes coordinates, so the label sits inside the plot's right edge
                ax.text(
                    0.99,
                    g["threshold"],
                    f"gate {g['op']} {g['threshold']:g}",
                    color=c,
                    fontsize=7,
                    va="bottom",
                    ha="right",
                    transform=ax.get_yaxis_transform(),
                )
    util = [e.get("utility") for e in sweep.get("exposures", [])]
    if any(u is not None for u in util):
        ax.plot(
            x,
            [np.nan if u is None else u for u in util],
            marker="s",
            color="#2980b9",
            ls="--",
            label="utility (held-out accuracy)",
        )
    rec = (sweep.get("recommended") or {}).get("exposure")
    if rec in exposures:
        ax.axvspan(
            exposures.index(rec) - 0.3,
            exposures.index(rec) + 0.3,
            color="#27ae60",
            alpha=0.15,
            label="recommended",
        )
    import textwrap

    ax.set_xticks(x)
    ax.set_xticklabels([textwrap.fill(str(e), 14) for e in exposures], rotation=0, ha="center", fontsize=7)
    ax.set_ylim(min(-0.02, ax.get_ylim()[0]), max(1.05, ax.get_ylim()[1]))
    ax.set_xlabel("exposure (least restrictive first)")
    ax.set_title("What each exposure leaks, and what it costs", fontsize=10)
    ax.legend(fontsize=7, loc="best")
    ax.grid(True, alpha=0.25)
    fig.tight_layout()
    return _uri(fig)


def table_sweep_chart(table: list[dict[str, Any]]) -> str | None:
    """An attack's own ``exposure_sweep`` table (rows of exposure, attack_accuracy {value, low, high},
    utility): drawn the same way as the audit's sweep."""
    if not table or not all(isinstance(r, dict) and "exposure" in r for r in table):
        return None
    rows, exposures = [], []
    for r in table:
        exposures.append({"exposure": str(r["exposure"]), "utility": r.get("utility")})
        acc = r.get("attack_accuracy")
        m = acc if isinstance(acc, dict) else ({"value": acc} if isinstance(acc, (int, float)) else None)
        rows.append(
            {
                "exposure": str(r["exposure"]),
                "attack": "attack",
                "metrics": {} if m is None else {"attack_accuracy": m},
            }
        )
    return sweep_chart({"rows": rows, "exposures": exposures, "attacks": ["attack"]}, [])
