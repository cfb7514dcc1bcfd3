"""The short summary the CLI prints after an audit: verdict, gates, attacks with timings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from invguard.report.html import fmt, fmt_metric, recommendation_text, verdict_of

_STYLE = {
    "pass": "green",
    "fail": "red",
    "error": "red",
    "inconclusive": "yellow",
    "ok": "green",
    "not_applicable": "yellow",
    "budget_exhausted": "yellow",
}


def print_summary(results: dict[str, Any], paths: dict[str, Path], console: Console) -> None:
    v = verdict_of(results)
    colour = _STYLE.get(v["status"], "red")
    console.print(f"[bold {colour}]{v['headline']}[/]", highlight=False)
    for f in v["findings"]:
        console.print(f"  [bold]{f['severity']}[/] {f['title']} ({f['attack']})", highlight=False)
    if results.get("gates"):
        t = Table(title="gates", title_justify="left")
        for c in ("result", "gate", "observed", "95% CI", "severity", "why"):
            t.add_column(c, overflow="fold")
        for g in results["gates"]:
            ci = (
                ""
                if g.get("low") is None or g.get("high") is None
                else f"[{fmt(g['low'])}, {fmt(g['high'])}]"
            )
            why = g["message"] + (f"; {g['settle']}" if g.get("settle") else "")
            t.add_row(
                f"[{_STYLE.get(g['status'], 'red')}]{g['status']}[/]",
                g["gate"],
                fmt(g.get("observed")),
                ci,
                g["severity"] + ("" if g["blocking"] else " (non-blocking)"),
                why,
            )
        console.print(t)
    t = Table(title="attacks", title_justify="left")
    t.add_column("attack", no_wrap=True)
    t.add_column("exposure", max_width=18)
    t.add_column("status")
    t.add_column("headline metrics", overflow="fold")
    t.add_column("time (s)", justify="right")
    t.add_column("queries", justify="right")
    rows = list(results.get("attacks", []))
    sweep = results.get("exposure_sweep") or {}
    rows += sweep.get("jobs", [])
    for a in rows:
        ms = list(a.get("metrics", {}).items())[:2]
        head_m = "; ".join(f"{k} {fmt_metric(m)}" for k, m in ms) or str(a.get("error") or "")[:80]
        st = a.get("status", "?")
        t.add_row(
            a["attack"],
            a.get("exposure") or "as deployed",
            f"[{_STYLE.get(st, 'red')}]{st}[/]",
            head_m,
            fmt(a.get("wall_time_s") or a.get("job_wall_time_s"), 2),
            str(a.get("queries_used", "—")),
        )
    console.print(t)
    rec = recommendation_text(sweep)
    if rec:
        console.print(rec, highlight=False)
    privacy = results.get("target", {}).get("privacy_statement")
    if privacy:
        console.print(f"model {privacy}", highlight=False)
    timings = results["provenance"]["timings"]
    console.print(
        f"wall time {results['audit']['wall_time_s']:.1f} s (data {timings.get('data_s', 0):.1f} s, target "
        f"{timings.get('target_s', 0):.1f} s, attacks {timings.get('attacks_s', 0):.1f} s) on "
        f"{results['provenance']['executor']}",
        highlight=False,
    )
    for k, p in paths.items():
        console.print(f"{k:>8}: {p}", highlight=False)
