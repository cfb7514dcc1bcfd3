"""Session fixtures for the audit tests: one tiny audit, run once through the CLI, reused."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

import tests.audit_attacks  # noqa: F401  (registers test.prototype and test.confidence)

TINY = {
    "name": "tiny",
    "seed": 0,
    "plugins": ["tests.audit_attacks"],
    # a total query budget for the whole audit: divided among the jobs (ample here)
    "target": {"name": "tiny-digits", "model": "reference/digits-mlp", "budget": 20000},
    "data": {"dataset": "digits"},
    "attacks": [
        {"name": "test.prototype", "params": {"steps": 15, "population": 6}},
        {"name": "test.confidence", "params": {"records": 150}},
    ],
    "exposures": {
        "attacks": ["test.prototype"],
        "policies": ["whitebox", "logits", "top_k=3 round=2", "label_only"],
        "params": {"test.prototype": {"steps": 15, "population": 6}},
    },
    "gates": [
        "test.prototype.attack_accuracy <= 1.0",
        {"metric": "test.confidence.tpr_at_fpr_0.01", "op": "<=", "threshold": 0.9, "severity": "medium"},
    ],
    "max_workers": 2,
}


def write_config(folder: Path, **changes) -> Path:
    cfg = json.loads(json.dumps(TINY))
    cfg.update(changes)
    cfg.setdefault("cache_dir", os.environ["INVGUARD_CACHE"])  # the suite's cache: trained models reused
    cfg.setdefault("history", str(folder / "history.db"))
    cfg["output"] = {"dir": str(folder / "out")}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "audit.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def audit_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("audit")


@pytest.fixture(scope="session")
def passing_run(audit_root):
    """The tiny audit run once through `invguard audit` (gates pass)."""
    from typer.testing import CliRunner

    from invguard.cli import app

    path = write_config(audit_root / "pass")
    r = CliRunner().invoke(app, ["audit", str(path)])
    out = audit_root / "pass" / "out"
    return {
        "result": r,
        "config": path,
        "out": out,
        "results": json.loads((out / "results.json").read_text()),
    }
