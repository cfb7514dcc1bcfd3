"""Declared parameter constraints: one vocabulary and one message format for attacks and policies.

Modelled on scikit-learn's ``_parameter_constraints`` (``sklearn.utils._param_validation``): a
component declares, once, what each of its parameters may be; :func:`problems` checks every
parameter and returns every problem at once, each worded ``"<name> must be <what>, got <value>"``.
A parameter may be declared with several alternatives (``(None, Interval(int, 1, None))``): it is
valid when any of them accepts it.

Each constraint can also produce a value it refuses (:meth:`Constraint.invalid`), so the
conformance suite can check, for every declared parameter of every registered component, that a
bad value is refused with a message naming the parameter.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "NON_NEGATIVE",
    "OPEN_UNIT",
    "POSITIVE",
    "Boolean",
    "Constraint",
    "Dict",
    "Int",
    "Interval",
    "Options",
    "Pattern",
    "Real",
    "Satisfies",
    "Sequence",
    "Spec",
    "Text",
    "check",
    "describe",
    "problems",
]


class Constraint:
    """What one parameter may be."""

    def accepts(self, value: Any) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def invalid(self) -> Any:
        """A value this constraint refuses (for the conformance suite)."""
        return object()


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))


def _num(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


@dataclass(frozen=True)
class Interval(Constraint):
    """A whole number (``kind=int``) or a finite real number (``kind=float``; whole numbers pass too)
    between ``low`` and ``high`` (``None``: unbounded), ``closed`` at ``"both"``, ``"left"``,
    ``"right"`` or ``"neither"`` end."""

    kind: type
    low: float | None
    high: float | None
    closed: str = "both"

    def __post_init__(self) -> None:
        if self.kind not in (int, float):
            raise TypeError(f"Interval kind must be int or float, not {self.kind!r}")
        if self.closed not in ("both", "left", "right", "neither"):
            raise ValueError(f"Interval closed must be both, left, right or neither, not {self.closed!r}")

    def accepts(self, value: Any) -> bool:
        if not (_is_int(value) if self.kind is int else _is_real(value)):
            return False
        v = float(value)
        lo_in = self.closed in ("both", "left")
        hi_in = self.closed in ("both", "right")
        if self.low is not None and (v < self.low or (v == self.low and not lo_in)):
            return False
        return not (self.high is not None and (v > self.high or (v == self.high and not hi_in)))

    def describe(self) -> str:
        what = "a whole number" if self.kind is int else "a finite number"
        lo_in = self.closed in ("both", "left")
        hi_in = self.closed in ("both", "right")
        if self.low is None and self.high is None:
            return what
        if self.high is None:
            return f"{what} {'>=' if lo_in else '>'} {_num(self.low)}"  # type: ignore[arg-type]
        if self.low is None:
            return f"{what} {'<=' if hi_in else '<'} {_num(self.high)}"
        left, right = "[" if lo_in else "(", "]" if hi_in else ")"
        return f"{what} in {left}{_num(self.low)}, {_num(self.high)}{right}"

    def invalid(self) -> Any:
        if self.low is not None:
            return self.low - 1 if self.kind is int else self.low - 1.0
        if self.high is not None:
            return self.high + 1
        return "not a number"


@dataclass(frozen=True)
class Options(Constraint):
    """One of a fixed set of values (compared with ``==``; booleans never stand in for numbers)."""

    values: tuple[Any, ...]

    def __init__(self, *values: Any) -> None:
        object.__setattr__(self, "values", tuple(values))

    def accepts(self, value: Any) -> bool:
        return any(isinstance(value, bool) is isinstance(v, bool) and value == v for v in self.values)

    def describe(self) -> str:
        if len(self.values) == 1:
            return repr(self.values[0])
        return "one of " + ", ".join(repr(v) for v in self.values)

    def invalid(self) -> Any:
        return "no-such-option"


@dataclass(frozen=True)
class Boolean(Constraint):
    def accepts(self, value: Any) -> bool:
        return isinstance(value, bool)

    def describe(self) -> str:
        return "true or false"

    def invalid(self) -> Any:
        return "yes"


@dataclass(frozen=True)
class Text(Constraint):
    """A non-empty string."""

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str) and bool(value.strip())

    def describe(self) -> str:
        return "a non-empty string"

    def invalid(self) -> Any:
        return ""


@dataclass(frozen=True)
class Pattern(Constraint):
    """A string that compiles as a regular expression."""

    def accepts(self, value: Any) -> bool:
        if not isinstance(value, str) or not value:
            return False
        try:
            re.compile(value)
        except re.error:
            return False
        return True

    def describe(self) -> str:
        return "a valid regular expression"

    def invalid(self) -> Any:
        return "(unclosed"


@dataclass(frozen=True)
class Sequence(Constraint):
    """A list or tuple of at least ``min_len`` items, each accepted by ``of`` (and all distinct when
    ``unique``)."""

    of: Constraint
    min_len: int = 1
    unique: bool = False

    def accepts(self, value: Any) -> bool:
        if not isinstance(value, (list, tuple)) or len(value) < self.min_len:
            return False
        if self.unique and len(set(map(repr, value))) != len(value):
            return False
        return all(self.of.accepts(v) for v in value)

    def describe(self) -> str:
        least = "" if self.min_len == 0 else f"at least {self.min_len} " if self.min_len > 1 else "non-empty "
        return f"a {least}list of {'distinct ' if self.unique else ''}items, each {self.of.describe()}"

    def invalid(self) -> Any:
        return [self.of.invalid()]


@dataclass(frozen=True)
class Dict(Constraint):
    """A mapping with string keys (its contents are checked where it is used)."""

    def accepts(self, value: Any) -> bool:
        return isinstance(value, Mapping) and all(isinstance(k, str) for k in value)

    def describe(self) -> str:
        return "a mapping of names to values"

    def invalid(self) -> Any:
        return ["not", "a", "mapping"]


@dataclass(frozen=True)
class Satisfies(Constraint):
    """A value ``check`` accepts, described as ``what``; ``bad`` is a value it refuses."""

    check: Callable[[Any], bool]
    what: str
    bad: Any = None

    def accepts(self, value: Any) -> bool:
        try:
            return bool(self.check(value))
        except (TypeError, ValueError):
            return False

    def describe(self) -> str:
        return self.what

    def invalid(self) -> Any:
        return self.bad


#: a parameter's declaration: one constraint, ``None`` (the value None), or a tuple of alternatives
Spec = Constraint | None | tuple[Constraint | None, ...]


def _alternatives(spec: Spec) -> tuple[Constraint | None, ...]:
    return spec if isinstance(spec, tuple) else (spec,)


def accepts(spec: Spec, value: Any) -> bool:
    return any(value is None if c is None else c.accepts(value) for c in _alternatives(spec))


def describe(spec: Spec) -> str:
    return " or ".join("None" if c is None else c.describe() for c in _alternatives(spec))


def invalid(spec: Spec) -> Any:
    """A value every alternative of ``spec`` refuses (for the conformance suite)."""
    for c in _alternatives(spec):
        if c is None:
            continue
        bad = c.invalid()
        if not accepts(spec, bad):
            return bad
    return object()


def problems(values: Mapping[str, Any], constraints: Mapping[str, Spec]) -> list[str]:
    """Every parameter in ``values`` that its declaration refuses, in declaration order."""
    out = []
    for name, spec in constraints.items():
        if name in values and not accepts(spec, values[name]):
            out.append(f"{name} must be {describe(spec)}, got {values[name]!r}")
    return out


def merged(classes: Iterable[type], attr: str = "constraints") -> dict[str, Spec]:
    """The constraints declared on ``classes`` (an MRO, most derived first): a subclass's declaration
    of a parameter wins over its bases'."""
    out: dict[str, Spec] = {}
    for cls in reversed(list(classes)):
        out.update(vars(cls).get(attr, {}))
    return out


# ---------------------------------------------------------------------------- shorthands
def Int(low: int | None = None, high: int | None = None) -> Interval:
    """A whole number in ``[low, high]``."""
    return Interval(int, low, high)


def Real(low: float | None = None, high: float | None = None, closed: str = "both") -> Interval:
    """A finite number between ``low`` and ``high``."""
    return Interval(float, low, high, closed)


#: a finite number > 0, and >= 0
POSITIVE = Interval(float, 0, None, "neither")
NON_NEGATIVE = Interval(float, 0, None)
#: a probability strictly between 0 and 1 (a rate, an FPR)
OPEN_UNIT = Interval(float, 0, 1, "neither")


def check(owner: str, values: Mapping[str, Any], constraints: Mapping[str, Spec]) -> None:
    """Raise one ``ConfigError`` naming ``owner`` and every problem :func:`problems` finds."""
    found = problems(values, constraints)
    if found:
        from invguard.core.errors import ConfigError

        raise ConfigError(f"{owner}: " + "; ".join(found))
