"""Start-up stays light: the guard never loads torch or the attack code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"


def imported_by(statement: str) -> set[str]:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", statement],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    # lines look like "import time:   self [us] |  cumulative | imported package"
    return {
        line.rsplit("|", 1)[-1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:")
    }


def test_the_guard_app_loads_neither_torch_nor_the_attacks():
    mods = imported_by("import invguard.guard.app")
    assert "invguard.guard.app" in mods
    heavy = sorted(
        m for m in mods if m.split(".")[0] == "torch" or m.startswith(("invguard.attacks", "invguard.judges"))
    )
    assert heavy == []


def test_the_report_reads_results_json_and_never_imports_the_audit():
    mods = imported_by(
        "import invguard.report, invguard.report.json, invguard.report.html, "
        "invguard.report.junit, invguard.report.markdown, invguard.report.figures"
    )
    assert "invguard.report.html" in mods
    assert sorted(m for m in mods if m.startswith(("invguard.audit", "invguard.attacks"))) == []


def test_no_report_module_imports_the_audit_even_inside_a_function():
    import ast

    found = []
    for path in sorted((SRC / "invguard" / "report").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            found += [f"{path.name}:{node.lineno} {n}" for n in names if n.startswith("invguard.audit")]
    assert found == []
