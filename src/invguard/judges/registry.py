"""Evidence type -> judge. A judge turns evidence into the ``AttackOutput`` a result is made of."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from invguard.core.evidence import Evidence
from invguard.core.run import AttackOutput, Case

E = TypeVar("E", bound=Evidence)
JudgeFn = Callable[[E, Case], AttackOutput]

_JUDGES: dict[type[Evidence], Callable[[Evidence, Case], AttackOutput]] = {}


def register_judge(evidence: type[E]) -> Callable[[JudgeFn[E]], JudgeFn[E]]:
    """Register the judge of one evidence type; a second judge for the same type is refused."""

    def deco(fn: JudgeFn[E]) -> JudgeFn[E]:
        have = _JUDGES.get(evidence)
        if have is not None and have is not fn:
            raise ValueError(f"a judge for {evidence.kind()} is already registered ({have.__qualname__})")
        _JUDGES[evidence] = fn  # type: ignore[assignment]
        return fn

    return deco


def judge_for(evidence: Evidence) -> Callable[[Evidence, Case], AttackOutput]:
    """The judge of ``evidence``'s type, or of its nearest registered base type."""
    for cls in type(evidence).__mro__:
        fn = _JUDGES.get(cls)
        if fn is not None:
            return fn
    raise LookupError(
        f"no judge is registered for {type(evidence).kind()}; register one with "
        "@invguard.judges.register_judge(<evidence type>) in the family's judge module"
    )


def judged_types() -> list[str]:
    return sorted(t.kind() for t in _JUDGES)
