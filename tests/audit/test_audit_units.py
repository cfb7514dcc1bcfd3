"""Gates, history, inventory checklist, results schema and target/data resolution (no attack runs)."""

from __future__ import annotations

import copy
import json
import pickle
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from invguard.audit.config import GateConfig, parse_config
from invguard.audit.gates import evaluate, verdict
from invguard.cli import app
from invguard.core.errors import ConfigError, DataError

runner = CliRunner()


def test_gate_metric_names_may_contain_dots():
    g = GateConfig.model_validate("membership.lira.tpr_at_fpr_0.001 <= 0.01 critical")
    assert (g.attack, g.metric_name, g.op, g.threshold, g.severity) == (
        "membership.lira",
        "tpr_at_fpr_0.001",
        "<=",
        0.01,
        "critical",
    )
    attacks = [
        {
            "attack": "membership.lira",
            "status": "ok",
            "sweep": False,
            "metrics": {"tpr_at_fpr_0.001": {"value": 0.004, "low": 0.001, "high": 0.02}},
        }
    ]
    out = evaluate([g], attacks)[0]
    # decided on the upper end of the CI by default: 0.02 straddles 0.01 -> inconclusive, not a pass
    assert out.status == "inconclusive" and out.observed == 0.004 and out.decided_on == "high"
    est = GateConfig(metric="membership.lira.tpr_at_fpr_0.001", threshold=0.01, on="estimate")
    out = evaluate([est], attacks)[0]
    assert out.status == "pass" and out.message == (
        "membership.lira.tpr_at_fpr_0.001 = 0.004 [0.001, 0.02] satisfies <= 0.01 "
        "(decided on the estimate, as the gate asks; its 95% CI straddles the threshold)"
    )


def test_gates_that_cannot_be_checked_fail_and_severity_decides_blocking():
    gates = [
        GateConfig(metric="inversion.whitebox.attack_accuracy", threshold=0.2, severity="low"),
        GateConfig(metric="inversion.blackbox.attack_accuracy", threshold=0.2, severity="high"),
    ]
    attacks = [
        {"attack": "inversion.whitebox", "status": "crashed", "error": "RuntimeError: boom", "sweep": False}
    ]
    out = evaluate(gates, attacks, fail_on="medium")
    assert [o.status for o in out] == ["error", "error"]
    assert out[0].message == "cannot check: attack inversion.whitebox crashed: RuntimeError: boom"
    assert out[1].message == "cannot check: attack inversion.blackbox did not run"
    assert [o.blocking for o in out] == [False, True]
    v = verdict(out)
    assert v["passed"] is False and v["gates_blocking_failed"] == 1 and v["status"] == "fail"
    assert v["headline"] == (
        "FAIL: 0 of 2 gates pass; 2 not checkable, 1 of them non-blocking "
        "(inversion.whitebox.attack_accuracy <= 0.2; inversion.blackbox.attack_accuracy <= 0.2); no findings"
    )
    assert verdict(out[:1])["headline"].startswith(
        "PASS: 0 of 1 gate pass; 1 not checkable, 1 of them non-blocking"
    )


def _results(model="m", acc=0.5, finished=None, passed=True, attacks=("inversion.whitebox",)):
    return {
        "target": {"model_key": model},
        "audit": {"started_at": 0.0, "finished_at": finished or time.time()},
        "provenance": {"config_hash": "abc"},
        "verdict": {"passed": passed, "summary": "s"},
        "attacks": [
            {
                "attack": a,
                "status": "ok",
                "exposure": "as deployed",
                "metrics": {"attack_accuracy": {"value": acc, "low": None, "high": None}},
            }
            for a in attacks
        ],
    }


