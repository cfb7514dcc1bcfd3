"""The audit's query budget is a total: divided among the jobs up front (each share stated in the
results) and never exceeded (on Dask too: tests/audit/test_dask.py); a job that runs out ends as
budget exhausted with what it reached, and the finished jobs are written."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from invguard.audit.runner import allocate_budget
from invguard.cli import app
from tests.audit.conftest import write_config

runner = CliRunner()
PROTO = {"steps": 5, "population": 4}  # 1 + 5 * 4 = 21 queries per class, 210 for the ten classes


def _config(folder, prototype_share):
    return write_config(
        folder,
        target={"name": "tiny-digits", "model": "reference/digits-mlp", "budget": 2400},
        attacks=[
            {"name": "test.prototype", "params": PROTO, "budget": prototype_share},
            {"name": "test.confidence", "params": {"records": 100}, "budget": 250},
        ],
        exposures={
            "attacks": ["test.prototype"],
            "policies": ["logits", "label_only"],
            "params": {"test.prototype": PROTO},
        },
        gates=["test.prototype.attack_accuracy <= 1.0", "test.confidence.auc <= 1.0"],
    )


def _jobs(results):
    return results["attacks"] + results["exposure_sweep"]["jobs"]


def test_shares_are_decided_up_front_and_never_add_up_to_more_than_the_total():
    assert allocate_budget(None, [None, 5]) == [None, None]
    assert allocate_budget(100, [None, None, None]) == [33, 33, 33]  # 99: one query is the probe
    assert allocate_budget(100, [40, None, None]) == [40, 30, 29]
    assert sum(allocate_budget(7, [None] * 10)) == 6


@pytest.fixture(scope="module")
def budgeted(tmp_path_factory):
    """One audit whose prototype attack gets 100 queries (it needs 210): that job runs out in class
    5; the others finish within their shares."""
    folder = tmp_path_factory.mktemp("budget")
    path = _config(folder, 100)
    r = runner.invoke(app, ["audit", str(path), "--no-history"])
    return path, r, json.loads((folder / "out" / "results.json").read_text()), folder


def test_a_total_budget_is_divided_among_the_jobs_and_never_exceeded(budgeted):
    _, _, doc, _ = budgeted
    budget = doc["provenance"]["budget"]
    # explicit shares for the two attacks, the rest (2400 - 1 probe - 350) split over the two sweep jobs
    assert budget["shares"] == {"a0": 100, "a1": 250, "s0:test.prototype": 1025, "s1:test.prototype": 1024}
    for j in _jobs(doc):
        assert j["job_queries"] <= j["budget"] == budget["shares"][j["job"]]
    assert [j["status"] for j in _jobs(doc)] == ["budget_exhausted", "ok", "ok", "not_applicable"]
    assert doc["provenance"]["queries_total"] == 1 + sum(j["job_queries"] for j in _jobs(doc)) <= 2400
    assert [j["job_queries"] for j in _jobs(doc)] == [97, 200, 210 + 539, 539]


def test_a_job_that_runs_out_stops_with_what_it_reached_and_the_others_are_written(budgeted):
    _, r, doc, folder = budgeted
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output
    proto, conf = doc["attacks"]
    assert proto["status"] == "budget_exhausted"
    assert "query budget exhausted: 97 of 100 queries used, this request needs 4 more" in proto["error"]
    assert proto["partial"] == {"progress": {"task": "classes", "done": 4, "total": 10}, "queries_used": 97}
    assert conf["status"] == "ok" and "auc" in conf["metrics"]  # finished: kept and reported
    assert doc["verdict"]["headline"].endswith(
        "1 attack did not finish (test.prototype: budget exhausted, partial)"
    )
    assert [g["status"] for g in doc["gates"]] == ["error", "pass"]
    html = (folder / "out" / "report.html").read_text()
    assert "budget_exhausted" in html and "1 attack did not finish" in html
