"""The Attack contract.

An attack is a frozen dataclass of hyper-parameters (validated on construction, every problem
reported at once) plus ``search(target, data, rng, ctx) -> Evidence``; the judge registered for
the evidence type (``invguard.judges``) decides what the evidence shows. The final ``run`` wrapper
checks access before any query is spent, seeds, runs the search, hands the evidence to its judge,
times the run, counts queries and records provenance, so an attack module holds only its
algorithm. Class-level declarations: ``requires`` (the access it needs), ``strength`` (order within
its family: a stronger attack of the same family is tried first where only one fits) and
``fast_params`` (its smallest meaningful configuration, used by the demo and the tests).

A new attack is one module and one ``@ATTACKS.register(name)`` line (and, for a new family, one
import in ``_FAMILIES``). Attacks not yet moved to ``search`` implement ``_run(...) -> AttackOutput``.
"""

from __future__ import annotations

import dataclasses
import importlib
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from invguard.core.access import Access
from invguard.core.errors import AccessError, ConfigError
from invguard.core.evidence import Evidence
from invguard.core.registry import Registry
from invguard.core.result import AttackResult, Finding, Metric
from invguard.core.run import AttackOutput, Case, RunContext
from invguard.core.target import Target

__all__ = ["ATTACKS", "Attack", "AttackOutput", "Case", "Evidence", "Finding", "Metric", "RunContext"]

ATTACKS: Registry[type[Attack]] = Registry("attack")

# attack families; each module registers its attacks on import
_FAMILIES = (
    "invguard.attacks.inversion",
    "invguard.attacks.membership",
    "invguard.attacks.attribute",
    "invguard.attacks.gradient",
    "invguard.attacks.text",
)


def _load_all() -> None:
    for mod in _FAMILIES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:  # a family that exists but fails to import is a real error
                raise


ATTACKS.add_loader(_load_all)


@dataclass(frozen=True)
class Attack:
    """Base class of every attack. Subclasses are frozen dataclasses of hyper-parameters."""

    name: ClassVar[str] = "attack"
    requires: ClassVar[Access] = Access.LABEL
    strength: ClassVar[int] = 0
    fast_params: ClassVar[Mapping[str, Any]] = {}

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
        ctx = context or RunContext()
        if type(self).search is not Attack.search:
            evidence = self.search(target, data, rng, ctx)
            from invguard.judges import judge_for

            judge_rng = np.random.default_rng([seed, 1])
            case = Case(attack=self, target=target, data=data, rng=judge_rng, ctx=ctx, seed=seed)
            out = judge_for(evidence)(evidence, case)
            out.info = {**dict(evidence.info), **out.info}
        else:
            out = self._run(target, data, rng, ctx)
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

    def search(self, target: Target, data: Any, rng: np.random.Generator, ctx: RunContext) -> Evidence:
        """The attack itself: query ``target`` and return what was found (override this)."""
        raise NotImplementedError  # pragma: no cover - abstract

    def _run(
        self, target: Target, data: Any, rng: np.random.Generator, ctx: RunContext
    ) -> AttackOutput:  # pragma: no cover - transitional: attacks not yet moved to search()
        raise NotImplementedError(f"{self.name} implements neither search() nor _run()")
