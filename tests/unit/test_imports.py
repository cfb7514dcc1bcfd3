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
