"""The Attack contract.

An attack is a frozen dataclass of hyper-parameters (each declared once in ``constraints``, the
scikit-learn ``_parameter_constraints`` way, and validated on construction, every problem reported
at once in one format) plus ``search(target, data, rng, ctx) -> Evidence``; the judge registered for
the evidence type (``invguard.judges``) decides what the evidence shows. The final ``run`` wrapper
checks access before any query is spent, passes generators down (``rng`` for the search, a
generator of its own and the run seed for the judge; nothing is seeded globally), runs the search,
hands the evidence to its judge, times the run, counts queries and records provenance, so an
attack module holds only its algorithm.

Class-level declarations, read by the sweep, the demo and the conformance suite (never special-
cased by name): ``requires`` (the access it needs); ``strength`` (order within its family, the
dotted name's first part: where an exposure grants less than an attack needs, the strongest
attack of its family that fits runs instead); ``fast_params`` (its smallest meaningful
configuration: the demo and the tests use it); ``sweep_params`` (overrides while it runs in an
exposure sweep, which compares exposures rather than deciding a leak); ``portable_params`` (the
parameters a substitute of its family takes over, beyond those of their common base class);
``data_kind`` (the data it needs: ``any`` splits, or e.g. ``tabular`` records with named columns).

A new attack is one module and one ``@ATTACKS.register(name)`` line (and, for a new family, one
import in ``_FAMILIES``).
"""

from __future__ import annotations

import dataclasses
import importlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, final

import numpy as np

from invguard.core.access import Access
from invguard.core.errors import AccessError, ConfigError
from invguard.core.evidence import Evidence
from invguard.core.params import Spec, merged, problems
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
    sweep_params: ClassVar[Mapping[str, Any]] = {}
    portable_params: ClassVar[tuple[str, ...]] = ()
    data_kind: ClassVar[str] = "any"
    #: what each parameter may be (``invguard.core.params``), declared once per parameter; a
    #: subclass's declarations add to (and may replace) its bases'
    constraints: ClassVar[Mapping[str, Spec]] = {}

    @classmethod
    def family(cls) -> str:
        """The attack's family: the first part of its dotted name (``inversion``, ``membership``)."""
        return cls.name.split(".", 1)[0]

    @classmethod
    def fast(cls, **overrides: Any) -> Attack:
        """The attack at its ``fast_params`` (and ``overrides``)."""
        return cls(**{**cls.fast_params, **overrides})

    def __post_init__(self) -> None:
        problems = self.validate()
        if problems:
            raise ConfigError(f"{self.name}: " + "; ".join(problems))

    @final
    def validate(self) -> list[str]:
        """Every problem with the parameters (empty when valid): each declared constraint, then the
        rules between parameters that :meth:`cross_checks` states."""
        found = problems(self.params(), declared_constraints(type(self)))
        return found if found else self.cross_checks()

    def cross_checks(self) -> list[str]:
        """Rules between parameters the per-parameter declarations cannot state (override this);
        run once every parameter is valid on its own."""
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

    @final
    def run(
        self, target: Target, data: Any, *, seed: int = 0, context: RunContext | None = None
    ) -> AttackResult:
        """Run the attack: access check (before any query), search, judge, timing and provenance."""
        self.check_access(target)
        rng = np.random.default_rng(seed)
        before = target.queries_used
        t0 = time.perf_counter()
        ctx = context or RunContext()
        evidence = self.search(target, data, rng, ctx)
        from invguard.judges import judge_for

        judge_rng = np.random.default_rng([seed, 1])
        case = Case(attack=self, target=target, data=data, rng=judge_rng, ctx=ctx, seed=seed)
        out = judge_for(evidence)(evidence, case)
        out.info = {**dict(evidence.info), **out.info}
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
        raise NotImplementedError(f"{self.name} does not implement search()")


def declared_constraints(cls: type[Attack]) -> dict[str, Spec]:
    """Every parameter's declaration for ``cls``, its own over its bases'."""
    return merged(cls.__mro__)


def substitute(attack: Attack, access: Access) -> Attack | None:
    """``attack`` if ``access`` allows it, else the strongest attack of its family (by declared
    ``strength``) that ``access`` allows, built with the parameters the two share (the fields of
    their nearest common attack base class and ``attack.portable_params``); None if none fits."""
    if attack.requires <= access:
        return attack
    family = [ATTACKS.get(n) for n in ATTACKS.names() if ATTACKS.get(n).family() == attack.family()]
    for cls in sorted(family, key=lambda c: (-c.strength, c.name)):
        if cls.requires > access:
            continue
        return cls(**shared_params(attack, cls))
    return None


def shared_params(attack: Attack, cls: type[Attack]) -> dict[str, Any]:
    """The parameters of ``attack`` that ``cls`` takes over (see :func:`substitute`)."""
    base = next(b for b in type(attack).__mro__ if isinstance(b, type) and issubclass(cls, b))
    common = {f.name for f in dataclasses.fields(base)} if dataclasses.is_dataclass(base) else set()
    mine = {f.name for f in dataclasses.fields(cls)}
    theirs = {f.name: f for f in dataclasses.fields(attack)}
    out: dict[str, Any] = {}
    for k in sorted((common | set(attack.portable_params)) & mine & set(theirs)):
        f = theirs[k]
        default = f.default if f.default is not dataclasses.MISSING else dataclasses.MISSING
        if default is not dataclasses.MISSING and getattr(attack, k) == default:
            continue  # left at its default: the substitute keeps its own
        out[k] = getattr(attack, k)
    return out


def for_sweep(attack: Attack) -> Attack:
    """``attack`` with its declared ``sweep_params``."""
    fields = {f.name for f in dataclasses.fields(attack)}
    over = {k: v for k, v in attack.sweep_params.items() if k in fields}
    return dataclasses.replace(attack, **over) if over else attack
