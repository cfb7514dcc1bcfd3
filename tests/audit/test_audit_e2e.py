"""End to end: `invguard audit` on a tiny config — exit codes 0/1/2/3, reports, history, schema."""

from __future__ import annotations

import json
import socket
import xml.etree.ElementTree as ET

from typer.testing import CliRunner

from invguard.cli import app
from invguard.report import validate
from tests.audit.conftest import write_config

runner = CliRunner()


def test_gates_pass_exit_0_and_every_report_is_written(passing_run):
    r = passing_run["result"]
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output
    out = passing_run["out"]
    for name in ("results.json", "report.html", "junit.xml", "summary.md"):
        assert (out / name).is_file(), name
    doc = passing_run["results"]
    assert validate(doc) == []
    assert doc["verdict"]["passed"] is True and doc["verdict"]["gates_total"] == 2
    names = [a["attack"] for a in doc["attacks"]]
    assert names == ["test.prototype", "test.confidence"] and all(a["status"] == "ok" for a in doc["attacks"])
    # the independent evaluator recognises most prototypes at full access: a real leak, with a CI
    acc = doc["attacks"][0]["metrics"]["attack_accuracy"]
    assert acc["value"] >= 0.6 and acc["low"] < acc["value"] <= acc["high"]
    # provenance: config hash, split hashes, versions, seed, timings, queries
    prov = doc["provenance"]
    assert len(prov["config_hash"]) == 64 and prov["seed"] == 0 and "torch" in prov["packages"]
    assert set(doc["data"]["splits"]) == {"members", "nonmembers", "public", "evaluation"}
    assert prov["queries"]["a0"] == doc["attacks"][0]["queries_used"] > 0
    assert "local process pool" in prov["executor"]
    junit = ET.parse(out / "junit.xml").getroot()
    assert junit.get("tests") == "2" and junit.get("failures") == "0"
    assert "PASS" in r.output and "report.html" in r.output


def test_exposure_sweep_recommends_the_least_restrictive_passing_policy(passing_run):
    sweep = passing_run["results"]["exposure_sweep"]
    rows = {r["exposure"]: r for r in sweep["rows"]}
    assert list(rows) == ["whitebox", "full output", "top_k=3, rounded to 2 decimals", "label only"]
    assert rows["whitebox"]["access"] == "WHITEBOX"
    assert rows["full output"]["status"] == "ok" and rows["full output"]["access"] == "LOGITS"
    assert rows["label only"]["status"] == "not_applicable"  # scores attack against a label-only answer
    assert 0.8 <= rows["full output"]["utility"] <= 1.0 and rows["label only"]["argmax_agreement"] == 1.0
    rec = sweep["recommended"]
    assert rec["exposure"] == "whitebox" and rec["utility_cost"] == 0.0


def test_failing_gate_exits_1_with_a_failing_junit_testcase(audit_root, passing_run):
    gates = [
        "test.prototype.attack_accuracy <= 0.05",
        {"metric": "test.confidence.tpr_at_fpr_0.01", "op": "<=", "threshold": 0.9, "severity": "low"},
        {"metric": "test.confidence.no_such_metric", "threshold": 1, "severity": "low"},
    ]
    # same model, same history store as the passing run: this run shows the change since that one
    history = str(audit_root / "pass" / "history.db")
    path = write_config(audit_root / "fail", gates=gates, fail_on="medium", history=history)
    r = runner.invoke(app, ["audit", str(path)])
    assert r.exit_code == 1, r.output
    assert "FAIL" in r.output and "Traceback" not in r.output
    doc = json.loads((audit_root / "fail" / "out" / "results.json").read_text())
    st = [(g["status"], g["blocking"]) for g in doc["gates"]]
    assert st == [("fail", True), ("pass", False), ("error", False)]
    assert "reported no metric 'no_such_metric'" in doc["gates"][2]["message"]
    # every exposure that returns scores leaks above 0.05: only the label-only answer passes
    sweep = doc["exposure_sweep"]
    assert [e["passes_gates"] for e in sweep["exposures"]] == [False, False, False, True]
    rec = sweep["recommended"]
    assert rec["exposure"] == "label only" and rec["access"] == "LABEL" and rec["utility_cost"] == 0.0
    suite = ET.parse(audit_root / "fail" / "out" / "junit.xml").getroot().find("testsuite")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == [
        "test.prototype.attack_accuracy <= 0.05",
        "test.confidence.tpr_at_fpr_0.01 <= 0.9",
        "test.confidence.no_such_metric <= 1",
    ]
    failure = cases[0].find("failure")
    assert failure is not None and "violates <= 0.05" in failure.get("message")
    assert cases[1].find("failure") is None and cases[2].find("skipped") is not None
    assert suite.get("failures") == "1"
    # the history store holds both runs of the same model; the second shows changes since the first
    hist = doc["history"]
    assert hist["previous"]["passed"] is True and hist["previous"]["summary"].startswith(
        "PASS: 2 of 2 gates pass"
    )
    d = hist["deltas"]["test.prototype"]["as deployed"]["attack_accuracy"]
    assert d["change"] == 0.0  # same seed, same attack, same numbers
    assert doc["attacks"][0]["metrics"] == passing_run["results"]["attacks"][0]["metrics"]
    # re-render from the JSON alone, in every format
    for fmt, name in (("junit", "junit.xml"), ("markdown", "summary.md"), ("html", "report.html")):
        target = audit_root / "fail" / f"again-{name}"
        rr = runner.invoke(
            app,
            [
                "report",
                str(audit_root / "fail" / "out" / "results.json"),
                "--format",
                fmt,
                "--out",
                str(target),
            ],
        )
        assert rr.exit_code == 0, rr.output
        assert target.read_text() == (audit_root / "fail" / "out" / name).read_text()


