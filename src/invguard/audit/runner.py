"""Run an audit: every configured attack (and every exposure of the sweep) as an independent job.

Jobs go through a ``concurrent.futures.Executor``: a local process pool by default, or an existing
Dask cluster when a scheduler address is given (``tcp://HOST:PORT``; ``distributed.Client(...)
.get_executor()``). Inside a Dask task an attack may fan out its own independent work (reference
or shadow models) to the same cluster through ``RunContext.executor``; in the local pool each
attack is already one of the parallel jobs, so its own work runs in its worker process.

The target model is resolved once (reference models are trained once and cached by content hash
under ``cache_dir``), probed with one query so that an unreachable endpoint is reported before any
attack starts (``TargetError``, exit code 3), and shipped to the workers as bytes. A remote
classifier (``http``) is probed again with the same row after the last job, and the two answers'
form compared (:func:`answer_form`): an endpoint that changed its answers under the audit (a guard's
detection tightening the key, a replaced model) makes the verdict inconclusive at best. Progress is
shown with rich bars; Ctrl-C cancels the pending jobs, stops the workers and writes nothing
partial (caches are written by rename, results only at the end).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import queue as queue_mod
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from invguard.audit.config import AuditConfig, exposure_label, is_whitebox, load_config
from invguard.audit.jobs import Job, QueueProgress, run_job
from invguard.audit.resolve import ResolvedTarget, resolve_data, resolve_target
from invguard.core.errors import ConfigError


@dataclass
class AuditRun:
    """What ``run_audit`` returns: the results document, the files written and the exit code."""

    results: dict[str, Any]
    paths: dict[str, Path] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.results["verdict"]["passed"])

    @property
    def exit_code(self) -> int:
        """3: the target stopped answering during the audit (the finished jobs' results are still
        written); 1: a blocking gate did not pass, or an attack ran out of query budget (its partial
        results are in the report); 0: every gate passed and every attack finished."""
        statuses = {o.get("status") for o in _all_jobs(self.results)}
        if "target_error" in statuses:
            return 3
        return 0 if self.passed and "budget_exhausted" not in statuses else 1


def _all_jobs(results: dict[str, Any]) -> list[dict[str, Any]]:
    return list(results.get("attacks", [])) + list((results.get("exposure_sweep") or {}).get("jobs", []))


# ---------------------------------------------------------------------------- executors
@dataclass
class ExecutorHandle:
    executor: Executor
    description: str
    progress_queue: Any
    kind: str
    _close: Any = None

    def drain(self) -> list[tuple[str, str, int, int]]:
        items: list[tuple[str, str, int, int]] = []
        if self.progress_queue is None:
            return items
        try:
            if self.kind == "dask":
                if self.progress_queue.qsize():
                    items.extend(self.progress_queue.get(batch=True, timeout=1))
            else:
                while True:
                    items.append(self.progress_queue.get_nowait())
        except (queue_mod.Empty, TimeoutError, OSError, EOFError, BrokenPipeError):
            pass
        except Exception:  # a progress channel problem must not stop the audit
            pass
        return items

    def stop(self, *, cancel: bool) -> None:
        if cancel and isinstance(self.executor, ProcessPoolExecutor):
            # cancel what has not started and end the workers that are mid-attack
            procs = list(getattr(self.executor, "_processes", {}).values())
            self.executor.shutdown(wait=False, cancel_futures=True)
            for p in procs:
                if p.is_alive():
                    p.terminate()
            for p in procs:
                p.join(timeout=5)
        elif isinstance(self.executor, ProcessPoolExecutor):
            self.executor.shutdown(wait=True)
        else:  # Dask's ClientExecutor: shutdown(wait=False) cancels the futures still running
            self.executor.shutdown(wait=not cancel)
        if self._close is not None:
            self._close()


@contextlib.contextmanager
def make_executor(
    scheduler: str | None, n_jobs: int, max_workers: int | None, *, connect_timeout: float = 10.0
) -> Iterator[ExecutorHandle]:
    """A process pool (default) or a Dask cluster's executor, with a progress channel."""
    if scheduler:
        try:
            from distributed import Client, Queue
        except ImportError:  # pragma: no cover - distributed is a dependency
            raise ConfigError(
                "--scheduler needs the 'distributed' package (pip install 'dask[distributed]')"
            ) from None
        try:
            client = Client(scheduler, timeout=connect_timeout, set_as_default=False)  # type: ignore[no-untyped-call]
        except (OSError, TimeoutError) as e:
            raise ConfigError(
                f"--scheduler {scheduler}: cannot connect to the Dask scheduler ({e})"
            ) from None
        q = Queue(f"invguard-progress-{uuid.uuid4().hex}", client=client)  # type: ignore[no-untyped-call]
        n = len(client.scheduler_info().get("workers", {}))
        executor = client.get_executor()  # type: ignore[no-untyped-call]
        handle = ExecutorHandle(
            executor, f"Dask cluster at {scheduler} ({n} workers)", q, "dask", client.close
        )
    else:
        import multiprocessing as mp

        workers = max(1, min(n_jobs, max_workers or os.cpu_count() or 1))
        ctx = mp.get_context("forkserver")
        # workers fork from a server that has already imported the heavy modules once
        ctx.set_forkserver_preload(["invguard.audit.jobs", "torch", "sklearn.linear_model"])
        manager = ctx.Manager()
        handle = ExecutorHandle(
            ProcessPoolExecutor(max_workers=workers, mp_context=ctx),
            f"local process pool ({workers} worker{'s' if workers != 1 else ''})",
            manager.Queue(),
            "local",
            manager.shutdown,
        )
    try:
        yield handle
    except BaseException:
        handle.stop(cancel=True)
        raise
    else:
        handle.stop(cancel=False)


