"""The audit with the real attacks: the example config and the demo config are valid, and one fast
real attack runs end to end through `invguard audit`."""

from __future__ import annotations

import json
from typer.testing import CliRunner

from invguard.cli import app
from tests.audit.conftest import write_config

def test_demo_config_runs_every_image_attack_and_is_valid(tmp_path):
    from invguard.attacks import ATTACKS
    from invguard.audit.config import parse_config
    from invguard.audit.demo import SWEEP_ATTACKS, demo_config

    raw = demo_config(out_dir=tmp_path)
    cfg = parse_config(raw)
    names = [a.name for a in cfg.attacks]
    families = {n.split(".")[0] for n in ATTACKS.names()} - {"test"}
    assert "membership" in families
    assert set(names) == {n for n in ATTACKS.names() if n.split(".")[0] in ("inversion", "membership")}
    assert cfg.exposures is not None and cfg.exposures.attacks == [next(a for a in SWEEP_ATTACKS if a in names)]
    assert {g.attack for g in cfg.gates} <= set(names)


def test_a_real_membership_attack_end_to_end(tmp_path):
    path = write_config(
        tmp_path / "real",
        attacks=[{"name": "membership.threshold", "params": {"n_boot": 200}}],
        exposures={"attacks": ["membership.threshold"], "policies": ["scores", "label_only"],
                   "params": {"membership.threshold": {"n_boot": 200}}},
        gates=["membership.threshold.auc <= 0.9", "membership.threshold.tpr_at_fpr_0.001 <= 0.5 low"],
    )
    r = CliRunner().invoke(app, ["audit", str(path)])
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "real" / "out" / "results.json").read_text())
    a = doc["attacks"][0]
    assert a["status"] == "ok" and 0.4 <= a["metrics"]["auc"]["value"] <= 0.9
    assert a["arrays"]["roc_fpr"]["shape"] == a["arrays"]["roc_tpr"]["shape"]
    html = (tmp_path / "real" / "out" / "report.html").read_text()
    assert 'alt="ROC curve of membership.threshold"' in html
    rows = {r["exposure"]: r["status"] for r in doc["exposure_sweep"]["rows"]}
    assert rows == {"scores": "ok", "label only": "not_applicable"}
