"""``invguard tradeoff config.yaml``: which defence, and what does it cost?

For every setting of a sweep (epsilons, e.g. ``inf, 8, 4, 2, 1``, crossed with any other defence
knob), one job trains the model under that defence (:mod:`invguard.models.defended`) on the members
plus random canaries, then measures it: utility (held-out accuracy on the non-members, with a
Wilson CI), every configured attack's metrics with their CIs (run on the trained model as a
white-box target), the one-run empirical epsilon of its canaries beside the accountant's epsilon
(:mod:`invguard.defences.one_run`, reported as the pseudo-attack ``dp.one_run``), and the training
cost (wall and CPU time, and its ratio to the non-private setting). The jobs go through the same
executor as the audit (a local process pool, or a Dask cluster with ``--scheduler``).

The recommendation follows the exposure sweep's honesty rules: a setting qualifies only when every
gate *passes* on the conservative end of its 95% CI (a straddling interval is inconclusive, a
metric that could not be measured is an error: neither passes) and its utility's lower CI end is at
least the floor (``utility_floor``, or ``max_utility_drop`` below the non-private setting's
estimate). Among qualifying settings the cheapest to train (CPU time) is recommended, the more
useful one on a tie; when none qualifies the report says so. Reports: ``tradeoff.json``,
``tradeoff.html`` (table, Pareto chart of utility against leakage with training cost as marker
size), ``tradeoff.md`` and ``junit.xml`` (one testcase per setting).

.. code-block:: yaml

    name: digits-dp
    data: {dataset: digits}
    model: {arch: mlp, hidden: [128]}
    defence: {batch_size: 128, lr: 0.003, epochs: 30}   # common to every setting
    sweep: {epsilon: [inf, 8, 4, 2, 1]}
    canaries: {count: 300}
    attacks: [{name: membership.lira, params: {n_models: 4}}]
    gates: ["membership.lira.tpr_at_fpr_0.01 <= 0.05", "dp.one_run.epsilon_one_run <= 4"]
    utility_floor: 0.8
"""

from __future__ import annotations

import itertools
import json
import math
import multiprocessing
import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from invguard.audit.config import (
    SEVERITIES,
    AttackConfig,
    DataConfig,
    GateConfig,
    _Strict,
)
from invguard.configfile import read_yaml, validate
from invguard.core.errors import ConfigError

ONE_RUN = "dp.one_run"
KNOBS = (
    "epsilon",
    "max_grad_norm",
    "weight_decay",
    "label_smoothing",
    "augment",
    "early_stopping",
    "accountant",
)
FORMATS = ("json", "html", "markdown", "junit")
FILENAMES = {
    "json": "tradeoff.json",
    "html": "tradeoff.html",
    "markdown": "tradeoff.md",
    "junit": "junit.xml",
}


# ---------------------------------------------------------------------------------------- config


class SweepConfig(_Strict):
    """The grid: every combination of the listed values is one setting (``inf``: no DP)."""

    epsilon: list[float | str] = Field(default_factory=lambda: ["inf"])  # type: ignore[arg-type]
    max_grad_norm: list[float] | None = None
    weight_decay: list[float] | None = None
    label_smoothing: list[float] | None = None
    augment: list[str] | None = None
    early_stopping: list[int | None] | None = None
    accountant: list[str] | None = None

    @field_validator("epsilon")
    @classmethod
    def _eps(cls, v: list[Any]) -> list[Any]:
        for e in v:
            if isinstance(e, str) and e.strip().lower() not in ("inf", "infinity", "none"):
                raise ValueError(f"epsilon values are numbers or inf, got {e!r}")
        return v


class CanaryConfig(_Strict):
    count: int = Field(0, ge=0, description="canaries for the one-run audit (0: no one-run audit)")
    kind: Literal["mislabelled", "ood"] = "mislabelled"
    n_boot: int = Field(200, ge=0)


class OutputConfig(_Strict):
    dir: str = "reports/tradeoff"
    formats: list[Literal["json", "html", "markdown", "junit"]] = Field(
        default_factory=lambda: list(FORMATS)  # type: ignore[arg-type]
    )


