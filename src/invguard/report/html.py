"""The HTML report: one self-contained file (inline CSS, figures as base64 PNG, no scripts).

It renders whatever a results document holds — every metric with its CI, every table, every array
(by shape) — and adds special views where the conventional keys exist: reconstruction grids beside
the nearest private members (``reconstructions``, ``reconstruction_classes``, ``nearest_private``),
ROC curves on log-log axes (``roc_fpr``, ``roc_tpr``), the exposure sweep chart and the
recommended policy.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from invguard.report import figures

_MAX_TABLE_ROWS = 40
_SPECIAL_ARRAYS = {
    "reconstructions",
    "reconstruction_classes",
    "nearest_private",
    "true_inputs",
    "roc_fpr",
    "roc_tpr",
}


def fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "—"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        if x != x:
            return "—"
        return f"{x:.{digits}g}" if abs(x) < 1e-3 and x != 0 else f"{x:.{digits}f}"
    if isinstance(x, dict) and "value" in x:
        return fmt_metric(x)
    if isinstance(x, (list, dict)):
        s = json.dumps(x)
        return s if len(s) <= 80 else s[:77] + "..."
    return str(x)


def fmt_metric(m: dict[str, Any] | None) -> str:
    if m is None:
        return "—"
    v = fmt(m.get("value"))
    if m.get("low") is None or m.get("high") is None:
        return v
    return f"{v} [{fmt(m['low'])}, {fmt(m['high'])}]"


def _pct(x: float) -> str:
    return f"{100 * x:g}%"


def metric_meaning(name: str, description: str = "") -> str:
    """What a metric says about the model's training data, in a reader's words."""
    if name.startswith("tpr_at_fpr_"):
        try:
            alpha = _pct(float(name.rsplit("_", 1)[1]))
        except ValueError:
            alpha = name.rsplit("_", 1)[1]
        return (
            f"The share of the training records an attacker can pick out while wrongly accusing only "
            f"{alpha} of people who were not in the training set."
        )
    meanings = {
        "lift_over_prior": "How much better the attack's reconstructions are recognised than what public "
        "data alone gives: what the model gives away about each class beyond public knowledge "
        "(0 = nothing).",
        "attack_accuracy": "The share of the attack's reconstructions that an independent classifier "
        "recognises as the intended class: how recognisable the private classes become.",
        "auc": "How well the attack separates training records from others, over every threshold "
        "(0.5 = a coin toss, 1 = perfectly).",
        "advantage": "The best gap between members caught and non-members falsely accused (TPR - FPR): "
        "0 means membership stays hidden.",
        "balanced_accuracy": "How often the attack's member / non-member call is right, with both "
        "groups weighed equally (0.5 = guessing).",
        "knn_distance": "How close the reconstructions come to a real training record (smaller = closer "
        "to someone's actual data).",
    }
    return meanings.get(name, description)


def verdict_of(results: dict[str, Any]) -> dict[str, Any]:
    """The verdict's status (pass / fail / inconclusive), headline and findings, also for results
    written before the headline existed (schema 1.0)."""
    v = results["verdict"]
    status = v.get("status") or ("pass" if v.get("passed") else "fail")
    return {
        "status": status,
        "word": status.upper(),
        "headline": v.get("headline") or f"{status.upper()}: {v.get('summary', '')}",
        "gates_summary": v.get("gates_summary") or v.get("summary", ""),
        "findings_summary": v.get("findings_summary") or "",
        "findings": list(v.get("findings") or []),
        "incomplete": list(v.get("incomplete") or []),
        "endpoint_changed": v.get("endpoint_changed"),
    }


def recommendation_text(sweep: dict[str, Any] | None) -> str | None:
    """The recommended exposure in one sentence, with its utility cost and the caveat, for every
    report that states it; None when there is no sweep."""
    if not sweep:
        return None
    rec = sweep.get("recommended")
    if not rec:
        return f"No listed exposure passes every gate. {sweep.get('note') or ''}".strip()
    cost = "" if rec.get("utility_cost") is None else f", utility cost {fmt(rec['utility_cost'])}"
    caveat = f" {rec['caveat']}" if rec.get("caveat") else ""
    return f"Recommended exposure: {rec['exposure']} (utility {fmt(rec.get('utility'))}{cost}).{caveat}"


def _when(ts: float | None) -> str:
    if ts is None:
        return "—"
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _table(rows: list[dict[str, Any]]) -> dict[str, Any]:
    cols: list[str] = []
    for r in rows[:_MAX_TABLE_ROWS]:
        for k in r:
            if k not in cols:
                cols.append(k)
    return {
        "columns": cols,
        "rows": [[fmt(r.get(c)) for c in cols] for r in rows[:_MAX_TABLE_ROWS]],
        "more": max(0, len(rows) - _MAX_TABLE_ROWS),
    }


def _delta_class(change: float | None, higher_is_worse: bool = True) -> str:
    """``delta-up`` (red) when a change means more leakage, ``delta-down`` (green) when less."""
    if change is None or change == 0:
        return "muted"
    return "delta-up" if (change > 0) == higher_is_worse else "delta-down"


def _attack_view(a: dict[str, Any], deltas: dict[str, Any]) -> dict[str, Any]:
    d = deltas.get(a["attack"], {}).get(a.get("exposure") or "as deployed", {})
    metrics = [
        {
            "name": k,
            "value": fmt_metric(m),
            "description": m.get("description", ""),
            "direction": "higher is worse" if m.get("higher_is_worse", True) else "higher is better",
            "delta": None if k not in d else d[k]["change"],
            "delta_class": _delta_class(
                None if k not in d else d[k]["change"], m.get("higher_is_worse", True)
            ),
        }
        for k, m in a.get("metrics", {}).items()
    ]
    tables = []
    sweep_fig = None
    for name, rows in a.get("tables", {}).items():
        if not isinstance(rows, list) or not rows:
            continue
        if name == "exposure_sweep":
            sweep_fig = figures.table_sweep_chart(rows)
        tables.append({"name": name, **_table(rows)})
    arrays = [
        {"name": k, "shape": "×".join(str(s) for s in v.get("shape", []))}
        for k, v in a.get("arrays", {}).items()
        if k not in _SPECIAL_ARRAYS
    ]
    ok = a.get("status") == "ok"
    return {
        "id": a.get("job", a["attack"]).replace(":", "-"),
        "attack": a["attack"],
        "exposure": a.get("exposure") or "as deployed",
        "status": a.get("status"),
        "error": a.get("error"),
        "partial": a.get("partial"),
        "traceback": a.get("traceback"),
        "access": a.get("access", "—"),
        "target": a.get("target", ""),
        "params": json.dumps(a.get("params", {}), indent=1, default=str),
        "wall": fmt(a.get("wall_time_s") or a.get("job_wall_time_s")),
        "queries": a.get("queries_used", "—"),
        "metrics": metrics,
        "findings": a.get("findings", []),
        "grid": figures.reconstruction_grid(a) if ok else None,
        "grid_caption": figures.grid_selection(a)[1] if ok else "",
        "has_true_inputs": "true_inputs" in a.get("arrays", {}),
        "roc": figures.roc_curve(a) if ok else None,
        "sweep_fig": sweep_fig,
        "tables": tables,
        "arrays": arrays,
        "info": json.dumps(a.get("info", {}), indent=1, default=str)[:4000],
    }


def context(results: dict[str, Any]) -> dict[str, Any]:
    """Everything the template shows, computed from the results document alone."""
    hist = results.get("history") or {}
    deltas = hist.get("deltas", {}) if isinstance(hist, dict) else {}
    gates = []
    main = {a["attack"]: a for a in results.get("attacks", []) if not a.get("sweep")}
    explained: set[str] = set()
    for g in results.get("gates", []):
        full = f"{g['attack']}.{g['metric']} = "
        msg = str(g["message"])
        why = msg.split(": ", 1)[1] if msg.startswith(full) and ": " in msg else msg
        d = deltas.get(g["attack"], {}).get("as deployed", {}).get(g["metric"])
        desc = (main.get(g["attack"], {}).get("metrics", {}).get(g["metric"]) or {}).get("description", "")
        gates.append(
            {
                **g,
                "meaning": "(as above)" if g["metric"] in explained else metric_meaning(g["metric"], desc),
                "why": why,
                "observed_text": fmt(g.get("observed")),
                "ci": ""
                if g.get("low") is None or g.get("high") is None
                else f"[{fmt(g['low'])}, {fmt(g['high'])}]",
                "delta": None if d is None else d["change"],
                "delta_class": _delta_class(None if d is None else d["change"], g["op"] in ("<=", "<")),
            }
        )
        explained.add(g["metric"])
    attacks = [_attack_view(a, deltas) for a in results.get("attacks", [])]
    sweep = results.get("exposure_sweep")
    sweep_view = None
    if sweep:
        rows = []
        for r in sweep.get("rows", []):
            main_metric = figures._sweep_metric([r], results.get("gates", []))
            rows.append(
                {
                    "exposure": r["exposure"],
                    "access": r.get("access") or "—",
                    "attack": r["attack"]
                    if r.get("attack_used") in (None, r["attack"])
                    else f"{r['attack_used']} (in place of {r['attack']})",
                    "status": r.get("status"),
                    "metric_name": main_metric or "—",
                    "metric": fmt_metric(r.get("metrics", {}).get(main_metric)) if main_metric else "—",
                    "knn": fmt_metric(r.get("knn_distance")),
                    "utility": fmt(r.get("utility")),
                    "agreement": fmt(r.get("argmax_agreement")),
                    "gates": r.get("gates", []),
                }
            )
        sweep_view = {
            "chart": figures.sweep_chart(sweep, results.get("gates", [])),
            "rows": rows,
            "exposures": sweep.get("exposures", []),
            "recommended": sweep.get("recommended"),
            "note": sweep.get("note"),
            "text": recommendation_text(sweep),
        }
    prov = results.get("provenance", {})
    config_text = prov.get("config_text") or _yaml(prov.get("config", {}))
    prev = hist.get("previous") if isinstance(hist, dict) else None
    figs = [
        {
            "attack": a["attack"],
            "kind": "grid",
            "src": a["grid"],
            "caption": a["grid_caption"],
            "bottom": "the client input it was matched to"
            if a["has_true_inputs"]
            else "the nearest private training member of each",
        }
        for a in attacks
        if a["grid"]
    ] + [{"attack": a["attack"], "kind": "roc", "src": a["roc"], "caption": ""} for a in attacks if a["roc"]]
    return {
        "r": results,
        "audit": results["audit"],
        "v": verdict_of(results),
        "figures": figs,
        "verdict": results["verdict"],
        "target": results["target"],
        "data": results.get("data", {}),
        "gates": gates,
        "attacks": attacks,
        "sweep": sweep_view,
        "previous": prev,
        "previous_when": _when(prev.get("finished_at")) if prev else None,
        "when": _when(results["audit"].get("finished_at")),
        "config_text": config_text,
        "prov": prov,
        "packages": prov.get("packages", {}),
        "timings": prov.get("timings", {}),
        "fmt": fmt,
        "fmt_metric": fmt_metric,
    }


def _yaml(doc: Any) -> str:
    import yaml

    return str(yaml.safe_dump(doc, sort_keys=False))


def render(results: dict[str, Any]) -> str:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("invguard.report", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env.get_template("report.html.j2").render(**context(results))


def write(results: dict[str, Any], path: Path) -> Path:
    from invguard.storage import atomic_write

    atomic_write(path, render(results).encode())
    return path
