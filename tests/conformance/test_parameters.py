"""Every registered attack and output policy declares each of its parameters once
(``constraints``, ``invguard.core.params``), accepts its defaults and its ``fast_params``, and
refuses a bad value of any parameter with one message naming the component and the parameter,
every problem at once. A new component passes this unchanged, or it is not done.
"""

from __future__ import annotations

import dataclasses
import inspect
import re

import pytest

import tests.audit_attacks
import tests.conformance.toys  # noqa: F401  (registers the toy attack and policy)
from invguard import policies
from invguard.attacks import ATTACKS
from invguard.attacks.base import declared_constraints
from invguard.core import ConfigError
from invguard.core.params import Int, Interval, Options, Real, Sequence, describe, invalid, problems
from invguard.policies.text import TEXT_POLICIES

ATTACK_NAMES = ATTACKS.names()
POLICY_CLASSES = {f"policy {n}": policies.POLICIES.get(n) for n in policies.POLICIES.names()} | {
    f"text policy {n}": cls for n, cls in TEXT_POLICIES.items()
}


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_every_attack_parameter_is_declared_and_a_bad_value_is_refused_by_name(name):
    cls = ATTACKS.get(name)
    declared = declared_constraints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    assert sorted(set(fields) - set(declared)) == [], "parameters without a declaration"
    assert sorted(set(declared) - set(fields)) == [], "declarations of no parameter"
    cls(), cls.fast()  # the defaults and the fast parameters are valid
    for f in fields:
        with pytest.raises(ConfigError, match=rf"^{re.escape(name)}: {re.escape(f)} must be .*, got "):
            cls(**{**cls.fast_params, f: invalid(declared[f])})
    # every problem at once, in one message
    with pytest.raises(ConfigError) as e:
        cls(**{f: invalid(declared[f]) for f in fields})
    assert [p.split(" must be ")[0] for p in str(e.value).removeprefix(f"{name}: ").split("; ")] == fields


@pytest.mark.parametrize("label", sorted(POLICY_CLASSES))
def test_every_policy_parameter_is_declared_and_a_bad_value_is_refused_by_name(label):
    cls = POLICY_CLASSES[label]
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    sig = inspect.signature(cls.__init__).parameters.values()
    params = [p.name for p in sig if p.name != "self" and p.kind in named]
    assert sorted(set(params) - set(cls.constraints)) == [], "parameters without a declaration"
    assert sorted(set(cls.constraints) - set(params)) == [], "declarations of no parameter"
    cls()
    for p in params:
        with pytest.raises(ConfigError, match=rf"^[a-z_]+: {re.escape(p)} must be .*, got "):
            cls(**{p: invalid(cls.constraints[p])})


def test_the_declarations_read_as_one_message_format():
    assert describe(Int(1)) == "a whole number >= 1"
    assert describe(Real(0, 1, "left")) == "a finite number in [0, 1)"
    assert describe((None, Int(0, 6))) == "None or a whole number in [0, 6]"
    assert describe(Options("pca", "pixel")) == "one of 'pca', 'pixel'"
    assert (
        describe(Sequence(Int(0), unique=True))
        == "a non-empty list of distinct items, each a whole number >= 0"
    )
    # booleans never pass for numbers, whole numbers pass for reals, infinities never
    spec = {"n": Int(1), "x": Interval(float, 0, None, "neither"), "o": Options(1, 2)}
    assert problems({"n": True, "x": 2, "o": True}, spec) == [
        "n must be a whole number >= 1, got True",
        "o must be one of 1, 2, got True",
    ]
    assert problems({"x": float("inf")}, spec) == ["x must be a finite number > 0, got inf"]
    assert problems({"x": 0}, spec) == ["x must be a finite number > 0, got 0"]
