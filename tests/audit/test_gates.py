"""CI-aware gates and the verdict's headline (gates and findings together), on results JSON alone."""

from __future__ import annotations

import pytest

from invguard.audit.config import GateConfig
from invguard.audit.gates import evaluate, verdict


def _attack(name, metric, value, low, high, **extra):
    return {
        "attack": name,
        "status": "ok",
        "sweep": False,
        "metrics": {metric: {"value": value, "low": low, "high": high}},
        **extra,
    }


def _gate(text, **kw):
    g = GateConfig.model_validate(text)
    return g.model_copy(update=kw) if kw else g


@pytest.mark.parametrize(
    ("value", "low", "high", "status", "decided_on"),
    [
        (0.05, 0.02, 0.08, "pass", "high"),  # the whole CI is below: a clear pass
        (0.35, 0.25, 0.45, "fail", "low"),  # the whole CI is above: a clear fail
        (0.0, -0.278, 0.278, "inconclusive", "high"),  # the demo's straddling interval
        (0.19, 0.12, 0.26, "inconclusive", "high"),  # a point estimate that passes is not enough
    ],
)
def test_a_gate_decides_on_the_conservative_end_of_its_interval(value, low, high, status, decided_on):
    g = _gate("inversion.blackbox.lift_over_prior <= 0.2 high")
    out = evaluate([g], [_attack("inversion.blackbox", "lift_over_prior", value, low, high)])[0]
    assert (out.status, out.decided_on, out.observed) == (status, decided_on, value)


def test_a_lower_bound_gate_reads_the_lower_end():
    g = _gate("inversion.whitebox.knn_distance >= 1.0")
    ok = evaluate([g], [_attack("inversion.whitebox", "knn_distance", 1.4, 1.1, 1.7)])[0]
    mid = evaluate([g], [_attack("inversion.whitebox", "knn_distance", 1.2, 0.9, 1.5)])[0]
    assert (ok.status, ok.decided_on, mid.status) == ("pass", "low", "inconclusive")


def test_an_inconclusive_gate_says_how_much_more_data_would_settle_it():
    g = _gate("membership.lira.tpr_at_fpr_0.01 <= 0.05")
    a = _attack(
        "membership.lira", "tpr_at_fpr_0.01", 0.03, 0.01, 0.07, info={"candidates": 500, "members": 250}
    )
    out = evaluate([g], [a])[0]
    # the upper arm (0.04) must shrink to the gap (0.02): (0.04 / 0.02)^2 = 4x the data
    assert out.status == "inconclusive"
    assert out.message == (
        "membership.lira.tpr_at_fpr_0.01 = 0.03 [0.01, 0.07]: the interval straddles <= 0.05, so the data "
        "cannot tell whether the gate holds"
    )
    assert (
        out.settle == "about 4.0x as much data (about 2,000 records instead of 500) would settle it, "
        "if the estimate holds"
    )


def test_on_estimate_decides_on_the_point_estimate_and_says_the_interval_straddles():
    g = _gate("inversion.blackbox.lift_over_prior <= 0.2", on="estimate")
    out = evaluate([g], [_attack("inversion.blackbox", "lift_over_prior", 0.0, -0.278, 0.278)])[0]
    assert (out.status, out.decided_on) == ("pass", "estimate")
    assert "its 95% CI straddles the threshold" in out.message
    assert g.expression == "inversion.blackbox.lift_over_prior <= 0.2 (on the estimate)"


