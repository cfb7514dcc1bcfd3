"""JUnit XML: one testcase per gate, so any CI shows a failing gate as a failing test.

A violated gate is a ``<failure>`` (type ``GateFailed[severity]``), an inconclusive one too (type
``GateInconclusive``: its CI straddles the threshold, so it is not a pass); a gate that could not be
checked (its attack failed or did not report the metric) is an ``<error>``; a non-blocking gate that
did not pass is reported as a ``<skipped>`` test with the reason, so it is visible without failing
the build. Attacks that crashed are added as errored testcases of their own; an endpoint whose
answers changed during the audit is a failing testcase ``endpoint unchanged during the audit``
(type ``EndpointChanged``), so a run whose gates pass on mixed answers never shows green. The
verdict's headline
and the findings are suite properties (``finding.N``) and the suite's ``<system-out>``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from invguard.report.html import verdict_of


def render(results: dict[str, Any]) -> str:
    gates = results.get("gates", [])
    suite_name = f"invguard audit: {results['audit']['name']}"
    crashed = [a for a in results.get("attacks", []) if a.get("status") in ("crashed", "error")]
    failures = sum(1 for g in gates if g["status"] in ("fail", "inconclusive") and g["blocking"])
    errors = sum(1 for g in gates if g["status"] == "error" and g["blocking"]) + len(crashed)
    skipped = sum(1 for g in gates if g["status"] != "pass" and not g["blocking"])
    changed = (results.get("audit") or {}).get("endpoint_changed")
    failures += 1 if changed else 0
    extra = len(crashed) + (1 if changed else 0)
    root = ET.Element(
        "testsuites",
        name="invguard",
        tests=str(len(gates) + extra),
        failures=str(failures),
        errors=str(errors),
    )
    suite = ET.SubElement(
        root,
        "testsuite",
        name=suite_name,
        tests=str(len(gates) + extra),
        failures=str(failures),
        errors=str(errors),
        skipped=str(skipped),
        time=f"{results['audit'].get('wall_time_s', 0.0):.3f}",
    )
    v = verdict_of(results)
    props = ET.SubElement(suite, "properties")
    items = [
        ("target", results["target"]["name"]),
        ("config_hash", results["provenance"]["config_hash"]),
        ("verdict", v["headline"]),
    ]
    if results["target"].get("privacy_statement"):
        items.append(("training_privacy", results["target"]["privacy_statement"]))
    items += [
        (f"finding.{i}", f"{f['severity']}: {f['title']} ({f['attack']}): {f.get('detail', '')}")
        for i, f in enumerate(v["findings"], 1)
    ]
    for k, val in items:
        ET.SubElement(props, "property", name=k, value=str(val))
    times = {a["attack"]: a.get("wall_time_s") or 0.0 for a in results.get("attacks", [])}
    for g in gates:
        tc = ET.SubElement(
            suite,
            "testcase",
            classname=f"invguard.gates.{g['attack']}",
            name=g["gate"],
            time=f"{float(times.get(g['attack'], 0.0)):.3f}",
        )
        detail = (
            f"{g['message']}\nobserved={g.get('observed')} CI=[{g.get('low')}, {g.get('high')}] "
            f"severity={g['severity']}"
        )
        if g["status"] == "pass":
            continue
        if not g["blocking"]:
            ET.SubElement(tc, "skipped", message=f"non-blocking ({g['severity']}): {g['message']}")
        elif g["status"] == "fail":
            f = ET.SubElement(tc, "failure", message=g["message"], type=f"GateFailed[{g['severity']}]")
            f.text = detail
        elif g["status"] == "inconclusive":
            f = ET.SubElement(tc, "failure", message=g["message"], type="GateInconclusive")
            f.text = detail + (f"\n{g['settle']}" if g.get("settle") else "")
        else:
            e = ET.SubElement(tc, "error", message=g["message"], type="GateNotCheckable")
            e.text = detail
    for a in crashed:
        tc = ET.SubElement(
            suite, "testcase", classname=f"invguard.attacks.{a['attack']}", name=f"{a['attack']} runs"
        )
        e = ET.SubElement(tc, "error", message=str(a.get("error")), type=str(a.get("status")))
        e.text = a.get("traceback") or str(a.get("error"))
    if changed:
        tc = ET.SubElement(
            suite, "testcase", classname="invguard.audit", name="endpoint unchanged during the audit"
        )
        f = ET.SubElement(tc, "failure", message=str(changed["message"]), type="EndpointChanged")
        f.text = f"first probe: {changed.get('before')}\nclosing probe: {changed.get('after')}"
    out = ET.SubElement(suite, "system-out")
    out.text = "\n".join(
        [
            v["headline"],
            *(f"{f['severity']}: {f['title']} ({f['attack']}): {f.get('detail', '')}" for f in v["findings"]),
        ]
    )
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write(results: dict[str, Any], path: Path) -> Path:
    from invguard.storage import atomic_write

    atomic_write(path, render(results).encode())
    return path
