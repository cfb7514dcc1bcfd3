"""A Markdown summary fit for a pull-request comment: the verdict, the gates, the recommended
exposure and each attack's headline metrics, with the change since the previous run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from invguard.report.html import fmt, fmt_metric

_ICON = {"pass": "✅", "fail": "❌", "error": "⚠️"}


def render(results: dict[str, Any], *, report_link: str | None = None) -> str:
    v = results["verdict"]
    word = "✅ PASS" if v["passed"] else "❌ FAIL"
    lines = [
        f"### {word} — invguard privacy audit of `{results['audit']['name']}`",
        "",
        v["summary"],
        "",
    ]
    hist = results.get("history") or {}
    deltas = hist.get("deltas", {}) if isinstance(hist, dict) else {}
    if results.get("gates"):
        lines += ["| | gate | observed | 95% CI | change | severity |", "|---|---|---|---|---|---|"]
        for g in results["gates"]:
            d = deltas.get(g["attack"], {}).get("as deployed", {}).get(g["metric"])
            ci = (
                ""
                if g.get("low") is None or g.get("high") is None
                else f"[{fmt(g['low'])}, {fmt(g['high'])}]"
            )
            change = "" if d is None else f"{d['change']:+.3f}"
            lines.append(
                f"| {_ICON.get(g['status'], '?')} | `{g['gate']}` | {fmt(g.get('observed'))} | {ci} | "
                f"{change} | {g['severity']}{'' if g['blocking'] else ' (non-blocking)'} |"
            )
        lines.append("")
    sweep = results.get("exposure_sweep")
    if sweep:
        rec = sweep.get("recommended")
        if rec:
            cost = "" if rec.get("utility_cost") is None else f", utility cost {fmt(rec['utility_cost'])}"
            lines.append(
                f"**Recommended exposure:** `{rec['exposure']}` (utility {fmt(rec.get('utility'))}{cost})."
            )
        else:
            lines.append(f"**No listed exposure passes every gate.** {sweep.get('note') or ''}")
        lines.append("")
    lines += [
        "<details><summary>Attacks</summary>",
        "",
        "| attack | exposure | status | headline metrics |",
        "|---|---|---|---|",
    ]
    for a in results.get("attacks", []):
        ms = list(a.get("metrics", {}).items())[:3]
        head = "; ".join(f"{k} {fmt_metric(m)}" for k, m in ms) or (a.get("error") or "")
        lines.append(f"| {a['attack']} | {a.get('exposure') or 'as deployed'} | {a.get('status')} | {head} |")
    lines += ["", "</details>", ""]
    prov = results["provenance"]
    lines.append(
        f"<sub>config {prov['config_hash'][:12]} · seed {prov['seed']} · "
        f"{fmt(results['audit']['wall_time_s'], 1)} s on {prov['executor']}"
        + (f" · [full report]({report_link})" if report_link else "")
        + "</sub>"
    )
    return "\n".join(lines) + "\n"


def write(results: dict[str, Any], path: Path, *, report_link: str | None = None) -> Path:
    from invguard.audit.resolve import atomic_write

    atomic_write(path, render(results, report_link=report_link).encode())
    return path