# ---------------------------------------------------------------------------- jobs
PROBE_ROWS = 1  # the one query that checks the target answers before any attack starts
REPROBED_KINDS = ("http",)  # targets whose answers can change under the audit: probed again at the end


def probe_queries(target: ResolvedTarget) -> int:
    """The queries the probes take: the first probe, and for a remote target the closing one."""
    return PROBE_ROWS * (2 if target.kind in REPROBED_KINDS else 1)


def allocate_budget(
    total: int | None, explicit: list[int | None], probes: int = PROBE_ROWS
) -> list[int | None]:
    """Each job's share of the audit's query budget, decided up front so their sum never exceeds
    ``total``: the shares a config gives, and the rest (less the ``probes`` queries) divided
    equally among the other jobs (the first ones get the remainder)."""
    if total is None:
        return [None] * len(explicit)
    rest = max(0, total - probes - sum(b for b in explicit if b is not None))
    n_free = sum(1 for b in explicit if b is None)
    each, extra = divmod(rest, n_free) if n_free else (0, 0)
    out: list[int | None] = []
    k = 0
    for b in explicit:
        if b is not None:
            out.append(b)
        else:
            out.append(each + (1 if k < extra else 0))
            k += 1
    return out


def _with_budget(target: ResolvedTarget, share: int | None) -> ResolvedTarget:
    if share is None:
        return target
    return dataclasses.replace(target, options={**target.options, "budget": share})


def _make_jobs(
    cfg: AuditConfig, target: ResolvedTarget, splits: Any, cache_dir: Path, show_secrets: bool = False
) -> list[Job]:
    from invguard.attacks import ATTACKS

    def build(name: str, params: dict[str, Any]) -> Any:
        """The attack; one that can reveal extracted strings does so only with ``show_secrets``
        (``invguard audit --show-secrets``), never by a config file."""
        cls = ATTACKS.get(name)
        if "show_secrets" in {f.name for f in dataclasses.fields(cls)}:
            params = {**params, "show_secrets": show_secrets}
        return cls(**params)

    jobs: list[Job] = []
    for i, a in enumerate(cfg.attacks):
        attack = build(a.name, a.params)
        label = exposure_label(a.exposure, text=cfg.target.is_text)
        jobs.append(
            Job(
                f"a{i}",
                attack,
                target,
                splits,
                a.seed if a.seed is not None else cfg.seed,
                a.exposure,
                label,
                False,
                str(cache_dir),
            )
        )
    if cfg.exposures is not None:
        for j, pol in enumerate(cfg.exposures.policies):
            label = exposure_label(pol)
            spec = None if is_whitebox(pol) else pol
            for name in cfg.exposures.attacks:
                attack = build(name, cfg.exposures.params.get(name, {}))
                jobs.append(
                    Job(f"s{j}:{name}", attack, target, splits, cfg.seed, spec, label, True, str(cache_dir))
                )
    n_main = len(cfg.attacks)
    explicit = [a.budget for a in cfg.attacks] + [None] * (len(jobs) - n_main)
    shares = allocate_budget(cfg.target.budget, explicit, probe_queries(target))
    return [
        dataclasses.replace(j, target=_with_budget(j.target, b)) for j, b in zip(jobs, shares, strict=True)
    ]


