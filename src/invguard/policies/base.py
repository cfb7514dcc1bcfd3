"""OutputPolicy, composition and the policy-wrapped target."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from invguard.core.access import Access
from invguard.core.errors import BudgetExhausted, ConfigError
from invguard.core.params import Spec
from invguard.core.registry import Registry
from invguard.core.target import BaseTarget, FloatArray, Prediction, Target, unwrap

POLICIES: Registry[type[OutputPolicy]] = Registry("output policy")


class OutputPolicy:
    """Reduce what a prediction reveals.

    ``cap`` is the highest access a response passing through this policy can carry; ``leaves``
    what the answers actually tell an attacker; ``random`` whether they draw randomness. Subclasses set
    ``name`` (the config key) and implement ``transform(pred)``. Policies compose left to right
    with ``|``: ``TopK(3) | Round(2)`` keeps the top three scores, then rounds them.
    """

    name: str = "policy"
    cap: Access = Access.SCORES
    preserves_argmax: bool = True
    #: whether answers draw randomness (the guard rebuilds such a policy unseeded, see ``reseeded``)
    random: bool = False
    #: what each constructor parameter may be (``invguard.core.params``), checked by ``check``
    constraints: ClassVar[Mapping[str, Spec]] = {}

    @property
    def leaves(self) -> Access:
        """The access an attacker is left with: what the answers carry, which can be less than the
        format ``cap`` allows (a top-1 score vector is a one-hot label). The exposure sweep picks
        the attacks to run by this."""
        return self.cap

    def reseeded(self, seed: int | None) -> OutputPolicy:
        """This policy with its random steps drawing from ``seed`` (None: OS entropy)."""
        return self

    def seeded_by_default(self, seed: int) -> OutputPolicy:
        """This policy with its *unseeded* random steps drawing from ``seed`` (an audit's run seed,
        so that a seeded audit reproduces); steps given a seed of their own keep it."""
        return self

    def apply(self, pred: Prediction) -> Prediction:
        if pred.access <= Access.LABEL:
            return pred
        return self.transform(pred)

    def transform(self, pred: Prediction) -> Prediction:  # pragma: no cover - abstract
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        return {}

    def label(self) -> str:
        """Short human description of this step, e.g. ``top_k=3``."""
        p = self.params()
        return self.name if not p else ", ".join(f"{k}={v}" for k, v in p.items())

    def describe(self, base: Access | None = None) -> str:
        level = self.cap if base is None else min(base, self.cap)
        return f"{level.name} ({self.label()})"

    def to_spec(self) -> list[dict[str, Any]]:
        return [{self.name: self.params() or True}]

    def steps(self) -> tuple[OutputPolicy, ...]:
        return (self,)

    def __or__(self, other: OutputPolicy) -> Chain:
        if not isinstance(other, OutputPolicy):
            return NotImplemented
        return Chain(*self.steps(), *other.steps())

    def wrap(self, target: Target) -> PolicyTarget:
        return PolicyTarget(target, self)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, OutputPolicy) and type(self) is type(other) and self.params() == other.params()
        )

    def __hash__(self) -> int:
        return hash((type(self).__name__, tuple(sorted(self.params().items()))))


class Chain(OutputPolicy):
    """Several policies applied in order."""

    name = "chain"

    def __init__(self, *policies: OutputPolicy) -> None:
        if not policies:
            raise ConfigError("a policy chain needs at least one policy")
        self.policies: tuple[OutputPolicy, ...] = tuple(policies)
        self.cap = min(p.cap for p in self.policies)
        self.preserves_argmax = all(p.preserves_argmax for p in self.policies)
        self.random = any(p.random for p in self.policies)

    @property
    def leaves(self) -> Access:
        return min(p.leaves for p in self.policies)

    def reseeded(self, seed: int | None) -> OutputPolicy:
        return Chain(*(p.reseeded(seed) for p in self.policies)) if self.random else self

    def seeded_by_default(self, seed: int) -> OutputPolicy:
        return Chain(*(p.seeded_by_default(seed) for p in self.policies)) if self.random else self

    def apply(self, pred: Prediction) -> Prediction:
        for p in self.policies:
            pred = p.apply(pred)
        return pred

    def transform(self, pred: Prediction) -> Prediction:
        return self.apply(pred)

    def steps(self) -> tuple[OutputPolicy, ...]:
        return self.policies

    def label(self) -> str:
        return ", ".join(p.label() for p in self.policies)

    def params(self) -> dict[str, Any]:
        return {"policies": [p.to_spec() for p in self.policies]}

    def to_spec(self) -> list[dict[str, Any]]:
        return [s for p in self.policies for s in p.to_spec()]

    def __repr__(self) -> str:
        return " | ".join(repr(p) for p in self.policies)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Chain) and self.policies == other.policies

    def __hash__(self) -> int:
        return hash(self.policies)


class PolicyTarget(BaseTarget):
    """A target seen through an output policy: its access is lowered and its answers reduced.

    Queries are counted (and budgeted) by the wrapped target; a budget may also be set here.
    """

    def __init__(self, inner: Target, policy: OutputPolicy, *, budget: int | None = None) -> None:
        super().__init__(
            num_classes=inner.num_classes,
            input_shape=inner.input_shape,
            access=min(inner.access, policy.cap),
            budget=budget,
            name=getattr(inner, "name", "target"),
        )
        self.inner = inner
        self.policy = policy

    @property
    def queries_used(self) -> int:
        return self.inner.queries_used if self._budget is None else self._queries

    @property
    def budget(self) -> int | None:
        """This wrapper's own budget, else the wrapped target's."""
        return self._budget if self._budget is not None else self.inner.budget

    @property
    def queries_left(self) -> int | None:
        """The effective number of queries left: the lowest along the chain of wrapped targets."""
        return unwrap(self).queries_left()

    def policy_label(self) -> str:
        """Every policy between the caller and the model, innermost first."""
        inner = self.inner.policy_label() if isinstance(self.inner, PolicyTarget) else ""
        return f"{inner}, {self.policy.label()}" if inner else self.policy.label()

    def describe(self) -> str:
        return f"{self.access.name} ({self.policy_label()})"

    def predict(self, x: FloatArray) -> Prediction:
        batch = self._as_batch(x)
        if self._budget is not None:
            self.charge(batch.shape[0])
        try:
            pred = self.inner.predict(batch)
        except BudgetExhausted:
            if self._budget is not None:
                self.refund(batch.shape[0])
            raise
        return self.policy.apply(pred)


# --------------------------------------------------------------------------------------------- parsing

_ALIASES = {
    "label": "label_only",
    "labels": "label_only",
    "label-only": "label_only",
    "topk": "top_k",
    "top-k": "top_k",
    "rounded": "round",
    "rounding": "round",
    "full": "identity",
    "logits": "identity",
    "none": "identity",
    "scores_only": "scores",
}


def _build(name: str, value: Any, where: str) -> OutputPolicy:
    key = _ALIASES.get(name.strip().lower(), name.strip().lower())
    cls = POLICIES.get(key) if key in POLICIES else None
    if cls is None:
        raise ConfigError(f"{where}: unknown output policy {name!r}; known: {', '.join(POLICIES.names())}")
    out: OutputPolicy = construct(cls, value, key, where)
    return out


def construct(cls: Any, value: Any, key: str, where: str) -> Any:
    """A policy (image or text) from its config value: ``true``/``null`` for its defaults, a
    mapping of parameters, or its one parameter; a refusal names ``where``."""
    try:
        if value is True or value is None:
            return cls()
        if isinstance(value, Mapping):
            return cls(**value)
        return cls(value)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    except TypeError as e:
        raise ConfigError(f"{where}: bad parameters for {key!r}: {e}") from None


def _scalar(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def parse(spec: Any, where: str = "policy") -> OutputPolicy:
    """Build a policy from its config form.

    Accepted forms: an ``OutputPolicy``; a name (``"label_only"``, ``"scores"``, ``"logits"``); a string
    of steps (``"top_k=3 round=2"``); a mapping (``{"top_k": 3, "round": 2}``, applied in order) or a
    list of such items.
    """
    if isinstance(spec, OutputPolicy):
        return spec
    steps: list[OutputPolicy] = []
    if isinstance(spec, str):
        tokens = [t for t in re.split(r"[\s,|]+", spec.strip()) if t]
        if not tokens:
            raise ConfigError(f"{where}: empty output policy")
        for t in tokens:
            name, eq, val = t.partition("=")
            if eq and not val:
                raise ConfigError(f"{where}: {name!r} needs a value after '=' (e.g. {name}=3)")
            steps.append(_build(name, _scalar(val) if val else True, where))
    elif isinstance(spec, Mapping):
        if not spec:
            raise ConfigError(f"{where}: empty output policy")
        for name, val in spec.items():
            steps.append(_build(str(name), val, f"{where}.{name}"))
    elif isinstance(spec, Sequence):
        for i, item in enumerate(spec):
            steps.extend(parse(item, f"{where}[{i}]").steps())
    else:
        raise ConfigError(f"{where}: cannot read an output policy from {spec!r}")
    if not steps:
        raise ConfigError(f"{where}: empty output policy")
    return steps[0] if len(steps) == 1 else Chain(*steps)
