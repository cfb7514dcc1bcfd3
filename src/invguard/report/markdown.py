"""A Markdown summary fit for a pull-request comment: the verdict, the gates, the recommended
exposure and each attack's headline metrics, with the change since the previous run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from invguard.report.html import fmt, fmt_metric, recommendation_text, verdict_of

_ICON = {"pass": "✅", "fail": "❌", "error": "⚠️", "inconclusive": "❔"}


def render(results: dict[str, Any], *, report_link: str | None = None) -> str:
    v = verdict_of(results)
    icon = _ICON.get(v["status"], "?")
    lines = [
        f"### {icon} {v['word']} — invguard privacy audit of `{results['audit']['name']}`",
        "",
        v["headline"],
        "",
    ]
    privacy = results.get("target", {}).get("privacy_statement")
    if privacy:
        lines += [f"Model {privacy}.", ""]
    for f in v["findings"]:
        lines.append(f"- **{f['severity']}**: {f['title']} (`{f['attack']}`): {f.get('detail', '')}")
    if v["findings"]:
        lines.append("")
    hist = results.get("history") or {}
    deltas = hist.get("deltas", {}) if isinstance(hist, dict) else {}
    if results.get("gates"):
        lines += ["| | gate | observed | 95% CI | change | severity | why |", "|---|---|---|---|---|---|---|"]
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
                f"{change} | {g['severity']}{'' if g['blocking'] else ' (non-blocking)'} | "
                f"{_cell(g['message'] + ('; ' + g['settle'] if g.get('settle') else ''))} |"
            )
        lines.append("")
    rec = recommendation_text(results.get("exposure_sweep"))
    if rec:
        lines += [rec, ""]
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


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def write(results: dict[str, Any], path: Path, *, report_link: str | None = None) -> Path:
    from invguard.storage import atomic_write

    atomic_write(path, render(results, report_link=report_link).encode())
    return path