def test_history_appends_runs_and_reports_changes_since_the_previous_run_of_the_same_model(tmp_path):
    from invguard.audit.history import last_audit, record

    db = tmp_path / "h.db"
    first = record(db, _results(acc=0.5))
    assert first["previous"] is None and first["deltas"] == {}
    record(db, _results(model="other", acc=0.9))
    second = record(db, _results(acc=0.75))
    d = second["deltas"]["inversion.whitebox"]["as deployed"]["attack_accuracy"]
    assert d == {"previous": 0.5, "current": 0.75, "change": 0.25}
    assert second["previous"]["run_id"] == first["run_id"]
    assert last_audit(db, "m")["attacks"] == ["inversion.whitebox"]
    assert last_audit(db, "nobody") is None


INVENTORY = """\
history: h.db
defaults: {max_audit_age_days: 30}
models:
  - {name: faces, owner: a@x, data_sensitivity: sensitive, training_set_size: 50000, returns: scores,
     mitigations: [output_policy]}
  - {name: tiny-medical, owner: b@x, data_sensitivity: sensitive, training_set_size: 800, returns: labels}
  - {name: spam, owner: c@x, data_sensitivity: public, training_set_size: 90000, returns: labels,
     mitigations: [monitoring]}
  - {name: fl, owner: d@x, data_sensitivity: internal, training_set_size: 20000, returns: labels,
     gradients_shared: true, mitigations: [secure_aggregation]}
"""


def test_inventory_checklist_flags_missing_audits_and_mitigations(tmp_path):
    from invguard.audit.history import record

    (tmp_path / "inv.yaml").write_text(INVENTORY)
    r = runner.invoke(app, ["inventory", "check", str(tmp_path / "inv.yaml")])
    assert r.exit_code == 1, r.output
    text = " ".join(r.output.split())
    assert "3 of 4 models miss something required" in text
    from invguard.audit.inventory import check, load_inventory

    inv = load_inventory(tmp_path / "inv.yaml")
    c = {m.name: m for m in check(inv)}
    assert c["faces"].tests == ["inversion"] and c["faces"].missing == [
        f"no audit of 'faces' in the history store ({tmp_path / 'h.db'})"
    ]
    assert c["tiny-medical"].mitigations == ["dp_training"] and c["tiny-medical"].missing[0] == (
        "mitigation dp_training not in place"
    )
    assert c["spam"].ok and c["spam"].mitigations == ["monitoring"] and c["spam"].tests == []
    assert c["fl"].mitigations == ["secure_aggregation|dp_training"] and c["fl"].tests == ["gradient"]
    assert c["fl"].missing == [f"no audit of 'fl' in the history store ({tmp_path / 'h.db'})"]
    # an old audit is flagged; a fresh passing inversion audit satisfies the test requirement
    record(tmp_path / "h.db", _results(model="faces", finished=time.time() - 40 * 86400))
    assert check(inv)[0].missing == ["last audit is 40 days old (older than 30 days)"]
    record(tmp_path / "h.db", _results(model="faces", attacks=("membership.lira",)))
    assert check(inv)[0].missing == ["the last audit ran no inversion attack"]
    record(tmp_path / "h.db", _results(model="faces"))
    assert check(inv)[0].ok
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "models:\n  - {name: x, owner: y, data_sensitivity: secret, training_set_size: 0, returns: all}\n"
    )
    r = runner.invoke(app, ["inventory", "check", str(bad)])
    assert r.exit_code == 2
    text = " ".join(r.output.split())
    assert "3 problems in the inventory" in text and "models[0].data_sensitivity (line 2)" in text


def test_results_schema_is_enforced(passing_run):
    from invguard.report.json import validate

    doc = copy.deepcopy(passing_run["results"])
    assert validate(doc) == []
    doc["verdict"]["passed"] = "yes"
    del doc["gates"][0]["status"]
    doc["attacks"][0]["status"] = "fine"
    problems = validate(doc)
    assert len(problems) == 3, problems
    assert sorted(problems) == sorted(
        [
            "verdict.passed: 'yes' is not of type 'boolean'",
            "gates.0: 'status' is a required property",
            "attacks.0.status: 'fine' is not one of "
            "['ok', 'not_applicable', 'budget_exhausted', 'error', 'target_error', 'crashed']",
        ]
    )


