"""What one attack run is given and what its judge returns (no I/O, no torch)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from invguard.core.result import Finding, Metric

if TYPE_CHECKING:
    from invguard.core.target import Target


@dataclass
class RunContext:
    """What the caller lends an attack for one run (never part of its hyper-parameters).

    ``executor``: a ``concurrent.futures.Executor`` for independent jobs such as reference or
    shadow model training (process pool, or a Dask ``distributed.Client.get_executor()``); ``None``
    means run them in this process. ``cache_dir``: where trained artifacts may be cached by content
    hash (``None``: no caching). ``progress(task, done, total)``: progress reporting.
    """

    executor: Executor | None = None
    cache_dir: Path | None = None
    progress: Callable[[str, int, int], None] | None = None

    def report(self, task: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(task, done, total)

    def map(self, fn: Callable[..., Any], *iterables: Any) -> list[Any]:
        """``fn`` over the iterables, through the executor when there is one; results in order."""
        if self.executor is None:
            return list(map(fn, *iterables))
        return list(self.executor.map(fn, *iterables))


@dataclass
class AttackOutput:
    """What a judge returns; ``Attack.run`` adds timing, queries and provenance."""

    metrics: dict[str, Metric] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Case:
    """Everything a judge may consult about the run that produced the evidence.

    ``attack`` is the attack instance (its hyper-parameters); ``target`` the attacked target (a
    judge never queries it for the verdict: controls build targets of their own); ``data`` the
    splits; ``rng`` a generator derived from the run's seed, separate from the search's.
    """

    attack: Any
    target: Target
    data: Any
    rng: np.random.Generator
    ctx: RunContext
    seed: int
