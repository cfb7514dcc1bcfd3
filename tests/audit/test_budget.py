"""The audit's query budget is a total: divided among the jobs up front (each share stated in the
results), never exceeded locally or on Dask; a job that runs out ends as budget exhausted with what
it reached, and the finished jobs are written."""

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
    folder = tmp_path_factory.mktemp("budget")
    path = _config(folder, 300)
    r = runner.invoke(app, ["audit", str(path), "--no-history"])
    return path, r, json.loads((folder / "out" / "results.json").read_text())


def test_a_total_budget_is_divided_among_the_jobs_and_never_exceeded(budgeted):
    _, r, doc = budgeted
    assert r.exit_code == 0, r.output
    budget = doc["provenance"]["budget"]
    # explicit shares for the two attacks, the rest (2400 - 1 probe - 550) split over the two sweep jobs
    assert budget["shares"] == {"a0": 300, "a1": 250, "s0:test.prototype": 925, "s1:test.prototype": 924}
    for j in _jobs(doc):
        assert j["status"] in ("ok", "not_applicable"), j.get("error")
        assert j["job_queries"] <= j["budget"] == budget["shares"][j["job"]]
    assert doc["provenance"]["queries_total"] == 1 + sum(j["job_queries"] for j in _jobs(doc)) <= 2400
    assert doc["attacks"][0]["job_queries"] == 210 and doc["attacks"][1]["job_queries"] == 200


def test_the_same_budget_holds_on_a_dask_cluster(budgeted, tmp_path):
    from distributed import LocalCluster

    from invguard.audit.runner import run_audit

    path, _, local = budgeted
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        run = run_audit(path, scheduler=cluster.scheduler_address, out_dir=tmp_path, history=False)
    doc = run.results
    assert doc["provenance"]["budget"] == local["provenance"]["budget"]
    assert {j["job"]: j["job_queries"] for j in _jobs(doc)} == {
        j["job"]: j["job_queries"] for j in _jobs(local)
    }
    assert doc["provenance"]["queries_total"] <= 2400 and run.exit_code == 0


def test_a_job_that_runs_out_stops_with_what_it_reached_and_the_others_are_written(tmp_path):
    path = _config(tmp_path / "short", 100)  # 100 queries: the prototype search stops in class 5
    r = runner.invoke(app, ["audit", str(path), "--no-history"])
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output
    doc = json.loads((tmp_path / "short" / "out" / "results.json").read_text())
    proto, conf = doc["attacks"]
    assert proto["status"] == "budget_exhausted"
    assert "query budget exhausted: 97 of 100 queries used, this request needs 4 more" in proto["error"]
    assert proto["partial"] == {"progress": {"task": "classes", "done": 4, "total": 10}, "queries_used": 97}
    assert conf["status"] == "ok" and "auc" in conf["metrics"]  # finished: kept and reported
    assert doc["verdict"]["headline"].endswith(
        "1 attack did not finish (test.prototype: budget exhausted, partial)"
    )
    assert [g["status"] for g in doc["gates"]] == ["error", "pass"]
    assert doc["provenance"]["queries_total"] <= 2400
    html = (tmp_path / "short" / "out" / "report.html").read_text()
    assert "budget_exhausted" in html and "1 attack did not finish" in html