def answer_form(pred: Any) -> list[dict[str, Any]]:
    """The form of a classifier's answer, row by row: the label, whether scores came back, how
    many are non-zero and whether they are one-hot. Two answers of an unchanged endpoint have the
    same form even under a noise policy (whose scores differ every time); a guard that tightens a
    key to ``label_only`` in the same response shape turns the scores one-hot."""
    import numpy as np

    labels = np.asarray(pred.labels).tolist()
    if pred.scores is None:
        return [{"label": int(y), "scores": False} for y in labels]
    s = np.asarray(pred.scores, dtype=np.float64)
    nz = (s != 0).sum(axis=1)
    one_hot = (nz == 1) & np.isclose(s.max(axis=1), 1.0)
    return [
        {"label": int(y), "scores": True, "nonzero": int(n), "one_hot": bool(o)}
        for y, n, o in zip(labels, nz, one_hot, strict=True)
    ]


def _probe(target: ResolvedTarget, splits: Any) -> tuple[str, list[dict[str, Any]] | None]:
    """Build the target once and ask it about one record (a language model: one one-token
    generation): an unreachable model fails here (exit 3). Returns the target's description and,
    for a remote classifier, the form of its answer (compared with the closing probe's)."""
    t = target.build()
    if target.is_text:
        from invguard.audit.text import probe_text

        return probe_text(t, splits), None
    pred = t.predict(splits.evaluation.X[:PROBE_ROWS])
    return str(t.describe()), answer_form(pred) if target.kind in REPROBED_KINDS else None


def endpoint_change(
    target: ResolvedTarget, splits: Any, before: list[dict[str, Any]]
) -> tuple[dict[str, Any] | None, int]:
    """Send the first probe's row(s) again after every job finished and compare the answers'
    form. Returns None when it is the same, otherwise ``{before, after, message}`` (``after`` is
    None when the endpoint did not answer the closing probe: the audit cannot say its answers
    held); and the queries the closing probe spent (a request the server refused is not spent)."""
    t = target.build()
    try:
        after: list[dict[str, Any]] | None = answer_form(t.predict(splits.evaluation.X[:PROBE_ROWS]))
    except Exception as e:  # budget spent, endpoint gone: unverified, so never a pass
        return {
            "before": before,
            "after": None,
            "message": "the endpoint did not answer the closing probe "
            f"({type(e).__name__}: {e}): the audit cannot tell whether its answers changed "
            "during the run",
        }, int(t.queries_used)
    if after == before:
        return None, int(t.queries_used)
    return {
        "before": before,
        "after": after,
        "message": "the endpoint's answers changed during the audit (e.g. the guard's detection "
        "tightened this key, or the model was replaced): the figures mix two behaviours; rerun "
        "with a key the guard does not mitigate",
    }, int(t.queries_used)


