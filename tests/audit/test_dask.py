"""The same audit through a Dask LocalCluster gives the same results as the local process pool."""

from __future__ import annotations

import pytest

from invguard.core.errors import ConfigError


def _numbers(results):
    main = {a["job"]: (a["status"], a["metrics"], a["queries_used"]) for a in results["attacks"]}
    sweep = {
        r["exposure"]: (r["status"], r["metrics"], r["utility"]) for r in results["exposure_sweep"]["rows"]
    }
    return main, sweep, [(g["gate"], g["status"], g["observed"]) for g in results["gates"]]


def test_dask_local_cluster_matches_the_process_pool(passing_run, tmp_path):
    from distributed import LocalCluster

    from invguard.audit.runner import run_audit

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        run = run_audit(
            passing_run["config"], scheduler=cluster.scheduler_address, out_dir=tmp_path, history=False
        )
    assert run.results["provenance"]["executor"].startswith(f"Dask cluster at {cluster.scheduler_address}")
    assert "(2 workers)" in run.results["provenance"]["executor"]
    workers = {a["worker"] for a in run.results["attacks"] + run.results["exposure_sweep"]["jobs"]}
    assert len(workers) >= 1
    assert _numbers(run.results) == _numbers(passing_run["results"])
    # the audit's total budget: the same shares as in the local pool, the same queries, never exceeded
    jobs = run.results["attacks"] + run.results["exposure_sweep"]["jobs"]
    local = passing_run["results"]["attacks"] + passing_run["results"]["exposure_sweep"]["jobs"]
    assert run.results["provenance"]["budget"] == passing_run["results"]["provenance"]["budget"]
    assert [(j["budget"], j["job_queries"]) for j in jobs] == [(j["budget"], j["job_queries"]) for j in local]
    assert all(j["job_queries"] <= j["budget"] for j in jobs)
    assert run.results["provenance"]["queries_total"] == passing_run["results"]["provenance"]["queries_total"]
    assert run.results["provenance"]["queries_total"] <= 20000
    # the attack's own jobs (RunContext.map) went to the cluster too; in the local pool they ran in-process
    assert all(
        w.startswith("dask:tcp://127.0.0.1:")
        for w in run.results["attacks"][0]["info"]["evaluators_fitted_on"]
    )
    assert passing_run["results"]["attacks"][0]["info"]["evaluators_fitted_on"] == [
        "in-process",
        "in-process",
    ]
    assert run.exit_code == 0


def test_unreachable_scheduler_is_a_usage_error(passing_run, tmp_path):
    import socket

    from invguard.audit.runner import run_audit

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConfigError, match=rf"--scheduler tcp://127.0.0.1:{port}: cannot connect to the Dask"):
        run_audit(
            passing_run["config"],
            scheduler=f"tcp://127.0.0.1:{port}",
            out_dir=tmp_path,
            history=False,
            connect_timeout=1.0,
        )
