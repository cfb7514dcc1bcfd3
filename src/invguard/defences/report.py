"""Reports of the trade-off sweep and the synthetic-data check, rendered from their JSON alone:
JSON, one self-contained HTML file (with the Pareto chart), Markdown and JUnit XML."""

from __future__ import annotations

import base64
import io
import json
import os
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from invguard.core.result import _clean


def _atomic(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def fmt(m: Any, digits: int = 3) -> str:
    """A metric ``{value, low, high}`` (or a number) as ``v [low, high]``."""
    if m is None:
        return "—"
    if isinstance(m, dict):
        v, lo, hi = m.get("value"), m.get("low"), m.get("high")
        if v is None:
            return "—"
        if lo is None or hi is None:
            return f"{v:.{digits}g}"
        return f"{v:.{digits}g} [{lo:.{digits}g}, {hi:.{digits}g}]"
    if isinstance(m, float):
        return f"{m:.{digits}g}"
    return str(m)


# --------------------------------------------------------------------------------------- trade-off


def _columns(doc: dict[str, Any]) -> list[str]:
    cols: list[str] = []
    for r in doc["settings"]:
        for a in r.get("attacks", []):
            for k in a.get("metrics", {}) or {}:
                name = f"{a['attack']}.{k}"
                if name not in cols:
                    cols.append(name)
    gated = [g.split()[0] for g in doc.get("gates", [])]
    keep = [c for c in cols if c in gated or c.split(".")[-1] in _HEADLINE]
    return keep or cols[:6]


_HEADLINE = {
    "tpr_at_fpr_0.001",
    "tpr_at_fpr_0.01",
    "auc",
    "lift_over_prior",
    "epsilon_one_run",
    "epsilon_clopper_pearson",
    "epsilon_roc",
}


def _metric(row: dict[str, Any], dotted: str) -> dict[str, Any] | None:
    from invguard.defences.tradeoff import metric_of

    return metric_of(row, dotted)


# epsilon from a DP audit is a 95%-confidence lower bound, not an estimate: the one-run bound keeps
# its bootstrap range (of the bound), the Clopper-Pearson bound is shown alone (its stored interval
# is the plug-in range, which starts at the bound itself and reads like a CI around an estimate)
_LOWER_BOUNDS = {"epsilon_one_run", "epsilon_clopper_pearson"}


def _cell(m: dict[str, Any] | None, column: str) -> str:
    name = column.split(".")[-1]
    if m is None or m.get("value") is None or name not in _LOWER_BOUNDS:
        return fmt(m)
    if name == "epsilon_clopper_pearson":
        return f">= {m['value']:.3g}"
    return f">= {fmt(m)}"


def _inconclusive_verdict(gates: list[dict[str, Any]]) -> str:
    msgs = [o["message"] for o in gates if o["status"] == "inconclusive"]
    if msgs and all("not measurable" in m for m in msgs):
        return "inconclusive (not measurable at this sample size)"
    return "inconclusive (CI straddles the threshold)"


def tradeoff_rows(doc: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    cols = _columns(doc)
    head = [
        "setting",
        "utility (95% CI)",
        *[f"{c} (lower bound)" if c.split(".")[-1] in _LOWER_BOUNDS else c for c in cols],
        "accountant epsilon",
        "DP claim",
        "train CPU s",
        "cost ratio",
        "gates",
        "verdict",
    ]
    body = []
    for r in doc["settings"]:
        p = r.get("privacy") or {}
        gates = r.get("gates", [])
        passed = sum(o["status"] == "pass" for o in gates)
        if r.get("status") != "ok":
            verdict = f"{r.get('status')}: {r.get('error')}"
        elif r["id"] == doc["recommendation"]["setting"]:
            verdict = "RECOMMENDED"
        elif r.get("qualifies"):
            verdict = "qualifies"
        elif r.get("gate_status") == "inconclusive":
            verdict = _inconclusive_verdict(gates)
        elif not r.get("passes_gates"):
            verdict = "fails a gate"
        else:
            verdict = "below the utility floor"
        cost = r.get("cost") or {}
        body.append(
            [
                r["label"],
                fmt(r.get("utility")),
                *[_cell(_metric(r, c), c) for c in cols],
                f"{p['epsilon']:.3g}" if p else "∞ (none)",
                r.get("dp_claim", "—"),
                fmt(cost.get("cpu_time_s"), 3),
                f"{cost['ratio_to_non_private']:.2f}x" if cost.get("ratio_to_non_private") else "—",
                f"{passed}/{len(gates)}",
                verdict,
            ]
        )
    return head, body


def pareto_chart(doc: dict[str, Any]) -> str | None:
    """Utility against leakage, training cost as marker size; the Pareto front joined; base64 PNG."""
    axis = doc.get("leakage_axis")
    pts = []
    for r in doc["settings"]:
        m = _metric(r, axis) if axis else None
        if r.get("status") == "ok" and m and m.get("value") is not None:
            pts.append((r, m))
    if not pts:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    cpu = [r["cost"]["cpu_time_s"] for r, _ in pts]
    big = max(cpu) or 1.0
    for (r, m), c in zip(pts, cpu, strict=True):
        x, y = m["value"], r["utility"]["value"]
        xerr = [
            [x - (m.get("low") if m.get("low") is not None else x)],
            [(m.get("high") if m.get("high") is not None else x) - x],
        ]
        yerr = [[y - r["utility"]["low"]], [r["utility"]["high"] - y]]
        rec = r["id"] == doc["recommendation"]["setting"]
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="none", ecolor="#999", lw=0.8, zorder=1)
        ax.scatter([x], [y], s=60 + 540 * c / big, alpha=0.6, zorder=2,
                   color="#1e8449" if rec else ("#2471a3" if r.get("qualifies") else "#c0392b"),
                   edgecolors="black" if rec else "none")  # fmt: skip
        ax.annotate(r["label"], (x, y), textcoords="offset points", xytext=(6, 6), fontsize=8)
    front = sorted(((m["value"], r["utility"]["value"]) for r, m in pts if r["id"] in doc.get("pareto", [])))
    if len(front) > 1:
        ax.plot(*zip(*front, strict=True), color="#555", lw=1, ls="--", zorder=0, label="Pareto front")
        ax.legend(loc="lower right", fontsize=8)
    if doc.get("utility_floor") is not None:
        ax.axhline(doc["utility_floor"], color="#c0392b", lw=0.8, ls=":")
        ax.text(
            ax.get_xlim()[0], doc["utility_floor"], " utility floor", va="bottom", fontsize=8, color="#c0392b"
        )
    ax.set_xlabel(f"leakage: {axis} (lower is better)")
    ax.set_ylabel("utility: held-out accuracy")
    ax.set_title("utility vs leakage (marker size: training CPU time)", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


_HTML = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f4f4f4}.rec{background:#eafaf1}
.verdict{padding:.8em 1em;border-left:5px solid #2471a3;background:#f4f8fb}
.bad{border-color:#c0392b;background:#fdf2f0}.muted{color:#666}code{background:#f4f4f4;padding:0 3px}
</style></head><body>
<h1>{{ title }}</h1>
<div class="verdict {{ 'bad' if bad else '' }}"><strong>{{ verdict }}</strong></div>
{% for p in paragraphs %}<p>{{ p }}</p>{% endfor %}
{% if chart %}<img alt="chart" src="{{ chart }}">{% endif %}
{% for t in tables %}<h2>{{ t.title }}</h2><table>
<tr>{% for h in t.head %}<th>{{ h }}</th>{% endfor %}</tr>
{% for row in t.body %}<tr class="{{ 'rec' if t.highlight == loop.index0 else '' }}">
{% for c in row %}<td>{{ c }}</td>{% endfor %}</tr>{% endfor %}</table>{% endfor %}
{% if findings %}<h2>Findings</h2><ul>{% for f in findings %}
<li><strong>{{ f.severity }}</strong> — {{ f.title }}: {{ f.detail }}</li>{% endfor %}</ul>{% endif %}
<h2>Config and provenance</h2><pre>{{ provenance }}</pre></body></html>"""


def _html(**ctx: Any) -> str:
    import jinja2

    env = jinja2.Environment(autoescape=True)
    return env.from_string(_HTML).render(**ctx)


def _tradeoff_findings(doc: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for r in doc["settings"]:
        for a in r.get("attacks", []):
            for f in a.get("findings", []):
                if f.get("severity") in ("medium", "high", "critical") or a["attack"] == "dp.one_run":
                    out.append({**f, "title": f"{r['label']} · {a['attack']}: {f['title']}"})
    return out


def render_tradeoff_html(doc: dict[str, Any]) -> str:
    head, body = tradeoff_rows(doc)
    rec = doc["recommendation"]["setting"]
    ids = [r["id"] for r in doc["settings"]]
    notes = [
        "Each setting was trained once on the members plus the included canaries, then attacked as a "
        "white-box model. Gates decide on the conservative end of each metric's 95% CI; an inconclusive "
        "or unmeasured gate never counts as a pass. Cost ratio: training CPU time over the non-private "
        "setting's.",
    ]
    if doc.get("utility_floor_text"):
        notes.append(f"Utility floor: {doc['utility_floor_text']} (checked on the accuracy's lower CI end).")
    return _html(
        title=f"Defence trade-off: {doc['name']}",
        verdict=doc["recommendation"]["text"],
        bad=rec is None,
        paragraphs=notes,
        chart=pareto_chart(doc),
        tables=[
            {
                "title": "Settings",
                "head": head,
                "body": body,
                "highlight": ids.index(rec) if rec in ids else None,
            }
        ],
        findings=_tradeoff_findings(doc),
        provenance=json.dumps(doc.get("provenance", {}), indent=2, default=str),
    )


def render_tradeoff_markdown(doc: dict[str, Any]) -> str:
    head, body = tradeoff_rows(doc)
    icon = "✅" if doc["recommendation"]["setting"] else "❌"
    lines = [f"### {icon} Defence trade-off: `{doc['name']}`", "", doc["recommendation"]["text"], ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def render_tradeoff_junit(doc: dict[str, Any]) -> str:
    suite = ET.Element("testsuite", name=f"invguard tradeoff {doc['name']}")
    fails = 0
    for r in doc["settings"]:
        for o in r.get("gates", []):
            tc = ET.SubElement(suite, "testcase", classname=f"tradeoff.{r['label']}", name=o["gate"])
            if o["status"] != "pass":
                fails += 1
                ET.SubElement(tc, "failure", message=o["message"], type=o["status"])
        tc = ET.SubElement(suite, "testcase", classname=f"tradeoff.{r['label']}", name="utility floor")
        if not r.get("utility_ok", False):
            fails += 1
            ET.SubElement(tc, "failure", message=str(r.get("utility_note")), type="utility")
    tc = ET.SubElement(suite, "testcase", classname="tradeoff", name="a setting is recommended")
    if doc["recommendation"]["setting"] is None:
        fails += 1
        ET.SubElement(tc, "failure", message=doc["recommendation"]["text"], type="recommendation")
    suite.set("tests", str(len(suite.findall("testcase"))))
    suite.set("failures", str(fails))
    return ET.tostring(suite, encoding="unicode", xml_declaration=True)


# -------------------------------------------------------------------------------------------- writers


def write_reports(doc: dict[str, Any], out_dir: Path, formats: list[str]) -> dict[str, Path]:
    """Write the trade-off or synthetic-data document in each format under ``out_dir``."""
    kind = "synth" if doc.get("format") == "invguard-synth-check" else "tradeoff"
    doc = _clean(doc)
    names = {
        "json": f"{kind}.json",
        "html": f"{kind}.html",
        "markdown": f"{kind}.md",
        "junit": "junit.xml",
    }
    if kind == "synth":
        from invguard.defences.synth import render_html, render_junit, render_markdown
    else:
        render_html, render_markdown, render_junit = (
            render_tradeoff_html,
            render_tradeoff_markdown,
            render_tradeoff_junit,
        )
    renderers = {
        "json": lambda d: json.dumps(d, indent=2, sort_keys=False) + "\n",
        "html": render_html,
        "markdown": render_markdown,
        "junit": render_junit,
    }
    paths = {}
    for f in formats:
        if f not in renderers:
            from invguard.core.errors import ConfigError

            raise ConfigError(f"unknown report format {f!r}; expected one of {sorted(renderers)}")
        paths[f] = _atomic(Path(out_dir) / names[f], renderers[f](doc))
    return paths
