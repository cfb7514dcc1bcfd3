"""Ctrl-C stops an audit cleanly: exit 130, a message, no traceback, no partial report or cache file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.audit.conftest import write_config

ROOT = Path(__file__).resolve().parents[2]


def test_ctrl_c_stops_the_audit_cleanly(tmp_path):
    slow = {"name": "test.prototype", "params": {"steps": 1_000_000, "population": 4}}
    # no query budget: the two jobs must still be running when the interrupt comes (a budget split
    # between them ends each after a few thousand queries, a second on an idle machine)
    target = {"name": "tiny-digits", "model": "reference/digits-mlp"}
    path = write_config(tmp_path / "slow", attacks=[slow, slow], exposures=None, gates=[], target=target)
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}",
        "OMP_NUM_THREADS": "1",
        "COLUMNS": "200",
    }
    p = subprocess.Popen(
        [sys.executable, "-m", "invguard.cli", "audit", str(path)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    err = ""
    while time.monotonic() < deadline:  # wait until the attack jobs are running
        line = p.stderr.readline()
        err += line
        if "running 2 attack jobs" in line or p.poll() is not None:
            break
    time.sleep(1.0)
    p.send_signal(signal.SIGINT)
    out, rest = p.communicate(timeout=60)
    err += rest
    assert p.returncode == 130, err
    assert "interrupted: the audit was stopped; no report was written" in err
    assert "Traceback" not in err + out
    assert not (tmp_path / "slow" / "out").exists()
    cache = Path(os.environ["INVGUARD_CACHE"])  # the config's cache_dir
    assert list(cache.rglob("*.tmp")) == [] and list(cache.rglob("models/digits-mlp-*.pt"))