def test_broken_config_exits_2_listing_every_problem_with_path_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: broken\n"
        "seed: zero\n"
        "target:\n"
        "  model: reference/digits-mlp\n"
        "  acess: scores\n"
        "attacks:\n"
        "  - name: inversion.whitebx\n"
        "  - name: test.confidence\n"
        "    params: {records: 3}\n"
        "    exposure: top_q=3\n"
        "gates:\n"
        "  - test.confidence.auc <= high\n"
        "  - {metric: auc, threshold: 0.5, severity: urgent}\n"
    )
    r = runner.invoke(app, ["audit", str(bad)])
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    text = " ".join(r.output.split())
    # first every problem found without importing an attack implementation (so it is reported at
    # once), then, with those fixed, the parameter problems the attack classes find
    for expected in [
        "7 problems in the audit config",
        "seed (line 2): Input should be a valid integer",
        "target.acess (line 5): unknown field (check the spelling)",
        "attacks[0].name (line 7): unknown attack 'inversion.whitebx'",
        "attacks[1].exposure (line 10): exposure: unknown output policy 'top_q'",
        "gates[0] (line 12): gate 'test.confidence.auc <= high': threshold 'high' is not a number",
        "gates[1].metric (line 13): metric must be family.name.metric",
        "gates[1].severity (line 13): Input should be 'low', 'medium', 'high' or 'critical'",
    ]:
        assert expected in text, expected
    bad.write_text(
        "plugins: [tests.audit_attacks]\n"
        "target: {model: reference/digits-mlp}\n"
        "attacks:\n"
        "  - name: test.confidence\n"
        "    params: {records: 3}\n"
        "  - name: membership.lira\n"
        "    params: {n_modls: 2}\n"
    )
    r = runner.invoke(app, ["audit", str(bad)])
    assert r.exit_code == 2, r.output
    text = " ".join(r.output.split())
    assert "2 problems in the audit config" in text
    assert (
        "attacks[0].params (line 5): bad parameters for test.confidence: "
        "test.confidence: records must be a whole number >= 10, got 3" in text
    )
    assert "attacks[1].params (line 7): bad parameters for membership.lira:" in text and "n_modls" in text


def test_unreachable_http_target_exits_3(tmp_path):
    with socket.socket() as s:  # a loopback port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = write_config(
        tmp_path / "http",
        target={
            "url": f"http://127.0.0.1:{port}/v2/models/m/infer",
            "preset": "kserve-v2",
            "retries": 0,
            "timeout": 2,
        },
        exposures=None,
    )
    r = runner.invoke(app, ["audit", str(path)])
    assert r.exit_code == 3, r.output
    assert "Traceback" not in r.output
    assert f"POST http://127.0.0.1:{port}/v2/models/m/infer: cannot reach the endpoint" in " ".join(
        r.output.split()
    )


def test_report_refuses_a_file_that_is_not_results(tmp_path):
    p = tmp_path / "x.json"
    p.write_text(json.dumps({"hello": 1}))
    r = runner.invoke(app, ["report", str(p)])
    assert r.exit_code == 2 and "not an invguard audit results file" in " ".join(r.output.split())
    r = runner.invoke(app, ["report", str(p), "--format", "pdf"])
    assert r.exit_code == 2 and "--format must be one of" in r.output
