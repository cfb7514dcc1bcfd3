"""One attack run as a self-contained, picklable job (runs in a worker process or on a Dask worker).

A job carries the attack (a frozen, validated dataclass), the target in portable form, the data
splits, the exposure (output policy) to put in front of the model, the seed and the cache folder.
It returns the attack's result as JSON-ready data, with a ``status``: ``ok``, ``not_applicable``
(the attack needs more access than the exposure grants), ``error`` (an invguard error, with its
message), ``target_error`` (the model could not be queried) or ``crashed`` (a bug, with its
traceback), so one failing attack never takes the others down.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import traceback
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from invguard.audit.resolve import ResolvedTarget
from invguard.metrics.utility import exposure_utility


@dataclass(frozen=True)
class Job:
    id: str
    attack: Any  # an invguard.attacks.Attack instance
    target: ResolvedTarget
    data: Any  # invguard.data.Splits
    seed: int
    exposure: Any = None  # a policy spec (str / mapping / list) or None for the raw target
    exposure_label: str = "as deployed"
    sweep: bool = False
    cache_dir: str | None = None
    progress: Any = None  # a picklable callable (task, done, total) -> None


class QueueProgress:
    """A picklable progress callback that forwards ``(job, task, done, total)`` into a queue.

    The queue is a ``multiprocessing.Manager().Queue()`` proxy for the local pool, or a
    ``distributed.Queue`` on a Dask cluster. Updates are throttled to five per second.
    """

    def __init__(self, queue: Any, job_id: str) -> None:
        self.queue = queue
        self.job_id = job_id
        self._last = 0.0

    def __getstate__(self) -> dict[str, Any]:
        return {"queue": self.queue, "job_id": self.job_id, "_last": 0.0}

    def __call__(self, task: str, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self._last < 0.2:
            return
        self._last = now
        # progress must never break an attack (the queue is gone after an interrupt)
        with contextlib.suppress(Exception):
            self.queue.put((self.job_id, str(task), int(done), int(total)))


class DaskNestedExecutor(Executor):
    """The cluster, lent to an attack running inside a Dask task, for its own independent jobs.

    On the first submission the task secedes from the worker's thread pool (so that waiting on its
    sub-tasks cannot deadlock the cluster) and it rejoins when the attack is done.
    """

    def __init__(self) -> None:
        self._ex: Executor | None = None
        self._seceded = False

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        if self._ex is None:
            from distributed import get_client, secede

            self._ex = get_client().get_executor()  # type: ignore[no-untyped-call]
            secede()  # type: ignore[no-untyped-call]
            self._seceded = True
        return self._ex.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if self._seceded:
            from distributed import rejoin

            rejoin()  # type: ignore[no-untyped-call]
            self._seceded = False


def _in_dask_worker() -> bool:
    try:
        from distributed import get_worker

        get_worker()
        return True
    except (ImportError, ValueError):
        return False


def _utility(raw: Any, exposed: Any, data: Any) -> dict[str, Any]:
    """What an exposure costs users, on the held-out non-members (the same records and definition as
    the inversion sweep's utility column). The model is asked once; the exposure's answer is the
    policy applied to that answer (what the wrapped target would have returned), so the utility
    costs one query per record."""
    X = data.nonmembers.X
    base = raw.predict(X)
    shown = base if exposed is raw else exposed.policy.apply(base)
    return exposure_utility(data.nonmembers.y, base, shown)


def _sweep_run(job: Job, target: Any, leaves: Any, ctx: Any) -> dict[str, Any]:
    """One (exposure, attack) cell of the sweep: the attack, or the strongest of its family (by the
    attacks' declared ``strength``) that the access the exposure leaves allows, with its declared
    ``sweep_params``."""
    from invguard.attacks.base import for_sweep, substitute
    from invguard.core.errors import AccessError

    chosen = substitute(job.attack, leaves)
    if chosen is None:
        raise AccessError(
            f"{job.attack.name} needs {job.attack.requires.name} and no {job.attack.family()} attack runs "
            f"at {leaves.name} access ({target.describe()})"
        )
    out = for_sweep(chosen).run(target, job.data, seed=job.seed, context=ctx).to_json()
    out.update(
        attack=job.attack.name,
        attack_used=chosen.name,
        substituted_for=job.attack.name if chosen is not job.attack else None,
    )
    return out


def run_job(job: Job) -> dict[str, Any]:
    """Run one attack job; never raises for an attack's own failure (see the module docstring)."""
    from invguard import policies
    from invguard.attacks import RunContext
    from invguard.core.errors import AccessError, BudgetExhausted, InvguardError, TargetError

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    t0 = time.perf_counter()
    meta: dict[str, Any] = {
        "job": job.id,
        "attack": job.attack.name,
        "exposure": job.exposure_label,
        "policy": job.exposure,
        "sweep": job.sweep,
        "worker": f"{socket.gethostname()}:{os.getpid()}",
    }
    nested = DaskNestedExecutor() if _in_dask_worker() else None
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass
    raw: Any = None
    reached: dict[str, Any] = {}

    def progress(task: str, done: int, total: int) -> None:
        reached.update(task=task, done=done, total=total)  # what a job cut short had reached
        if job.progress is not None:
            job.progress(task, done, total)

    try:
        raw = job.target.build()
        policy: Any = None
        if job.exposure is not None and job.target.is_text:
            # a language model: a text policy (strip / top-k rounded log-probabilities, secret filter)
            from invguard.policies.text import text_policy

            policy = text_policy(job.exposure, "exposure")
        elif job.exposure is not None:
            # a seeded audit reproduces: unseeded noise draws from the run seed
            policy = policies.parse(job.exposure, "exposure").seeded_by_default(job.seed)
        target = raw if policy is None else policy.wrap(raw)
        ctx = RunContext(
            executor=nested,
            cache_dir=None if job.cache_dir is None else Path(job.cache_dir),
            progress=progress,
        )
        if job.sweep:
            leaves = target.access if policy is None else min(target.access, policy.leaves)
            out = {**_sweep_run(job, target, leaves, ctx), **meta, "status": "ok", "error": None}
        else:
            out = job.attack.run(target, job.data, seed=job.seed, context=ctx).to_json()
            out.update(meta, status="ok", error=None)
        if job.sweep:
            out["utility"] = _utility(raw, target, job.data)
            out.setdefault("access", target.access.name)
    except BudgetExhausted as e:
        # the budget share ran out, or the server said its quota is spent: stop this job at once and
        # keep what it had reached; never read as an unreachable target
        out = {
            **meta,
            "status": "budget_exhausted",
            "error": str(e),
            "params": job.attack.params(),
            "partial": {"progress": dict(reached), "queries_used": 0 if raw is None else raw.queries_used},
        }
    except AccessError as e:
        out = {**meta, "status": "not_applicable", "error": str(e), "params": job.attack.params()}
        if job.sweep:
            try:
                raw = raw if raw is not None else job.target.build()
                exposed = raw if job.exposure is None else policies.parse(job.exposure).wrap(raw)
                out["utility"] = _utility(raw, exposed, job.data)
                out["access"] = exposed.access.name
            except InvguardError:
                pass
    except TargetError as e:
        out = {**meta, "status": "target_error", "error": str(e), "params": job.attack.params()}
    except InvguardError as e:
        out = {**meta, "status": "error", "error": f"{type(e).__name__}: {e}", "params": job.attack.params()}
    except Exception as e:
        tb = traceback.format_exc(limit=8)
        out = {
            **meta,
            "status": "crashed",
            "error": f"{type(e).__name__}: {e}",
            "traceback": tb,
            "params": job.attack.params(),
        }
    finally:
        if nested is not None:
            nested.shutdown()
    out["job_wall_time_s"] = time.perf_counter() - t0
    out.setdefault("seed", job.seed)
    # every query the job sent (the attack's, the utility's), against its share of the audit's budget
    out["job_queries"] = 0 if raw is None else int(raw.queries_used)
    out["budget"] = job.target.options.get("budget")
    return dict(out)