class TradeoffConfig(_Strict):
    name: str = "tradeoff"
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)  # type: ignore[arg-type]
    model: dict[str, Any] = Field(default_factory=lambda: {"arch": "mlp", "hidden": [128]})
    defence: dict[str, Any] = Field(default_factory=dict, description="defence settings common to all")
    sweep: SweepConfig = Field(default_factory=SweepConfig)
    canaries: CanaryConfig = Field(default_factory=CanaryConfig)  # type: ignore[arg-type]
    attacks: list[AttackConfig] = Field(default_factory=list)
    gates: list[GateConfig] = Field(default_factory=list)
    fail_on: Literal["low", "medium", "high", "critical"] = "low"
    utility_floor: float | None = Field(None, ge=0, le=1, description="lowest acceptable held-out accuracy")
    max_utility_drop: float | None = Field(None, ge=0, le=1, description="or: largest drop below non-private")
    cache_dir: str = ".invguard/cache"
    max_workers: int | None = Field(None, ge=1)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @field_validator("attacks", mode="before")
    @classmethod
    def _attack_shorthand(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [{"name": a} if isinstance(a, str) else a for a in v]
        return v

    @field_validator("defence")
    @classmethod
    def _defence(cls, v: dict[str, Any]) -> dict[str, Any]:
        from invguard.models.defended import Defence

        try:
            Defence.from_dict(v, "defence")
        except ConfigError as e:
            raise ValueError(str(e).removeprefix("defence: ")) from None
        return v

    @model_validator(mode="after")
    def _cross(self) -> TradeoffConfig:
        if self.utility_floor is not None and self.max_utility_drop is not None:
            raise ValueError("give utility_floor or max_utility_drop, not both")
        names = {a.name for a in self.attacks} | ({ONE_RUN} if self.canaries.count else set())
        unknown = sorted({g.attack for g in self.gates} - names)
        if unknown:
            hint = f" ({ONE_RUN} needs canaries.count > 0)" if ONE_RUN in unknown else ""
            raise ValueError(
                f"gates refer to attacks that are not run: {unknown}{hint}; run: {sorted(names)}"
            )
        for s in settings_of(self):
            s.defence()  # every combination must be a valid defence
        return self


def load_tradeoff_config(path: str | Path) -> TradeoffConfig:
    """Read and validate a trade-off config; every problem at once, with its field path and line."""
    p = Path(path)
    raw, text = read_yaml(p, "config file")
    try:
        return validate(TradeoffConfig, raw, source=str(p), what="trade-off config", text=text)
    except ConfigError as e:
        if str(e).startswith(f"{p}: "):  # the loader's own report of every problem
            raise
        raise ConfigError(f"{p}: {e}") from None


# -------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Setting:
    id: str
    knobs: dict[str, Any]
    common: dict[str, Any]

    def defence(self) -> Any:
        from invguard.models.defended import Defence

        return Defence.from_dict({**self.common, **self.knobs}, f"setting {self.id}")

    @property
    def private(self) -> bool:
        return self.knobs.get("epsilon") is not None

    def label(self) -> str:
        return str(self.defence().label())


def _eps_value(e: Any) -> float | None:
    if isinstance(e, str) or e is None or (isinstance(e, float) and math.isinf(e)):
        return None
    return float(e)


def settings_of(cfg: TradeoffConfig) -> list[Setting]:
    """The sweep's grid, in config order (epsilon outermost)."""
    axes: list[tuple[str, list[Any]]] = [("epsilon", [_eps_value(e) for e in cfg.sweep.epsilon])]
    for k in KNOBS[1:]:
        vals = getattr(cfg.sweep, k)
        if vals:
            axes.append((k, list(vals)))
    out = []
    for i, combo in enumerate(itertools.product(*(v for _, v in axes))):
        knobs = dict(zip((k for k, _ in axes), combo, strict=True))
        out.append(Setting(f"s{i}", knobs, dict(cfg.defence)))
    return out


# ------------------------------------------------------------------------------------------- jobs


@dataclass(frozen=True)
class TrainJob:
    """One setting: train, then measure. Module-level and picklable (process pool or Dask)."""

    setting: Setting
    spec: dict[str, Any]
    splits: Any
    canaries: dict[str, Any]
    attacks: list[tuple[str, dict[str, Any], int | None]]
    seed: int
    cache_dir: str | None


def run_setting(job: TrainJob) -> dict[str, Any]:
    """Train one setting and measure it; failures are reported in the row, never raised."""
    import torch

    from invguard.core.errors import InvguardError

    if multiprocessing.parent_process() is not None or _in_dask():
        torch.set_num_threads(1)  # one job per core
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    row: dict[str, Any] = {
        "id": job.setting.id,
        "knobs": {k: ("inf" if k == "epsilon" and v is None else v) for k, v in job.setting.knobs.items()},
        "label": job.setting.label(),
        "private": job.setting.private,
        "threads": torch.get_num_threads(),
    }
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        _warm_up(job.spec, job.splits)
        row.update(_measure(job))
        row["status"] = "ok"
    except InvguardError as e:
        row.update(status="error", error=f"{type(e).__name__}: {e}")
    except Exception as e:
        row.update(
            status="crashed", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc(limit=8)
        )
    row["job_wall_time_s"] = time.perf_counter() - t0
    row["job_cpu_time_s"] = time.process_time() - c0  # training and every measurement of the setting
    return row


def _warm_up(spec: dict[str, Any], splits: Any) -> None:
    """Load Opacus and run torch's first training step before the cost is measured, so that no
    setting pays the process's one-time start-up (the first job of each worker would)."""
    import opacus  # noqa: F401
    import torch

    from invguard.models.nets import build

    with torch.random.fork_rng(devices=[]):
        m = build(spec)
        x = torch.as_tensor(splits.members.X[:8], dtype=torch.float32)
        loss = torch.nn.functional.cross_entropy(m(x), torch.as_tensor(splits.members.y[:8]))
        loss.backward()  # type: ignore[no-untyped-call]


def _in_dask() -> bool:
    try:
        from distributed import get_worker

        get_worker()
        return True
    except (ImportError, ValueError):
        return False


def _measure(job: TrainJob) -> dict[str, Any]:
    from invguard.attacks import ATTACKS, RunContext
    from invguard.defences.one_run import (
        canary_scores,
        judge_one_run,
        make_canaries,
        module_logits,
        with_canaries,
    )
    from invguard.metrics.stats import proportion_metric
    from invguard.models.defended import fit_defended
    from invguard.models.train import accuracy
    from invguard.targets import TorchTarget

    splits = job.splits
    defence = job.setting.defence()
    can = None
    if job.canaries.get("count", 0):
        can = make_canaries(
            splits, int(job.canaries["count"]), kind=job.canaries.get("kind", "mislabelled"), seed=job.seed
        )
    X, y = with_canaries(splits.members.X, splits.members.y, can)
    module, rep = fit_defended(job.spec, X, y, defence, seed=job.seed)
    module.invguard_meta = rep.meta()  # type: ignore[assignment]  # reference models of the attacks read the recipe from here
    n_hold = len(splits.nonmembers)
    correct = round(accuracy(module, splits.nonmembers.X, splits.nonmembers.y) * n_hold)
    utility = proportion_metric(
        correct, n_hold, higher_is_worse=False, description="held-out accuracy on the non-members"
    ).to_json()
    attacks: list[dict[str, Any]] = []
    if can is not None:
        audit = judge_one_run(
            canary_scores(module_logits(module), can),
            can,
            rep.privacy,
            n_boot=int(job.canaries.get("n_boot", 200)),
            seed=job.seed,
        )
        attacks.append(
            {
                "attack": ONE_RUN,
                "status": "ok",
                "metrics": audit.pop("metrics"),
                "findings": audit.pop("findings"),
                "info": audit,
            }
        )
    ctx = RunContext(cache_dir=None if job.cache_dir is None else Path(job.cache_dir))
    for name, params, seed in job.attacks:
        t = time.perf_counter()
        try:
            attack = ATTACKS.get(name)(**params)
            res = attack.run(
                TorchTarget(module, input_shape=splits.input_shape),
                splits,
                seed=seed or job.seed,
                context=ctx,
            )
            j = res.to_json()
            attacks.append(
                {
                    "attack": name,
                    "status": "ok",
                    "metrics": j["metrics"],
                    "findings": j["findings"],
                    "info": {k: v for k, v in j.get("info", {}).items() if _small(v)},
                    "wall_time_s": j["wall_time_s"],
                }
            )
        except Exception as e:  # one attack failing must not lose the setting's other measurements
            attacks.append(
                {
                    "attack": name,
                    "status": "error",
                    "error": f"{type(e).__name__}: {e}",
                    "wall_time_s": time.perf_counter() - t,
                }
            )
    return {
        "utility": utility,
        "train_accuracy": rep.train_accuracy,
        "epochs": rep.epochs,
        "privacy": rep.privacy,
        "defence": rep.defence,
        "cost": {"wall_time_s": rep.wall_time_s, "cpu_time_s": rep.cpu_time_s},
        "attacks": attacks,
    }


def _small(v: Any) -> bool:
    try:
        return len(json.dumps(v, default=str)) < 2000
    except (TypeError, ValueError):
        return False


# ------------------------------------------------------------------------------------------ runner


@dataclass
class TradeoffRun:
    results: dict[str, Any]
    paths: dict[str, Path]

    @property
    def exit_code(self) -> int:
        return 0 if self.results["recommendation"]["setting"] is not None else 1


def run_tradeoff(
    config: TradeoffConfig | str | Path,
    *,
    scheduler: str | None = None,
    out_dir: str | Path | None = None,
    max_workers: int | None = None,
    console: Any = None,
    clock: Any = None,
) -> TradeoffRun:
    """Run the sweep a config describes, decide, and write the reports (see the module docstring).

    Exit code (``TradeoffRun.exit_code``): 0 when a setting is recommended, 1 when none qualifies.
    """
    from rich.console import Console

    from invguard.audit.resolve import resolve_data
    from invguard.audit.runner import make_executor

    console = console or Console(stderr=True)
    cfg = config if isinstance(config, TradeoffConfig) else load_tradeoff_config(config)
    clock = clock or time.time
    started = clock()
    splits = resolve_data(cfg.data, seed=cfg.seed)
    spec = {**cfg.model, "input_shape": list(splits.input_shape), "num_classes": splits.num_classes}
    settings = settings_of(cfg)
    jobs = [
        TrainJob(
            s,
            spec,
            splits,
            cfg.canaries.model_dump(),
            [(a.name, dict(a.params), a.seed) for a in cfg.attacks],
            cfg.seed,
            cfg.cache_dir,
        )
        for s in settings
    ]
    rows: dict[str, dict[str, Any]] = {}
    with make_executor(scheduler, len(jobs), max_workers or cfg.max_workers) as handle:
        console.print(f"training {len(jobs)} settings on {handle.description}", highlight=False)
        futures = {handle.executor.submit(run_setting, j): j for j in jobs}
        from concurrent.futures import as_completed

        for f in as_completed(futures):
            j = futures[f]
            try:
                r = f.result()
            except Exception as e:  # the worker died
                r = {
                    "id": j.setting.id,
                    "label": j.setting.label(),
                    "status": "crashed",
                    "error": f"worker failed: {e}",
                }
            rows[j.setting.id] = r
            console.print(
                f"  {r['label']}: {r['status']} ({r.get('job_wall_time_s', 0.0):.1f} s)", highlight=False
            )
        executor_desc = handle.description
    results = decide(cfg, [rows[s.id] for s in settings])
    results["provenance"] = {
        "config": cfg.model_dump(mode="json"),
        "config_hash": _digest(cfg),
        "data": splits.provenance(),
        "executor": executor_desc,
        "started_at": started,
        "finished_at": clock(),
    }
    out = Path(out_dir) if out_dir is not None else Path(cfg.output.dir)
    from invguard.defences.report import write_reports

    paths = write_reports(results, out, list(cfg.output.formats))
    return TradeoffRun(results, paths)


def _digest(cfg: TradeoffConfig) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(cfg.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------------------------------- decision


def decide(cfg: TradeoffConfig, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Gates, utility floor, cost ratios, the Pareto front and the recommendation (pure on rows)."""
    from invguard.audit.gates import evaluate_one

    base = next((r for r in rows if r.get("status") == "ok" and not r.get("private")), None)
    base_cpu = base["cost"]["cpu_time_s"] if base else None
    floor = cfg.utility_floor
    floor_text = f"held-out accuracy >= {floor:g}" if floor is not None else None
    if cfg.max_utility_drop is not None:
        if base is not None:
            floor = base["utility"]["value"] - cfg.max_utility_drop
            floor_text = (
                f"held-out accuracy >= {floor:.3f} (non-private {base['utility']['value']:.3f} minus "
                f"{cfg.max_utility_drop:g})"
            )
        else:
            floor_text = "no non-private setting measured to take the utility drop from: no setting qualifies"
    for r in rows:
        r.setdefault("attacks", [])
        by_name = {a["attack"]: a for a in r["attacks"]}
        outcomes = []
        for g in cfg.gates:
            a = by_name.get(g.attack)
            if r.get("status") != "ok":
                o = evaluate_one(g, None, error=r.get("error"), fail_on=cfg.fail_on)
            elif a is None:
                o = evaluate_one(g, None, fail_on=cfg.fail_on)
            else:
                o = evaluate_one(
                    g, a.get("metrics"), status=a.get("status", "ok"), error=a.get("error"),
                    fail_on=cfg.fail_on, info=a.get("info"),
                )  # fmt: skip
            outcomes.append(o.to_json())
        r["gates"] = outcomes
        blocking = [o for o in outcomes if o["blocking"] and o["status"] != "pass"]
        util = r.get("utility") or {}
        low = util.get("low")
        if r.get("status") != "ok":
            r["utility_ok"], r["utility_note"] = False, f"not measured ({r.get('error')})"
        elif cfg.max_utility_drop is not None and base is None:
            r["utility_ok"], r["utility_note"] = False, "no non-private baseline to measure the drop from"
        elif floor is None:
            r["utility_ok"], r["utility_note"] = True, "no utility floor configured"
        else:
            r["utility_ok"] = low is not None and low >= floor
            r["utility_note"] = (
                f"accuracy {util['value']:.3f} (95% CI {low:.3f}-{util['high']:.3f}) "
                + ("meets" if r["utility_ok"] else "does not surely meet")
                + f" the floor {floor:.3f}"
            )
        r["passes_gates"] = r.get("status") == "ok" and not blocking
        # "fail": some gate is surely violated (or not checkable); "inconclusive": none is, but some
        # CI straddles its threshold (or the metric is not measurable at this sample size)
        r["gate_status"] = (
            "pass"
            if r["passes_gates"]
            else "fail"
            if r.get("status") != "ok" or any(o["status"] != "inconclusive" for o in blocking)
            else "inconclusive"
        )
        r["qualifies"] = bool(r["passes_gates"] and r["utility_ok"])
        if r.get("status") == "ok" and base_cpu:
            r["cost"]["ratio_to_non_private"] = r["cost"]["cpu_time_s"] / base_cpu
        one = by_name.get(ONE_RUN)
        if one and one.get("status") == "ok" and r.get("privacy"):
            r["dp_claim"] = "refuted" if one["info"].get("claim_refuted") else "consistent"
    ok = [r for r in rows if r.get("qualifies")]
    best = min(ok, key=lambda r: (r["cost"]["cpu_time_s"], -r["utility"]["value"])) if ok else None
    leak_metric = _leakage_axis(cfg, rows)
    pareto = _pareto(rows, leak_metric)
    unsettled = [r for r in rows if r.get("gate_status") == "inconclusive"]
    if best is not None:
        text = (
            f"Recommended: {best['label']} — the cheapest setting to train "
            f"({best['cost']['cpu_time_s']:.1f} s CPU{_ratio(best)}) that passes every gate on the "
            "conservative end of its 95% CI"
            + (f" and keeps {floor_text}" if floor_text else "")
            + f"; held-out accuracy {best['utility']['value']:.3f}"
            + _passed_on(best)
            + "."
            + _unsettled_text(unsettled)
        )
    else:
        why = []
        for r in rows:
            if r.get("status") != "ok":
                why.append(f"{r['label']}: {r.get('status')} ({r.get('error')})")
                continue
            bad = [
                o["gate"] + f" ({o['status']})" for o in r["gates"] if o["blocking"] and o["status"] != "pass"
            ]
            if bad:
                why.append(f"{r['label']}: " + "; ".join(bad))
            elif not r["utility_ok"]:
                why.append(f"{r['label']}: {r['utility_note']}")
        text = (
            "No setting passes every gate"
            + (f" within {floor_text}" if floor_text else "")
            + ": "
            + " | ".join(why)
            + "."
            + _unsettled_text(unsettled)
        )
    return {
        "format": "invguard-tradeoff-results",
        "version": "1.0",
        "name": cfg.name,
        "settings": rows,
        "gates": [g.expression for g in cfg.gates],
        "utility_floor": floor,
        "utility_floor_text": floor_text,
        "leakage_axis": leak_metric,
        "pareto": pareto,
        "recommendation": {
            "setting": best["id"] if best else None,
            "label": best["label"] if best else None,
            "text": text,
        },
    }


def _passed_on(r: dict[str, Any]) -> str:
    """What the recommended setting's gates read: ``; it passes with membership...tpr CI upper 0.048``."""
    parts = []
    for o in r.get("gates", []):
        if o["status"] == "pass" and o.get("decided_on") in ("high", "low"):
            end = "upper" if o["decided_on"] == "high" else "lower"
            bound = o.get(o["decided_on"])
            if bound is not None:
                name = f"{o['attack']}.{o['metric']}"
                parts.append(f"{name} 95% CI {end} end {bound:.3g} {o['op']} {o['threshold']:g}")
    return f"; it passes with {', '.join(parts)}" if parts else ""


def _unsettled_text(rows: list[dict[str, Any]]) -> str:
    """The sentence on the settings whose gates are inconclusive (neither passed nor failed)."""
    if not rows:
        return ""
    labels = ", ".join(r["label"] for r in rows)
    settle = next(
        (
            f"{r['label']}: {o['settle']}"
            for r in rows
            for o in r.get("gates", [])
            if o["status"] == "inconclusive" and o.get("settle")
        ),
        None,
    )
    msgs = [o["message"] for r in rows for o in r.get("gates", []) if o["status"] == "inconclusive"]
    why = (
        "a gate's metric is not measurable"
        if all("not measurable" in m for m in msgs)
        else "a 95% CI straddles a gate's threshold"
    )
    one = len(rows) == 1
    return (
        f" {labels} {'is' if one else 'are'} inconclusive at this sample size ({why}): neither shown "
        f"to pass nor to fail; more data would settle {'it' if one else 'them'}"
        + (f" ({settle})" if settle else "")
        + "."
    )


def _ratio(r: dict[str, Any]) -> str:
    x = r["cost"].get("ratio_to_non_private")
    return f", {x:.2f}x non-private training" if x is not None else ""


def _leakage_axis(cfg: TradeoffConfig, rows: list[dict[str, Any]]) -> str | None:
    """The Pareto chart's leakage axis: the first gate's metric, else the first attack's first metric."""
    if cfg.gates:
        return cfg.gates[0].metric
    for r in rows:
        for a in r.get("attacks", []):
            if a.get("metrics"):
                return f"{a['attack']}.{next(iter(a['metrics']))}"
    return None


def metric_of(row: dict[str, Any], dotted: str | None) -> dict[str, Any] | None:
    if dotted is None:
        return None
    attack, name = ".".join(dotted.split(".")[:2]), dotted.split(".", 2)[2]
    for a in row.get("attacks", []):
        if a["attack"] == attack and a.get("status") == "ok":
            m: dict[str, Any] | None = a.get("metrics", {}).get(name)
            return m
    return None


def _pareto(rows: list[dict[str, Any]], leak: str | None) -> list[str]:
    """Settings no other setting beats on both utility (higher) and leakage (lower)."""
    pts = []
    for r in rows:
        m = metric_of(r, leak)
        if r.get("status") == "ok" and m is not None and m.get("value") is not None:
            pts.append((r["id"], r["utility"]["value"], m["value"]))
    front = []
    for i, u, lk in pts:
        if not any((u2 >= u and l2 <= lk) and (u2 > u or l2 < lk) for j, u2, l2 in pts if j != i):
            front.append(i)
    return front


__all__ = [
    "FILENAMES",
    "ONE_RUN",
    "SEVERITIES",
    "Setting",
    "TradeoffConfig",
    "TradeoffRun",
    "decide",
    "load_tradeoff_config",
    "run_setting",
    "run_tradeoff",
    "settings_of",
]
