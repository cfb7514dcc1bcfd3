"""The closed loop: audit a deployed model through a running guard with a partner key.

The audit (examples/audit-deployed.yaml, with the slow inversion attack left out) finishes within
the key's budget, the queries it reports equal the rows the guard served (read from the guard's
audit log), and the report says what the deployed API leaks. Once the key's budget is spent, the
next audit stops at the guard's first 429 instead of retrying a daily quota."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from invguard.cli import app
from tests.guard.conftest import KEYS, base_config
from tests.servers import serve

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()
KEY_BUDGET = 3200


def _served(log: Path, client: str) -> int:
    rows = 0
    for line in log.read_text().splitlines():
        rec = json.loads(line)
        if rec.get("decision") == "served" and rec.get("client") == client:
            rows += int(rec["rows"])
    return rows


def _audit(tmp: Path, url: str, monkeypatch, **change) -> tuple[object, dict]:
    cfg = yaml.safe_load((ROOT / "examples" / "audit-deployed.yaml").read_text())
    cfg["target"]["url"] = f"{url}/v1/models/digits/predict"
    cfg["attacks"] = [a for a in cfg["attacks"] if a["name"] != "inversion.blackbox"]  # minutes: kept out
    cfg["gates"] = [g for g in cfg["gates"] if "inversion." not in g]
    cfg["target"]["budget"] = 2950
    cfg.update(change)
    cfg["output"] = {"dir": str(tmp / "out")}
    cfg["history"] = None
    cfg["max_workers"] = 1
    cfg["cache_dir"] = str(tmp / "cache")
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "audit.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    monkeypatch.setenv("INVGUARD_KEY", KEYS["partner"])
    r = runner.invoke(app, ["audit", str(path)])
    assert (tmp / "out" / "results.json").is_file(), r.output
    return r, json.loads((tmp / "out" / "results.json").read_text())


@pytest.mark.slow
def test_an_audit_through_the_guard_stays_within_the_key_and_counts_what_the_guard_served(
    tmp_path, digits_mlp, monkeypatch
):
    from invguard.guard import from_dict
    from invguard.guard.app import Guard
    from invguard.guard.upstream import LocalModel
    from invguard.targets.torch import TorchTarget

    gcfg = base_config(tmp_path / "guard")
    gcfg["model"]["max_batch"] = 64
    gcfg["server"]["max_body_bytes"] = 1_000_000
    gcfg["roles"]["partner"]["budget"] = {"day": KEY_BUDGET}
    (tmp_path / "guard").mkdir()
    model = LocalModel(TorchTarget(digits_mlp, input_shape=(1, 8, 8), num_classes=10, access="logits"))
    log = Path(gcfg["audit"]["path"])
    guard = Guard(from_dict(gcfg), model=model)
    with serve(guard.app) as url:
        r, doc = _audit(tmp_path / "a", url, monkeypatch)
        served = _served(log, "partner-client")
        # the key has 3200 - served rows left: the threshold attack needs 1437 and meets the 429
        r2, doc2 = _audit(
            tmp_path / "b",
            url,
            monkeypatch,
            attacks=[{"name": "membership.threshold", "params": {"n_boot": 50}}],
            gates=[],
        )
        served2 = _served(log, "partner-client") - served
    assert r.exit_code in (0, 1), r.output
    assert "Traceback" not in r.output
    # within the key's budget, and every query the audit counted is a row the guard served
    assert all(a["status"] == "ok" for a in doc["attacks"]), [a.get("error") for a in doc["attacks"]]
    assert doc["provenance"]["queries_total"] == served <= 2950 <= KEY_BUDGET
    assert doc["provenance"]["budget"]["shares"] == {"a0": 1450, "a1": 1450}
    # the report says what the deployed API leaks, seen through the partner's policy
    assert doc["target"]["access"].startswith("SCORES (HTTP invguard at http://127.0.0.1:")
    assert [g["gate"] for g in doc["gates"]] == [
        "membership.threshold.auc <= 0.6",
        "membership.rmia.tpr_at_fpr_0.01 <= 0.05",
    ]
    md = (tmp_path / "a" / "out" / "summary.md").read_text()
    assert doc["verdict"]["headline"] in md and "membership.rmia" in md
    html = (tmp_path / "a" / "out" / "report.html").read_text()
    assert "HTTP invguard at http://127.0.0.1:" in html and doc["verdict"]["gates_summary"] in html
    # the spent key: the guard's 429 says budget_exhausted, and the attack stops there (no retries)
    assert r2.exit_code == 1, r2.output
    (job,) = doc2["attacks"]
    assert job["status"] == "budget_exhausted"
    assert "the server says the query budget is exhausted; the attack stops here" in job["error"]
    # every row the guard served is counted; the refused batch (64 rows > what was left) is not
    assert doc2["provenance"]["queries_total"] == served2 > KEY_BUDGET - served - 64
    assert (
        "1 attack did not finish (membership.threshold: budget exhausted, partial)"
        in doc2["verdict"]["headline"]
    )


def test_a_reference_attack_without_arch_on_a_url_is_a_config_error_before_any_query(tmp_path, monkeypatch):
    path = tmp_path / "a.yaml"
    path.write_text(
        "target:\n"
        "  url: http://127.0.0.1:9/v1/models/digits/predict\n"  # nobody listens: no query is ever sent
        "  preset: invguard\n"
        "attacks:\n"
        "  - name: membership.threshold\n"
        "  - name: membership.lira\n"
        "    params: {n_models: 2}\n"
    )
    r = runner.invoke(app, ["audit", str(path)])
    assert r.exit_code == 2, r.output
    assert (
        "attacks[1].params.arch (line 7): membership.lira trains reference models like the target, and an "
        "HTTP endpoint does not say its architecture: give params.arch"
    ) in " ".join(r.output.split())