def run_audit(
    config: AuditConfig | str | Path,
    *,
    scheduler: str | None = None,
    out_dir: str | Path | None = None,
    formats: list[str] | None = None,
    console: Console | None = None,
    max_workers: int | None = None,
    history: str | Path | bool | None = True,
    connect_timeout: float = 10.0,
    show_secrets: bool = False,
) -> AuditRun:
    """Run the audit a config describes and write its reports. See the module docstring.

    ``show_secrets``: put the strings a text extraction recovered in the reports in clear (by
    default each is redacted to its first characters, its length and a hash)."""
    from invguard.audit import history as hist
    from invguard.audit.results import build_results
    from invguard.report import write_reports

    console = console or Console(stderr=True)
    config_text = None
    if not isinstance(config, AuditConfig):
        config_text = Path(config).read_text() if Path(config).is_file() else None
        cfg = load_config(config)
    else:
        cfg = config
    started = time.time()
    timings: dict[str, float] = {}
    cache_dir = Path(cfg.cache_dir)

    t0 = time.perf_counter()
    splits = resolve_data(cfg.data, seed=cfg.seed, target=cfg.target)
    timings["data_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    from invguard.workflows import training_progress

    bar, cb = training_progress(console, "training the target model")
    with bar:
        target = resolve_target(cfg.target, splits, seed=cfg.seed, cache_dir=cache_dir, progress=cb)
    timings["target_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    described, first_answer = _probe(target, splits)
    timings["probe_s"] = time.perf_counter() - t0

    jobs = _make_jobs(cfg, target, splits, cache_dir, show_secrets)
    t0 = time.perf_counter()
    outputs, executor_desc = _execute(
        jobs,
        scheduler=scheduler,
        max_workers=max_workers or cfg.max_workers,
        console=console,
        connect_timeout=connect_timeout,
    )
    timings["attacks_s"] = time.perf_counter() - t0
    changed, probe_rows = None, PROBE_ROWS
    if first_answer is not None:
        t0 = time.perf_counter()
        changed, spent = endpoint_change(target, splits, first_answer)
        probe_rows += spent
        timings["reprobe_s"] = time.perf_counter() - t0
        if changed is not None:
            console.print(f"[red]{escape(changed['message'])}[/]", highlight=False)

    for o in outputs:  # the finished jobs' results are written whatever happened to the others
        st = o.get("status")
        if st == "crashed":
            console.print(f"[red]attack {o['attack']} crashed[/]: {o['error']}", highlight=False)
        elif st == "target_error":
            console.print(f"[red]attack {o['attack']}: the target stopped answering[/]: {o['error']}")
        elif st == "budget_exhausted":
            console.print(
                f"[yellow]attack {o['attack']} ended early, budget exhausted[/]: {o['error']}",
                highlight=False,
            )
    budget = None
    if cfg.target.budget is not None:
        budget = {
            "total": cfg.target.budget,
            "probe": probe_queries(target),
            "shares": {j.id: j.target.options.get("budget") for j in jobs},
        }

    results = build_results(
        cfg,
        outputs,
        splits=splits,
        target=target,
        target_described=described,
        started=started,
        timings=timings,
        executor=executor_desc,
        config_text=config_text,
        budget=budget,
        probe_rows=probe_rows,
        endpoint_changed=changed,
    )
    hist_path = None
    if history is True:
        hist_path = cfg.history
    elif history not in (False, None):
        hist_path = str(history)
    if hist_path:
        results["history"] = hist.record(Path(hist_path), results)
    out = Path(out_dir) if out_dir is not None else Path(cfg.output.dir)
    paths = write_reports(results, out, formats or list(cfg.output.formats))
    return AuditRun(results, paths)


def _execute(
    jobs: list[Job],
    *,
    scheduler: str | None,
    max_workers: int | None,
    console: Console,
    connect_timeout: float = 10.0,
) -> tuple[list[dict[str, Any]], str]:
    """Run the jobs through the executor with progress bars; results in job order."""
    outputs: dict[str, dict[str, Any]] = {}
    with make_executor(scheduler, len(jobs), max_workers, connect_timeout=connect_timeout) as handle:
        console.print(
            f"running {len(jobs)} attack job{'s' if len(jobs) != 1 else ''} on {handle.description}",
            highlight=False,
        )
        prog = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        with prog:
            overall = prog.add_task("[bold]all attacks[/]", total=len(jobs), status="")
            rows: dict[str, TaskID] = {}
            futures: dict[Future[dict[str, Any]], Job] = {}
            for job in jobs:
                desc = f"  {job.attack.name}" + (
                    f" @ {job.exposure_label}" if job.sweep or job.exposure else ""
                )
                rows[job.id] = prog.add_task(desc, total=None, status="queued")
                j = Job(**{**job.__dict__, "progress": QueueProgress(handle.progress_queue, job.id)})
                futures[handle.executor.submit(run_job, j)] = job
            pending = set(futures)
            while pending:
                done, pending = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
                for job_id, task, d, total in handle.drain():
                    if job_id in rows:
                        prog.update(rows[job_id], completed=d, total=max(total, 1), status=task)
                for f in done:
                    job = futures[f]
                    try:
                        res = f.result()
                    except Exception as e:  # the worker died (killed, out of memory): report, carry on
                        res = {
                            "job": job.id,
                            "attack": job.attack.name,
                            "exposure": job.exposure_label,
                            "policy": job.exposure,
                            "sweep": job.sweep,
                            "status": "crashed",
                            "error": f"worker failed: {type(e).__name__}: {e}",
                            "params": job.attack.params(),
                        }
                    outputs[job.id] = res
                    st = res.get("status", "?")
                    colour = {"ok": "green", "not_applicable": "yellow"}.get(st, "red")
                    prog.update(
                        rows[job.id],
                        completed=1,
                        total=1,
                        status=f"[{colour}]{st}[/] {res.get('job_wall_time_s', 0.0):.1f}s",
                    )
                    prog.advance(overall)
        desc = handle.description
    return [outputs[j.id] for j in jobs], desc


def audit(path: str | Path, **kw: Any) -> AuditRun:
    """``invguard.audit.run``: run the audit described by a YAML file."""
    return run_audit(path, **kw)
