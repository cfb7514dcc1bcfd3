"""`invguard ops export`: rules that promtool accepts and whose alerts fire (and stay quiet) on synthetic
series, dashboards that are structurally valid and templated, runbooks with real commands."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from invguard.guard.ops import RUNBOOKS, export, runbook_names
from invguard.guard.ops.dashboards import DASHBOARDS
from invguard.guard.slo import SLOConfig
from tests.programs import require

SLOS = (
    SLOConfig(name="m2", sli="high_confidence_rate", objective=0.95),
    SLOConfig(name="fidelity", sli="audit_fidelity", objective=1.0),
    SLOConfig(name="mttr", sli="incident_resolution", objective=0.9, threshold_hours=8),
)
BASE = "https://runbooks.example/invguard"
INFO = 'invguard_guard_model_info{job="guard", instance="g1", model="digits", model_version="v1"}'
MODEL = {"model": "digits", "model_version": "v1"}


def promtool() -> str:
    return require("promtool", "prometheus")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("ops")
    files = export(out, slos=SLOS, runbook_base=BASE)
    return out, files


def test_export_writes_every_file(exported):
    out, files = exported
    names = sorted(str(f.relative_to(out)) for f in files)
    assert names == sorted(
        ["prometheus/invguard-rules.yml"]
        + [f"grafana/{d}.json" for d in DASHBOARDS]
        + ["runbooks/README.md"]
        + [f"runbooks/{r}.md" for r in RUNBOOKS]
    )
    assert runbook_names() == sorted(RUNBOOKS)
    assert not list(out.rglob(".*"))  # no temporary file left


def test_promtool_accepts_the_rules_and_every_alert_links_its_runbook(exported):
    out, _ = exported
    rules = out / "prometheus" / "invguard-rules.yml"
    r = subprocess.run([promtool(), "check", "rules", str(rules)], capture_output=True, text=True)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr
    doc = yaml.safe_load(rules.read_text())
    alerts = [x for g in doc["groups"] for x in g["rules"] if "alert" in x]
    assert {a["labels"]["severity"] for a in alerts} == {"page", "ticket"}
    for a in alerts:
        url = a["annotations"]["runbook_url"]
        assert url.startswith(BASE + "/") and url[len(BASE) + 1 : -3] in RUNBOOKS, a["alert"]
    # a bad rule file is refused (the check can fail)
    bad = out / "bad.yml"
    bad.write_text("groups: [{name: x, rules: [{alert: A, expr: 'rate(x[5m]'}]}]\n")
    assert subprocess.run([promtool(), "check", "rules", str(bad)], capture_output=True).returncode == 1


def _annotations(doc, alert, slo=None):
    for g in doc["groups"]:
        for r in g["rules"]:
            if r.get("alert") == alert and (slo is None or r["labels"].get("slo") == slo):
                return r["annotations"], r["labels"]
    raise KeyError(alert)


def _expect(doc, alert, labels, slo=None):
    ann, rule_labels = _annotations(doc, alert, slo)
    all_labels = {**labels, **rule_labels}
    render = {
        k: re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: all_labels.get(m.group(1), ""), v)
        for k, v in ann.items()
    }
    return {"exp_labels": all_labels, "exp_annotations": render}


def test_alerts_fire_on_synthetic_series_and_stay_quiet_otherwise(exported, tmp_path):
    out, _ = exported
    doc = yaml.safe_load((out / "prometheus" / "invguard-rules.yml").read_text())
    g = 'job="guard", instance="g1"'
    tests = [
        {  # a probe: 90% of rows high-confidence -> M2 fast burn pages; fidelity quiet
            "interval": "1m",
            "input_series": [
                {"series": INFO, "values": "1+0x200"},
                {
                    "series": f'invguard_guard_high_confidence_responses_total{{{g}, role="partner"}}',
                    "values": "0+90x200",
                },
                {
                    "series": f'invguard_guard_response_entropy_nats_count{{{g}, role="partner"}}',
                    "values": "0+100x200",
                },
                {"series": f"invguard_guard_audit_records_written_total{{{g}}}", "values": "0+100x200"},
                {"series": f"invguard_guard_audit_write_failures_total{{{g}}}", "values": "0+0x200"},
            ],
            "alert_rule_test": [
                {
                    "eval_time": "65m",
                    "alertname": "InvguardSLOBurnRatePage",
                    "exp_alerts": [_expect(doc, "InvguardSLOBurnRatePage", MODEL, "m2")],
                },
                {"eval_time": "65m", "alertname": "InvguardAuditLogWriteFailures", "exp_alerts": []},
            ],
        },
        {  # normal traffic: 1% high confidence, within budget: no page, no ticket
            "interval": "1m",
            "input_series": [
                {"series": INFO, "values": "1+0x200"},
                {
                    "series": f'invguard_guard_high_confidence_responses_total{{{g}, role="partner"}}',
                    "values": "0+1x200",
                },
                {
                    "series": f'invguard_guard_response_entropy_nats_count{{{g}, role="partner"}}',
                    "values": "0+100x200",
                },
            ],
            "alert_rule_test": [
                {"eval_time": "65m", "alertname": "InvguardSLOBurnRatePage", "exp_alerts": []},
                {"eval_time": "65m", "alertname": "InvguardSLOBurnRateTicket", "exp_alerts": []},
            ],
        },
        {  # audit writes failing: fidelity below 100% pages twice (the write alert and the SLO)
            "interval": "1m",
            "input_series": [
                {"series": INFO, "values": "1+0x30"},
                {"series": f"invguard_guard_audit_records_written_total{{{g}}}", "values": "0+100x30"},
                {"series": f"invguard_guard_audit_write_failures_total{{{g}}}", "values": "0x10 0+2x20"},
            ],
            "alert_rule_test": [
                {"eval_time": "5m", "alertname": "InvguardAuditLogWriteFailures", "exp_alerts": []},
                {
                    "eval_time": "20m",
                    "alertname": "InvguardAuditLogWriteFailures",
                    "exp_alerts": [_expect(doc, "InvguardAuditLogWriteFailures", MODEL)],
                },
                {
                    "eval_time": "20m",
                    "alertname": "InvguardSLOBurnRatePage",
                    "exp_alerts": [_expect(doc, "InvguardSLOBurnRatePage", MODEL, "fidelity")],
                },
            ],
        },
        {  # detections: one burst is a ticket; more than one a minute for 10 minutes pages
            "interval": "1m",
            "input_series": [
                {"series": INFO, "values": "1+0x40"},
                {
                    "series": f'invguard_guard_detections_total{{{g}, detector="knn", role="partner"}}',
                    "values": "0x5 0+5x35",
                },
            ],
            "alert_rule_test": [
                {"eval_time": "4m", "alertname": "InvguardQueryAnomaly", "exp_alerts": []},
                {
                    "eval_time": "8m",
                    "alertname": "InvguardQueryAnomaly",
                    "exp_alerts": [_expect(doc, "InvguardQueryAnomaly", {**MODEL, "detector": "knn"})],
                },
                {"eval_time": "10m", "alertname": "InvguardQueryAnomalySustained", "exp_alerts": []},
                {
                    "eval_time": "25m",
                    "alertname": "InvguardQueryAnomalySustained",
                    "exp_alerts": [
                        _expect(doc, "InvguardQueryAnomalySustained", {**MODEL, "detector": "knn"})
                    ],
                },
            ],
        },
        {  # the guard rolled canary v2 back and opened its incident: page until it is resolved
            "interval": "1m",
            "input_series": [
                {
                    "series": "invguard_incidents_active"
                    '{model="digits", model_version="v2", state="open", severity="page", source="canary"}',
                    "values": "_x10 1x10 _x10",
                },
                {  # an open detection incident is not a rollback
                    "series": "invguard_incidents_active"
                    '{model="digits", model_version="v1", state="open", severity="page", source="detection"}',
                    "values": "1x30",
                },
            ],
            "alert_rule_test": [
                {"eval_time": "5m", "alertname": "InvguardCanaryRolledBack", "exp_alerts": []},
                {
                    "eval_time": "15m",
                    "alertname": "InvguardCanaryRolledBack",
                    "exp_alerts": [
                        _expect(doc, "InvguardCanaryRolledBack", {"model": "digits", "model_version": "v2"})
                    ],
                },
                {"eval_time": "28m", "alertname": "InvguardCanaryRolledBack", "exp_alerts": []},
            ],
        },
    ]
    rule_file = str(out / "prometheus" / "invguard-rules.yml")
    r = _promtool_test(tmp_path / "minutes.test.yml", rule_file, "1m", tests)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr
    # a week of history evaluated hourly (the baseline window is 7 days)
    slow = [
        {  # an incident open 9 h breaks the 8 h resolution SLO; the limit-violation share stays under 0.1%
            "interval": "10m",
            "input_series": [
                {"series": INFO, "values": "1+0x60"},
                {
                    "series": "invguard_incidents_oldest_active_age_seconds"
                    '{model="digits", model_version="v1", state="open", severity="page", source="detection"}',
                    "values": "0+600x60",
                },
                {
                    "series": "invguard_guard_requests_total"
                    f'{{{g}, route="/v1", status="200", role="partner"}}',
                    "values": "0+10000x60",
                },
                {
                    "series": "invguard_guard_limit_violations_total"
                    f'{{{g}, role="partner", kind="rate_limited"}}',
                    "values": "0+5x60",
                },
            ],
            "alert_rule_test": [
                {"eval_time": "7h", "alertname": "InvguardIncidentOverdue", "exp_alerts": []},
                {
                    "eval_time": "9h",
                    "alertname": "InvguardIncidentOverdue",
                    "exp_alerts": [_expect(doc, "InvguardIncidentOverdue", MODEL)],
                },
                {"eval_time": "9h", "alertname": "InvguardRateLimitViolations", "exp_alerts": []},
            ],
        },
        {  # entropy of the last hour a fifth of the week before: drift ticket
            "interval": "15m",
            "input_series": [
                {"series": INFO, "values": "1+0x800"},
                {
                    "series": f'invguard_guard_response_entropy_nats_count{{{g}, role="partner"}}',
                    "values": "0+100x800",
                },
                {
                    "series": f'invguard_guard_response_entropy_nats_sum{{{g}, role="partner"}}',
                    "values": "0+100x700 70000+20x100",
                },
            ],
            "alert_rule_test": [
                {"eval_time": "7d", "alertname": "InvguardEntropyDrift", "exp_alerts": []},
                {
                    "eval_time": "7d19h",
                    "alertname": "InvguardEntropyDrift",
                    "exp_alerts": [_expect(doc, "InvguardEntropyDrift", MODEL)],
                },
            ],
        },
    ]
    r = _promtool_test(tmp_path / "hours.test.yml", rule_file, "1h", slow)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr
    # and the unit tests can fail: expecting the page on normal traffic is reported
    tests[1]["alert_rule_test"][0]["exp_alerts"] = [_expect(doc, "InvguardSLOBurnRatePage", MODEL, "m2")]
    r = _promtool_test(tmp_path / "wrong.test.yml", rule_file, "1m", tests[1:2])
    assert r.returncode == 1 and "InvguardSLOBurnRatePage" in r.stdout + r.stderr


def _promtool_test(spec: Path, rule_file: str, every: str, tests: list) -> subprocess.CompletedProcess:
    # recording rules before the alerts that read them (promtool's group order is otherwise arbitrary)
    doc = {
        "rule_files": [rule_file],
        "evaluation_interval": every,
        "group_eval_order": ["invguard-recording", "invguard-alerts"],
        "tests": tests,
    }
    spec.write_text(yaml.safe_dump(doc, sort_keys=False))
    return subprocess.run([promtool(), "test", "rules", str(spec)], capture_output=True, text=True)


def _queries(panel):
    return [t["expr"] for t in panel.get("targets", [])]


@pytest.mark.parametrize("name", list(DASHBOARDS))
def test_dashboards_are_valid_templated_grafana_json(exported, name):
    out, _ = exported
    d = json.loads((out / "grafana" / f"{name}.json").read_text())
    assert d["uid"] == DASHBOARDS[name][0] and d["title"] == DASHBOARDS[name][1]
    assert d["schemaVersion"] >= 36 and "invguard" in d["tags"]
    names = [v["name"] for v in d["templating"]["list"]]
    assert names == ["datasource", "model", "version", "role"]
    for v in d["templating"]["list"][1:]:
        assert v["type"] == "query" and v["datasource"]["uid"] == "$datasource" and v["includeAll"]
    panels = d["panels"]
    assert len(panels) >= 6
    ids = [p["id"] for p in panels if "id" in p]
    assert len(ids) == len(set(ids))
    # the grid: inside 24 columns, no two panels overlap
    cells = set()
    for p in panels:
        gp = p["gridPos"]
        assert gp["x"] + gp["w"] <= 24 and gp["w"] > 0 and gp["h"] > 0
        for x in range(gp["x"], gp["x"] + gp["w"]):
            for y in range(gp["y"], gp["y"] + gp["h"]):
                assert (x, y) not in cells, f"{name}: panels overlap at {(x, y)}"
                cells.add((x, y))
    for p in panels:
        assert (
            p["title"]
            and p["datasource"]["uid"] == "$datasource"
            and p["type"] in ("timeseries", "stat", "table", "heatmap", "bargauge")
        )
        qs = _queries(p)
        assert qs, f"{p['title']} has no query"
        for q in qs:
            assert "digits" not in q and "partner" not in q  # templated, never a hard-coded model or role
            assert "$model" in q or "$role" in q, f"{name}/{p['title']}: {q}"
            assert q.count("(") == q.count(")")
    refs = [t["refId"] for p in panels for t in p["targets"]]
    assert all(re.fullmatch(r"[A-Z]", r) for r in refs)


def test_dashboard_queries_parse_in_promql(exported, tmp_path):
    """Every panel query, with the template variables filled in, is valid PromQL for promtool."""
    out, _ = exported
    rules = []
    for name in DASHBOARDS:
        d = json.loads((out / "grafana" / f"{name}.json").read_text())
        for i, p in enumerate(d["panels"]):
            for q in _queries(p):
                q = (
                    q.replace("$__rate_interval", "5m")
                    .replace("$model", ".*")
                    .replace("$version", ".*")
                    .replace("$role", ".*")
                )
                rules.append({"record": f"dash:{name}_{i}:{len(rules)}", "expr": q})
    f = tmp_path / "dash.yml"
    f.write_text(yaml.safe_dump({"groups": [{"name": "dash", "rules": rules}]}))
    r = subprocess.run([promtool(), "check", "rules", str(f)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_runbooks_name_commands_that_exist():
    from typer.main import get_command

    from invguard.cli import app

    cli = get_command(app)
    root = Path(__file__).resolve().parents[2] / "docs" / "runbooks"
    assert sorted(p.stem for p in root.glob("*.md") if p.name != "README.md") == sorted(RUNBOOKS)
    seen = 0
    for p in root.glob("*.md"):
        text = p.read_text()
        for m in re.finditer(r"^\s*invguard ([a-z-]+)(?: ([a-z-]+))?", text, re.M):
            group, sub = m.group(1), m.group(2)
            cmd = cli.commands.get(group)  # type: ignore[attr-defined]
            assert cmd is not None, f"{p.name}: no command `invguard {group}`"
            if hasattr(cmd, "commands") and sub is not None:
                assert sub in cmd.commands, f"{p.name}: no command `invguard {group} {sub}`"
            seen += 1
    assert seen >= 25


def test_doc_key_paths_are_the_ones_examples_guard_yaml_creates():
    """Every `--public-key`/`--chain-key` in the runbooks and README is what examples/guard.yaml makes."""
    from invguard.guard.auditlog import chain_key_path
    from invguard.guard.config import load
    from invguard.guard.keys import key_paths

    repo = Path(__file__).resolve().parents[2]
    cfg = load(repo / "examples" / "guard.yaml")
    signing, _ = key_paths(cfg.audit.path, cfg.audit.signing_key, cfg.audit.hash_key)
    want = {
        "--public-key": Path(os.path.relpath(signing, repo)).as_posix() + ".pub",
        "--chain-key": Path(
            os.path.relpath(chain_key_path(cfg.audit.path, cfg.audit.chain_key), repo)
        ).as_posix(),
    }
    assert want == {
        "--public-key": "audit-keys/guard.ed25519.pem.pub",
        "--chain-key": "audit-keys/guard.chain-key",
    }
    docs = [repo / "README.md", *sorted((repo / "src/invguard/guard/ops/runbooks").glob("*.md"))]
    seen = 0
    for doc in docs:
        for m in re.finditer(r"(--public-key|--chain-key)[ =](audit-keys/\S+)", doc.read_text()):
            assert m.group(2) == want[m.group(1)], f"{doc.name}: {m.group(0)}"
            seen += 1
    assert seen >= 20
