"""The Attack contract.

An attack is a frozen dataclass of hyper-parameters (validated on construction, every problem
reported at once) plus ``_run(target, data, rng, ctx) -> AttackOutput``. The final ``run`` wrapper
checks access before any query is spent, seeds numpy and torch, times the run, counts queries and
records provenance, so an attack module holds only its algorithm. A new attack is one module and
one ``@ATTACKS.register(name)`` line (and, for a new family, one import in ``_load_all``).
"""

from __future__ import annotations

import dataclasses
import importlib
import random
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from invguard.core.access import Access
from invguard.core.errors import AccessError, ConfigError
from invguard.core.registry import Registry
from invguard.core.result import AttackResult, Finding, Metric
from invguard.core.target import Target

ATTACKS: Registry[type[Attack]] = Registry("attack")

# attack families; each module registers its attacks on import
_FAMILIES = ("invguard.attacks.inversion", "invguard.attacks.membership", "invguard.attacks.attribute")


def _load_all() -> None:
    for mod in _FAMILIES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:  # a family that exists but fails to import is a real error
                raise


ATTACKS.add_loader(_load_all)


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
    """What an attack's ``_run`` returns; the wrapper adds timing, queries and provenance."""

    metrics: dict[str, Metric] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Attack:
    """Base class of every attack. Subclasses are frozen dataclasses of hyper-parameters."""

    name: ClassVar[str] = "attack"
    requires: ClassVar[Access] = Access.LABEL

    def __post_init__(self) -> None:
        problems = self.validate()
        if problems:
            raise ConfigError(f"{self.name}: " + "; ".join(problems))

    def validate(self) -> list[str]:
        """Return every problem with the parameters (empty when valid)."""
        return []

    def params(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def required_access(self, target: Target) -> Access:
        """The access this attack needs on ``target`` (attacks that adapt to access override this)."""
        return self.requires

    def check_access(self, target: Target) -> None:
        need = self.required_access(target)
        if target.access < need:
            raise AccessError(f"{self.name} needs {need.name}; this target grants {target.describe()}")

    def run(
        self, target: Target, data: Any, *, seed: int = 0, context: RunContext | None = None
    ) -> AttackResult:
        """Run the attack: access check (before any query), seeding, timing and provenance."""
        self.check_access(target)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            import torch

            torch.manual_seed(seed)
        except ImportError:  # pragma: no cover - torch is a dependency, but attacks need not use it
            pass
        rng = np.random.default_rng(seed)
        before = target.queries_used
        t0 = time.perf_counter()
        out = self._run(target, data, rng, context or RunContext())
        wall = time.perf_counter() - t0
        info = dict(out.info)
        if hasattr(data, "provenance"):
            info.setdefault("data", data.provenance())
        return AttackResult(
            attack=self.name,
            params=self.params(),
            target=target.describe(),
            access=target.access.name,
            metrics=out.metrics,
            queries_used=target.queries_used - before,
            wall_time_s=wall,
            seed=seed,
            arrays=out.arrays,
            tables=out.tables,
            findings=tuple(out.findings),
            info=info,
        )

    def _run(
        self, target: Target, data: Any, rng: np.random.Generator, ctx: RunContext
    ) -> AttackOutput:  # pragma: no cover - abstract
        raise NotImplementedError
