"""The privacy-budget ledger sums across model versions; `invguard train --defence` records what it
spent, and every report about the model states it."""

import json

import pytest
from typer.testing import CliRunner

from invguard.audit.history import privacy_budget, record_privacy
from invguard.cli import app
from invguard.core.errors import ConfigError


def test_ledger_sums_across_versions_and_models(tmp_path):
    db = tmp_path / "h.db"
    p = {"epsilon": 2.0, "delta": 1e-5, "accountant": "rdp"}
    record_privacy(db, model="a", version="v1", dataset="adult@1", privacy=p, recorded_at=1.0)
    record_privacy(
        db, model="a", version="v2", dataset="adult@1", privacy={**p, "epsilon": 1.5}, recorded_at=2.0
    )
    record_privacy(
        db, model="b", version="v1", dataset="adult@1", privacy={**p, "epsilon": 4.0}, recorded_at=3.0
    )
    record_privacy(db, model="a", version="v1", dataset="digits@2", privacy=p, recorded_at=4.0)
    b = record_privacy(
        db, model="a", version="v2", dataset="adult@1", privacy={**p, "epsilon": 1.5}, recorded_at=5.0
    )
    assert b["epsilon"] == 7.5 and b["delta"] == pytest.approx(3e-5)  # a retry of v2 replaced its entry
    assert [(e["model"], e["version"]) for e in b["entries"]] == [("a", "v1"), ("b", "v1"), ("a", "v2")]
    assert b["by_model"]["a"] == {"versions": 2, "epsilon": 3.5, "delta": pytest.approx(2e-5)}
    assert privacy_budget(db, "adult@1", model="b")["epsilon"] == 4.0
    assert privacy_budget(db, "digits@2")["epsilon"] == 2.0
    assert privacy_budget(tmp_path / "none.db", "adult@1")["epsilon"] == 0.0
    with pytest.raises(ConfigError, match=r"model 'c' version 'v1' has no epsilon/delta accounting"):
        record_privacy(db, model="c", version="v1", dataset="adult@1", privacy={}, recorded_at=6.0)


@pytest.fixture(scope="module")
def dp_model(tmp_path_factory):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("dp")
    db = root / "history.db"
    runs = []
    for seed in (0, 1):
        r = CliRunner().invoke(
            app,
            [
                "train", "--arch", "mlp", "--seed", str(seed), "--out", str(root / f"dp{seed}.pt"),
                "--defence", "epsilon=2 epochs=2 batch_size=128 lr=0.003", "--history", str(db),
                "--name", "digits-dp",
            ],
        )  # fmt: skip
        assert r.exit_code == 0, r.output
        runs.append(r.output)
    torch.set_num_threads(before)
    return root, db, runs


def test_train_with_a_defence_records_the_budget(dp_model):
    from invguard import models

    root, db, runs = dp_model
    meta = models.load(root / "dp0.pt").invguard_meta
    assert meta["privacy"]["accountant"] == "rdp" and meta["privacy"]["epsilon"] <= 2.0
    assert meta["defence"]["epsilon"] == 2.0 and meta["privacy"]["steps"] > 0
    assert "-DP by the RDP accountant" in runs[0].replace("\n", " ")
    assert meta["splits"]["dataset"] == "digits"
    budgets = [privacy_budget(db, k) for k in _datasets(db)]
    assert len(budgets) == 1 and len(budgets[0]["entries"]) == 2
    assert budgets[0]["epsilon"] == pytest.approx(sum(e["epsilon"] for e in budgets[0]["entries"]))
    assert "2 DP training(s) on digits@" in runs[1].replace("\n", " ")


def _datasets(db):
    import sqlite3

    with sqlite3.connect(db) as con:
        return [r[0] for r in con.execute("SELECT DISTINCT dataset FROM privacy_ledger")]


def test_every_report_about_a_dp_model_states_its_privacy(dp_model, tmp_path):
    import yaml

    root, _, _ = dp_model
    cfg = {
        "name": "dp",
        "plugins": ["tests.audit_attacks"],
        "target": {"name": "digits-dp", "model": str(root / "dp0.pt")},
        "data": {"dataset": "digits"},
        "attacks": [{"name": "test.confidence", "params": {"records": 100}}],
        "max_workers": 1,
        "history": str(tmp_path / "h.db"),
        "output": {"dir": str(tmp_path / "out")},
    }
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(cfg))
    r = CliRunner().invoke(app, ["audit", str(tmp_path / "a.yaml")])
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    statement = res["target"]["privacy_statement"]
    assert statement.startswith("trained with DP-SGD (Opacus): (epsilon ") and "RDP accountant" in statement
    assert res["target"]["privacy"]["noise_multiplier"] > 0
    for f in ("report.html", "summary.md", "junit.xml"):
        assert "-DP by the RDP accountant" in (tmp_path / "out" / f).read_text(), f
    assert "-DP by the RDP accountant" in r.output.replace("\n", " ")


def test_target_defence_only_for_reference_models(tmp_path):
    from invguard.audit.config import load_config

    bad = {"target": {"model": "m.pt", "defence": {"epsilon": 1}}, "attacks": ["membership.threshold"]}
    (tmp_path / "a.yaml").write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match=r"defence applies to invguard-built reference models"):
        load_config(tmp_path / "a.yaml")
    worse = {"target": {"model": "reference/digits-mlp", "defence": {"epsilon": -1, "augment": "rotate"}},
             "attacks": ["membership.threshold"]}  # fmt: skip
    (tmp_path / "b.yaml").write_text(json.dumps(worse))
    with pytest.raises(ConfigError, match=r"epsilon must be > 0.*augment must be one of"):
        load_config(tmp_path / "b.yaml")