def test_tpr_below_the_smallest_fpr_step_is_not_measurable_and_never_passes():
    # the demo's critical gate: 0.009 [0.004, 0.026] with 269 non-members cannot measure FPR 0.001
    g = _gate("membership.lira.tpr_at_fpr_0.001 <= 0.01 critical")
    a = _attack(
        "membership.lira", "tpr_at_fpr_0.001", 0.009, 0.004, 0.026, info={"candidates": 539, "members": 270}
    )
    out = evaluate([g], [a])[0]
    assert out.status == "inconclusive" and out.blocking
    assert out.message.startswith("membership.lira.tpr_at_fpr_0.001 is not measurable at this sample size: ")
    assert out.settle == "at least 1,000 non-members would make it measurable"
    # with enough non-members the same numbers are judged on their interval (here: straddling)
    a["info"] = {"candidates": 3000, "members": 1000}
    assert evaluate([g], [a])[0].message.endswith("cannot tell whether the gate holds")


def test_the_old_bound_field_is_refused_with_what_to_write_instead():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="write on: estimate to decide on the point estimate"):
        GateConfig.model_validate({"metric": "a.b.c", "threshold": 1, "bound": "high"})


def test_the_headline_lists_findings_beside_the_gates():
    gates = [_gate("membership.lira.tpr_at_fpr_0.01 <= 0.5"), _gate("membership.lira.auc <= 0.9 low")]
    attacks = [
        {
            "attack": "membership.lira",
            "status": "ok",
            "metrics": {
                "tpr_at_fpr_0.01": {"value": 0.037, "low": 0.02, "high": 0.06},
                "auc": {"value": 0.6, "low": 0.55, "high": 0.65},
            },
            "findings": [
                {
                    "title": "Training membership is exposed",
                    "detail": "TPR 0.037 at 1% FPR",
                    "severity": "medium",
                },
                {"title": "Most exposed training records", "detail": "#1, #2", "severity": "info"},
            ],
        }
    ]
    from invguard.audit.gates import notable_findings

    v = verdict(evaluate(gates, attacks), notable_findings(attacks))
    assert v["status"] == "pass" and v["passed"]
    assert v["headline"] == (
        "PASS: 2 of 2 gates pass; 1 medium finding: Training membership is exposed (membership.lira)"
    )
    assert [f["severity"] for f in v["findings"]] == ["medium"]  # info findings stay in the body


def test_an_inconclusive_blocking_gate_means_the_audit_does_not_pass():
    g = _gate("inversion.blackbox.lift_over_prior <= 0.2 high")
    out = evaluate([g], [_attack("inversion.blackbox", "lift_over_prior", 0.0, -0.278, 0.278)])
    v = verdict(out)
    assert (v["passed"], v["status"], v["gates_inconclusive"]) == (False, "inconclusive", 1)
    assert v["headline"] == (
        "INCONCLUSIVE: 0 of 1 gate pass; 1 inconclusive (inversion.blackbox.lift_over_prior <= 0.2); "
        "no findings"
    )


def test_an_unquoted_on_key_in_yaml_is_the_gate_field():
    import yaml

    raw = yaml.safe_load("metric: membership.threshold.auc\nthreshold: 0.6\non: estimate\n")
    assert True in raw  # YAML 1.1 reads `on` as a boolean key
    assert GateConfig.model_validate(raw).on == "estimate"


def test_every_report_opens_with_the_same_headline_and_findings(passing_run):
    import xml.etree.ElementTree as ET

    doc = passing_run["results"]
    v = doc["verdict"]
    assert v["findings"], "the tiny audit's prototype attack reports a medium finding"
    title = v["findings"][0]["title"]
    assert v["headline"].startswith("PASS: 2 of 2 gates pass; 1 medium finding: ")
    out = passing_run["out"]
    assert v["headline"] in (out / "summary.md").read_text()
    html = (out / "report.html").read_text()
    assert v["gates_summary"] in html and title in html.split('id="gates"')[0]  # in the banner
    suite = ET.parse(out / "junit.xml").getroot().find("testsuite")
    props = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert props["verdict"] == v["headline"] and props["finding.1"].startswith(f"medium: {title}")
    assert suite.find("system-out").text.splitlines()[0] == v["headline"]
    console = " ".join(passing_run["result"].output.split())
    assert " ".join(v["headline"].split()) in console