def test_user_sklearn_model_with_a_members_index_file(tmp_path, digits_sklearn, digits):
    import joblib

    from invguard.audit.resolve import resolve_data, resolve_target

    joblib.dump(digits_sklearn, tmp_path / "m.joblib")
    np.save(tmp_path / "members.npy", digits.members.indices)
    cfg = parse_config(
        {
            "plugins": ["tests.audit_attacks"],
            "target": {"model": str(tmp_path / "m.joblib"), "input_shape": [1, 8, 8]},
            "data": {"dataset": "digits", "members": {"indices": str(tmp_path / "members.npy")}},
            "attacks": ["test.confidence"],
        }
    )
    assert cfg.target.kind == "sklearn"
    splits = resolve_data(cfg.data, seed=0)
    assert np.array_equal(splits.members.indices, digits.members.indices)
    assert len(set(splits.nonmembers.indices) & set(splits.members.indices)) == 0
    rt = resolve_target(cfg.target, splits, seed=0, cache_dir=None)
    t = pickle.loads(pickle.dumps(rt)).build()  # what a worker does
    assert t.access.name == "SCORES" and t.predict(splits.members.X[:3]).scores.shape == (3, 10)
    (tmp_path / "bad.txt").write_text("1\n2\n99999\n")
    bad = cfg.data.model_copy(
        update={"members": cfg.data.members.model_copy(update={"indices": str(tmp_path / "bad.txt")})}
    )
    with pytest.raises(DataError, match=r"bad.txt has indices outside \[0, 1797\): \[99999\]"):
        resolve_data(bad, seed=0)


def test_torch_factory_target_and_config_errors(tmp_path, digits_mlp, digits):
    import torch

    from invguard.audit.resolve import resolve_target

    torch.save(digits_mlp.state_dict(), tmp_path / "w.pt")
    cfg = parse_config(
        {
            "plugins": ["tests.audit_attacks"],
            "target": {
                "factory": "tests.audit.test_audit_units:make_mlp",
                "weights": str(tmp_path / "w.pt"),
                "access": "logits",
            },
            "attacks": ["test.confidence"],
        }
    )
    t = resolve_target(cfg.target, digits, seed=0, cache_dir=None).build()
    assert t.access.name == "LOGITS"
    want = digits_mlp(torch.as_tensor(digits.members.X[:4])).argmax(1).numpy()
    assert np.array_equal(t.predict(digits.members.X[:4]).labels, want)
    nofac = cfg.target.model_copy(update={"factory": "tests.audit.test_audit_units:nope"})
    with pytest.raises(
        ConfigError, match=r"target\.factory: module 'tests\.audit\.test_audit_units' has no attribute 'nope'"
    ):
        resolve_target(nofac, digits, seed=0, cache_dir=None)
    with pytest.raises(ConfigError, match=r"target: a torch target needs weights"):
        parse_config({"target": {"factory": "a:b"}, "attacks": ["test.confidence"]})


def make_mlp():
    from invguard.models.nets import build

    return build({"arch": "mlp", "hidden": [64], "input_shape": [1, 8, 8], "num_classes": 10})


def test_results_json_has_no_nan_and_round_trips(passing_run):
    text = (passing_run["out"] / "results.json").read_text()
    assert "NaN" not in text and json.loads(text) == passing_run["results"]


def test_progress_from_workers_is_forwarded_and_throttled():
    import queue

    from invguard.audit.jobs import QueueProgress
    from invguard.audit.runner import ExecutorHandle

    q: queue.Queue = queue.Queue()
    cb = QueueProgress(q, "a0")
    for i in range(1, 51):
        cb("classes", i, 50)  # fifty fast updates: the first and the last get through
    handle = ExecutorHandle(executor=None, description="", progress_queue=q, kind="local")  # type: ignore[arg-type]
    items = handle.drain()
    assert items[0] == ("a0", "classes", 1, 50) and items[-1] == ("a0", "classes", 50, 50)
    assert len(items) < 10
    assert handle.drain() == []
    # a progress channel that is gone (after an interrupt) never breaks the attack
    QueueProgress(None, "a1")("x", 1, 1)
