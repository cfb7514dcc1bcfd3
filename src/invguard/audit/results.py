"""The results document assembled from an audit's job outputs: the exposure sweep's table and
recommendation, the gate outcomes, the verdict and the provenance. ``invguard.report`` reads the
document this writes and never the audit's live objects (see ``invguard.report.json`` for the
schema, reading and writing).
"""

from __future__ import annotations

import contextlib
import platform
import sys
import time
from importlib import metadata
from typing import Any

from invguard.audit.config import exposure_label
from invguard.audit.gates import evaluate, evaluate_one, notable_findings, unfinished, verdict
from invguard.core.result import GateOutcome
from invguard.report.json import RESULTS_FORMAT, RESULTS_VERSION


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("invguard", "numpy", "torch", "scikit-learn", "scipy", "pydantic", "dask", "distributed"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    if "invguard" not in out:
        from invguard import __version__

        out["invguard"] = __version__
    return out


def _row_metric(metrics: dict[str, Any], name: str) -> dict[str, Any] | None:
    m = metrics.get(name)
    return None if m is None else {"value": m.get("value"), "low": m.get("low"), "high": m.get("high")}


_STATUS_RANK = {"fail": 0, "error": 1, "inconclusive": 2, "pass": 3}


def _row_status(row: dict[str, Any]) -> str:
    """A sweep row's worst gate status (``pass`` when it has no gate or none applies)."""
    return min((g["status"] for g in row["gates"]), key=lambda s: _STATUS_RANK.get(s, 1), default="pass")


def _worst_row(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The attack that fares worst at one exposure: by its gates, then by the share of its gates'
    threshold its metric reaches (``<=`` gates), in the order the attacks were listed."""

    def key(r: dict[str, Any]) -> tuple[int, float]:
        reach = 0.0
        for g in r["gates"]:
            m = r["metrics"].get(g.get("metric", ""), {}) or {}
            v, t = m.get("value"), g.get("threshold")
            if isinstance(v, (int, float)) and isinstance(t, (int, float)) and g.get("op") in ("<=", "<"):
                reach = max(reach, v / t if t else float(v > 0))
        return _STATUS_RANK.get(_row_status(r), 1), -reach

    ran = [r for r in rows if r["status"] == "ok"]
    return min(ran, key=key) if ran else None


def _caveat(cfg: Any) -> str:
    """What the recommendation does not cover: the gates on attacks the sweep did not run."""
    swept = set(cfg.exposures.attacks)
    others = sorted({g.attack for g in cfg.gates} - swept)
    base = f"It weighs only the attacks swept ({', '.join(sorted(swept))})"
    if not others:
        return base + "; attacks outside the sweep were not weighed."
    return base + f"; the gates on {', '.join(others)} were checked as deployed only and still apply."


def _target_privacy(target: Any) -> dict[str, Any]:
    """What the model's training spent (DP accounting) and how it was defended, when known."""
    opts = getattr(target, "options", None) or {}
    if "defence" not in opts:
        return {}
    from invguard.metrics.privacy import describe_privacy

    return {
        "defence": opts["defence"],
        "privacy": opts.get("privacy"),
        "privacy_statement": describe_privacy(opts.get("privacy")),
    }


def build_sweep(cfg: Any, outputs: list[dict[str, Any]], fail_on: str) -> dict[str, Any]:
    """The exposure sweep: one row per (exposure, attack), the per-exposure gate check and the
    recommended policy (the least restrictive exposure, in config order, that passes every gate)."""
    rows: list[dict[str, Any]] = []
    exposures: list[dict[str, Any]] = []
    for pol in cfg.exposures.policies:
        label = exposure_label(pol)
        here = [o for o in outputs if o.get("exposure") == label]
        util: dict[str, Any] = next((o["utility"] for o in here if "utility" in o), {})
        problems: list[str] = []
        for o in here:
            metrics = o.get("metrics", {}) if o.get("status") == "ok" else {}
            row = {
                "exposure": label,
                "policy": pol,
                "access": o.get("access"),
                "attack": o["attack"],
                "attack_used": o.get("attack_used") or o["attack"],
                "status": o.get("status"),
                "error": o.get("error"),
                "metrics": metrics,
                "attack_accuracy": _row_metric(metrics, "attack_accuracy"),
                "knn_distance": _row_metric(metrics, "knn_distance"),
                "utility": util.get("utility"),
                "argmax_agreement": util.get("argmax_agreement"),
                "gates": [],
            }
            for g in cfg.gates:
                if g.attack != o["attack"]:
                    continue
                if o.get("status") == "not_applicable":
                    row["gates"].append(
                        {
                            "gate": g.expression,
                            "status": "pass",
                            "message": "not applicable: " + str(o.get("error")),
                        }
                    )  # an attack this exposure cannot run is no leak through it
                    continue
                oc = evaluate_one(
                    g,
                    metrics if o.get("status") == "ok" else None,
                    status=o.get("status", "ok"),
                    error=o.get("error"),
                    fail_on=fail_on,
                    info=o.get("info"),
                )
                row["gates"].append(
                    {
                        "gate": g.expression,
                        "metric": g.metric_name,
                        "op": g.op,
                        "threshold": g.threshold,
                        "status": oc.status,
                        "message": oc.message,
                    }
                )
                if oc.status != "pass" and oc.blocking:
                    problems.append(f"{g.expression}: {oc.message}")
            rows.append(row)
        access = next((o.get("access") for o in here if o.get("access")), None)
        mine = [r for r in rows if r["exposure"] == label]
        worst = _worst_row(mine)
        exposures.append(
            {
                "exposure": label,
                "policy": pol,
                "access": access,
                "utility": util.get("utility"),
                "baseline_utility": util.get("baseline_utility"),
                "argmax_agreement": util.get("argmax_agreement"),
                "passes_gates": not problems,
                "problems": problems,
                "attacks_run": [r["attack_used"] for r in mine if r["status"] == "ok"],
                "worst_attack": None if worst is None else worst["attack_used"],
                "worst_status": None if worst is None else _row_status(worst),
            }
        )
    recommended = None
    for i, e in enumerate(exposures):
        if e["passes_gates"]:
            base = e.get("baseline_utility")
            cost = None if base is None or e["utility"] is None else base - e["utility"]
            recommended = {
                "exposure": e["exposure"],
                "policy": e["policy"],
                "access": e["access"],
                "utility": e["utility"],
                "baseline_utility": base,
                "utility_cost": cost,
                "reason": "the least restrictive exposure (in the order listed) that passes every gate "
                "the sweep checks"
                if i
                else "even the least restrictive exposure listed passes every gate the sweep checks, so "
                "the sweep found no reason to restrict the output",
                "caveat": _caveat(cfg),
            }
            break
    return {
        "attacks": list(cfg.exposures.attacks),
        "rows": rows,
        "exposures": exposures,
        "recommended": recommended,
        "note": None
        if recommended
        else "Restrict the output further, or retrain the model (e.g. with differential privacy).",
    }


def build_results(
    cfg: Any,
    outputs: list[dict[str, Any]],
    *,
    splits: Any,
    target: Any,
    target_described: str,
    started: float,
    timings: dict[str, float],
    executor: str,
    config_text: str | None,
    budget: dict[str, Any] | None = None,
    probe_rows: int = 1,
    endpoint_changed: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble the results document from the job outputs (see the schema for every field).

    ``endpoint_changed``: the closing probe found the endpoint answering differently than the first
    (``runner.endpoint_change``); recorded under ``audit`` and the verdict is never a pass."""
    attacks = [o for o in outputs if not o.get("sweep")]
    sweep_outs = [o for o in outputs if o.get("sweep")]
    sweep = build_sweep(cfg, sweep_outs, cfg.fail_on) if cfg.exposures is not None else None
    main_names = {a["attack"] for a in attacks}
    outcomes: list[GateOutcome] = []
    for g in cfg.gates:
        if g.attack in main_names:
            outcomes.extend(evaluate([g], attacks, fail_on=cfg.fail_on))
            continue
        # a gate on an attack that only runs in the sweep is checked at the first (deployed) exposure
        first = next((o for o in sweep_outs if o["attack"] == g.attack), None)
        oc = evaluate_one(
            g,
            None if first is None else first.get("metrics", {}),
            status="ok" if first is None else first.get("status", "ok"),
            error=None if first is None else first.get("error"),
            fail_on=cfg.fail_on,
            info=None if first is None else first.get("info"),
        )
        if first is not None:
            oc = GateOutcome(**{**oc.to_json(), "message": f"{oc.message} (at exposure {first['exposure']})"})
        outcomes.append(oc)
    finished = time.time()
    per_attack = [
        {
            "job": o["job"],
            "attack": o["attack"],
            "exposure": o.get("exposure"),
            "status": o.get("status"),
            "wall_time_s": o.get("wall_time_s"),
            "job_wall_time_s": o.get("job_wall_time_s"),
            "queries": o.get("queries_used"),
            "job_queries": o.get("job_queries"),
            "budget": o.get("budget"),
        }
        for o in outputs
    ]
    queries_total = probe_rows + sum(int(o.get("job_queries") or 0) for o in outputs)
    return {
        "format": RESULTS_FORMAT,
        "schema_version": RESULTS_VERSION,
        "audit": {
            "name": cfg.display_name,
            "started_at": started,
            "finished_at": finished,
            "wall_time_s": finished - started,
            "seed": cfg.seed,
            "fail_on": cfg.fail_on,
            "endpoint_changed": endpoint_changed,
        },
        "verdict": verdict(outcomes, notable_findings(attacks), unfinished(outputs), endpoint_changed),
        "target": {
            "kind": target.kind,
            "name": target.name,
            "model_key": cfg.target.name or target.name,
            "access": target_described,
            "model_digest": target.digest,
            **_target_privacy(target),
        },
        "data": splits.provenance(),
        "attacks": attacks,
        "exposure_sweep": sweep if sweep is None else {**sweep, "jobs": sweep_outs},
        "gates": [o.to_json() for o in outcomes],
        "history": None,
        "provenance": {
            "config_hash": cfg.digest(),
            "config": cfg.model_dump(mode="json"),
            "config_text": config_text,
            "packages": _versions(),
            "platform": f"{platform.system()} {platform.machine()}",
            "executor": executor,
            "seed": cfg.seed,
            "timings": {**timings, "per_attack": per_attack},
            "queries": {o["job"]: o.get("job_queries", o.get("queries_used")) for o in outputs},
            "queries_total": queries_total,
            "budget": budget,
            "argv": list(sys.argv),
        },
    }
