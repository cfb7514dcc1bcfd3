"""Output policies for language models: what a generation or a scored text may reveal.

- ``StripLogprobs`` (``strip_logprobs``): text only (:attr:`TextAccess.TEXT`).
- ``TopLogprobs(k, decimals)`` (``top_logprobs=5 round=2``): per position only the ``k`` most likely
  tokens' log-probabilities, rounded; a token's own log-probability only when it is among them
  (:attr:`TextAccess.TOPK_LOGPROBS`).
- ``RoundLogprobs(decimals)``: every log-probability rounded (``LOGPROBS``).
- ``SecretFilter(patterns)`` (``secret_filter``): matches of secret patterns in generated text (API
  keys, e-mail addresses, card numbers passing the Luhn check, or your own regular expressions) are
  replaced by a mask; the tokens on a masked span lose their text, log-probabilities and
  alternatives. Each answer reports how many matches of each pattern it masked (the guard counts
  them as "sensitive fields returned"); the matched text itself is never kept.

Policies compose with ``|`` and are parsed from config strings like the classifier policies:
``text_policy("secret_filter top_logprobs=5 round=2")``. A composed policy's access is the lowest
of its steps'; masking happens before log-probabilities are reduced.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, ClassVar

import numpy as np

from invguard.core.access import TextAccess
from invguard.core.errors import AccessError, ConfigError
from invguard.core.params import Boolean, Dict, Int, Spec, check
from invguard.policies.base import construct
from invguard.targets.lm import BaseTextTarget, Generation, TextTarget, TokenLogprobs

MASK = "[REDACTED]"

# default secret patterns: name -> regular expression
SECRET_PATTERNS: dict[str, str] = {
    "api_key": r"\b(?:sk|pk|rk)-[A-Za-z0-9_\-]{16,}\b|\bAKIA[0-9A-Z]{16}\b|\bgh[pousr]_[A-Za-z0-9]{36,}\b",
    "email": r"\b[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}\b",
    "card_number": r"\b(?:\d[ \-]?){12,18}\d\b",
}


def _luhn(digits: str) -> bool:
    d = [int(c) for c in digits if c.isdigit()]
    if not 13 <= len(d) <= 19:
        return False
    total = 0
    for i, v in enumerate(reversed(d)):
        if i % 2:
            v *= 2
            if v > 9:
                v -= 9
        total += v
    return total % 10 == 0


def reveal(tl: TokenLogprobs, access: TextAccess, k: int, decimals: int | None = None) -> TokenLogprobs:
    """What ``access`` lets a client see of ``tl``: at most ``k`` alternatives per position; below
    LOGPROBS a token's own log-probability only when it is among them; rounded to ``decimals``."""
    top: list[dict[str, float]] = []
    src = tl.top or tuple({} for _ in tl.tokens)
    for alt in src:
        best = sorted(alt.items(), key=lambda kv: -kv[1])[: max(0, k)]
        top.append({t: (round(v, decimals) if decimals is not None else v) for t, v in best})
    lp = np.array(tl.logprobs, dtype=np.float64)
    if access < TextAccess.LOGPROBS:
        for i, tok in enumerate(tl.tokens):
            if tok in top[i]:
                lp[i] = top[i][tok]
            else:
                lp[i] = np.nan
    if decimals is not None:
        lp = np.round(lp, decimals)
    return replace(tl, logprobs=lp, top=tuple(top), access=min(access, TextAccess.LOGPROBS))


class TextPolicy:
    """Reduce what a language model's answer reveals. ``cap`` is the highest access it lets through."""

    name: str = "text policy"
    cap: TextAccess = TextAccess.WHITEBOX
    #: what each constructor parameter may be (``invguard.core.params``)
    constraints: ClassVar[Mapping[str, Spec]] = {}

    def params(self) -> dict[str, Any]:
        return {}

    def label(self) -> str:
        p = self.params()
        return self.name if not p else self.name + " " + " ".join(f"{k}={v}" for k, v in p.items())

    def describe(self, base: TextAccess | None = None) -> str:
        level = self.cap if base is None else min(base, self.cap)
        return f"{level.name} ({self.label()})"

    def steps(self) -> tuple[TextPolicy, ...]:
        return (self,)

    def __or__(self, other: TextPolicy) -> TextChain:
        if not isinstance(other, TextPolicy):
            return NotImplemented
        return TextChain(*self.steps(), *other.steps())

    # what a step does; the defaults change nothing
    def mask(self, text: str) -> tuple[list[tuple[int, int]], dict[str, int]]:
        """Spans of ``text`` to mask, and how many matches of each pattern they are."""
        return [], {}

    def top_k(self) -> int | None:
        """The most alternatives per position this step lets through (None: no limit)."""
        return None

    def decimals(self) -> int | None:
        return None

    def wrap(self, target: TextTarget) -> TextPolicyTarget:
        return TextPolicyTarget(target, self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.params().items())})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TextPolicy) and type(self) is type(other) and self.params() == other.params()

    def __hash__(self) -> int:
        return hash((type(self).__name__, repr(self.params())))

    # ---------------------------------------------------------------- applying the whole policy
    def limits(self) -> tuple[int | None, int | None]:
        ks = [k for k in (s.top_k() for s in self.steps()) if k is not None]
        ds = [d for d in (s.decimals() for s in self.steps()) if d is not None]
        return (min(ks) if ks else None), (min(ds) if ds else None)

    def filter_text(self, text: str) -> tuple[str, list[tuple[int, int]], dict[str, int]]:
        """``text`` with every step's secret matches masked: (masked text, spans, counts)."""
        spans: list[tuple[int, int]] = []
        counts: dict[str, int] = {}
        for s in self.steps():
            sp, c = s.mask(text)
            spans += sp
            for k, v in c.items():
                counts[k] = counts.get(k, 0) + v
        if not spans:
            return text, [], counts
        merged: list[list[int]] = []
        for a, b in sorted(spans):
            if merged and a <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        out, at = [], 0
        for a, b in merged:
            out += [text[at:a], MASK]
            at = b
        out.append(text[at:])
        return "".join(out), [(a, b) for a, b in merged], counts

    def apply_tokens(
        self, tl: TokenLogprobs, base: TextAccess, spans: Sequence[tuple[int, int]] = (), k: int = 0
    ) -> TokenLogprobs | None:
        """The token view a client gets (None at TEXT); tokens overlapping a masked span are blanked."""
        level = min(base, self.cap)
        if level < TextAccess.TOPK_LOGPROBS:
            return None
        cap_k, decimals = self.limits()
        keep = k if level >= TextAccess.LOGPROBS else max(k, 1)
        if cap_k is not None:
            keep = min(keep, cap_k) if level >= TextAccess.LOGPROBS else cap_k
        out = reveal(tl, level, keep, decimals)
        if spans:
            toks, lp, top = list(out.tokens), np.array(out.logprobs), list(out.top or ())
            ends = [*list(out.offsets[1:]), len(tl.text)]
            for i, (a, b) in enumerate(zip(out.offsets, ends, strict=True)):
                if any(a < e and s < max(b, a + 1) for s, e in spans):
                    toks[i], lp[i] = MASK, np.nan
                    if top:
                        top[i] = {}
            out = replace(out, tokens=tuple(toks), logprobs=lp, top=tuple(top) if top else out.top)
        return out

    def apply_generation(
        self, g: Generation, base: TextAccess, k: int = 0
    ) -> tuple[Generation, dict[str, int]]:
        text, spans, counts = self.filter_text(g.text)
        tl = None if g.logprobs is None else self.apply_tokens(g.logprobs, base, spans, k)
        return replace(g, text=text, logprobs=tl), counts


class TextChain(TextPolicy):
    name = "chain"

    def __init__(self, *policies: TextPolicy) -> None:
        if not policies:
            raise ConfigError("a text policy chain needs at least one policy")
        self.policies = tuple(policies)
        self.cap = min(p.cap for p in policies)

    def steps(self) -> tuple[TextPolicy, ...]:
        return self.policies

    def label(self) -> str:
        return ", ".join(p.label() for p in self.policies)

    def params(self) -> dict[str, Any]:
        return {"policies": [p.label() for p in self.policies]}


class FullLogprobs(TextPolicy):
    """Everything the model answers (names the unrestricted exposure in configs)."""

    name = "logprobs"
    cap = TextAccess.LOGPROBS


class StripLogprobs(TextPolicy):
    name = "strip_logprobs"
    cap = TextAccess.TEXT


class TopLogprobs(TextPolicy):
    constraints: ClassVar[Mapping[str, Spec]] = {"k": Int(1, 20), "decimals": (None, Int(0, 6))}

    def __init__(self, k: int = 5, decimals: int | None = None) -> None:
        check("top_logprobs", {"k": k, "decimals": decimals}, self.constraints)
        self.k = k
        self._decimals = decimals

    name = "top_logprobs"
    cap = TextAccess.TOPK_LOGPROBS

    def params(self) -> dict[str, Any]:
        return {"k": self.k} if self._decimals is None else {"k": self.k, "round": self._decimals}

    def top_k(self) -> int | None:
        return self.k

    def decimals(self) -> int | None:
        return self._decimals


class RoundLogprobs(TextPolicy):
    constraints: ClassVar[Mapping[str, Spec]] = {"decimals": Int(0, 6)}

    def __init__(self, decimals: int = 2) -> None:
        check("round", {"decimals": decimals}, self.constraints)
        self._decimals = decimals

    name = "round"
    cap = TextAccess.LOGPROBS

    def params(self) -> dict[str, Any]:
        return {"decimals": self._decimals}

    def decimals(self) -> int | None:
        return self._decimals


class SecretFilter(TextPolicy):
    """Mask matches of secret patterns. ``patterns``: ``{name: regex}`` added to (or, with
    ``defaults=False``, instead of) :data:`SECRET_PATTERNS`. ``card_number`` matches must pass the
    Luhn check."""

    name = "secret_filter"
    cap = TextAccess.WHITEBOX

    constraints: ClassVar[Mapping[str, Spec]] = {"patterns": (None, Dict()), "defaults": Boolean()}

    def __init__(self, patterns: Mapping[str, str] | None = None, defaults: bool = True) -> None:
        check(self.name, {"patterns": patterns, "defaults": defaults}, self.constraints)
        merged = {**(SECRET_PATTERNS if defaults else {}), **dict(patterns or {})}
        if not merged:
            raise ConfigError("secret_filter: no patterns (defaults=False and none given)")
        self.compiled: dict[str, re.Pattern[str]] = {}
        problems = []
        for n, p in merged.items():
            if not isinstance(p, str) or not p:
                problems.append(f"pattern {n!r} must be a non-empty regular expression string")
                continue
            try:
                self.compiled[str(n)] = re.compile(p)
            except re.error as e:
                problems.append(f"pattern {n!r} is not a valid regular expression ({e})")
        if problems:
            raise ConfigError("secret_filter: " + "; ".join(problems))
        self.patterns = merged
        self.defaults = defaults

    def params(self) -> dict[str, Any]:
        return {"patterns": sorted(self.compiled)}

    def mask(self, text: str) -> tuple[list[tuple[int, int]], dict[str, int]]:
        spans: list[tuple[int, int]] = []
        counts: dict[str, int] = {}
        for n, rx in self.compiled.items():
            for m in rx.finditer(text):
                if m.end() == m.start() or (n == "card_number" and not _luhn(m.group())):
                    continue
                spans.append((m.start(), m.end()))
                counts[n] = counts.get(n, 0) + 1
        return spans, counts


TEXT_POLICIES: dict[str, type[TextPolicy]] = {
    "logprobs": FullLogprobs,
    "strip_logprobs": StripLogprobs,
    "top_logprobs": TopLogprobs,
    "round": RoundLogprobs,
    "secret_filter": SecretFilter,
}
_TEXT_ALIASES = {
    "full": "logprobs",
    "text": "strip_logprobs",
    "text_only": "strip_logprobs",
    "top_k": "top_logprobs",
}


def text_policy(spec: Any, where: str = "text policy") -> TextPolicy:
    """Build a text policy from its config form: a ``TextPolicy``; a string of steps
    (``"secret_filter top_logprobs=5 round=2"``: a ``round`` after ``top_logprobs`` rounds its
    values); a mapping (``{"top_logprobs": {"k": 5, "decimals": 2}, "secret_filter": {"patterns":
    {...}}}``) or a list of such items."""
    if isinstance(spec, TextPolicy):
        return spec
    steps: list[TextPolicy] = []

    def build(name: str, value: Any, at: str) -> TextPolicy:
        key = _TEXT_ALIASES.get(name.strip().lower(), name.strip().lower())
        cls = TEXT_POLICIES.get(key)
        if cls is None:
            raise ConfigError(f"{at}: unknown text policy {name!r}; known: {', '.join(TEXT_POLICIES)}")
        out: TextPolicy = construct(cls, value, key, at)
        return out

    if isinstance(spec, str):
        tokens = [t for t in re.split(r"[\s,|]+", spec.strip()) if t]
        for t in tokens:
            name, eq, val = t.partition("=")
            if eq and not val:
                raise ConfigError(f"{where}: {name!r} needs a value after '='")
            v: Any = True
            if val:
                try:
                    v = int(val)
                except ValueError:
                    raise ConfigError(f"{where}: {name}={val!r}: expected a whole number") from None
            if (
                name == "round"
                and steps
                and isinstance(steps[-1], TopLogprobs)
                and steps[-1].decimals() is None
            ):
                steps[-1] = TopLogprobs(steps[-1].k, v)
                continue
            steps.append(build(name, v, where))
    elif isinstance(spec, Mapping):
        for name, val in spec.items():
            steps.append(build(str(name), val, f"{where}.{name}"))
    elif isinstance(spec, Sequence):
        for i, item in enumerate(spec):
            steps.extend(text_policy(item, f"{where}[{i}]").steps())
    else:
        raise ConfigError(f"{where}: cannot read a text policy from {spec!r}")
    if not steps:
        raise ConfigError(f"{where}: empty text policy")
    return steps[0] if len(steps) == 1 else TextChain(*steps)


class TextPolicyTarget(BaseTextTarget):
    """A text target seen through a text policy: access lowered, answers reduced and masked.

    Queries and tokens are counted by the wrapped target; ``masked`` totals the secret matches
    masked so far, by pattern (the audit's "sensitive fields returned").
    """

    def __init__(self, inner: TextTarget, policy: TextPolicy) -> None:
        super().__init__(access=min(inner.access, policy.cap), name=getattr(inner, "name", "text target"))
        self.inner = inner
        self.policy = policy
        self.masked: dict[str, int] = {}

    @property
    def queries_used(self) -> int:
        return self.inner.queries_used

    @property
    def tokens_used(self) -> int:
        return self.inner.tokens_used

    @property
    def budget(self) -> int | None:
        return self.inner.budget

    def describe(self) -> str:
        return f"{self.access.name} ({self.policy.label()})"

    def _count(self, counts: Mapping[str, int]) -> None:
        for k, v in counts.items():
            self.masked[k] = self.masked.get(k, 0) + v

    def generate(
        self,
        prompts: Sequence[str],
        *,
        max_tokens: int = 32,
        temperature: float = 1.0,
        top_k: int = 0,
        top_logprobs: int = 0,
        seed: int | None = None,
    ) -> list[Generation]:
        k = self._check_top(top_logprobs, "generate")
        ask = self._ask(k)
        gens = self.inner.generate(
            prompts, max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_logprobs=ask, seed=seed
        )
        out = []
        for g in gens:
            g2, counts = self.policy.apply_generation(g, self.inner.access, k)
            self._count(counts)
            out.append(g2)
        return out

    def _ask(self, k: int) -> int:
        """How many alternatives to ask the wrapped target for: none at TEXT, the policy's k at
        TOPK_LOGPROBS (a token's own log-probability is shown only if it is among them), else k."""
        if self.access < TextAccess.TOPK_LOGPROBS:
            return 0
        cap_k, _ = self.policy.limits()
        ask = k if self.access >= TextAccess.LOGPROBS else max(1, cap_k or k)
        return min(ask, int(getattr(self.inner, "max_top_logprobs", 20)))

    def score(self, texts: Sequence[str], *, top_logprobs: int = 0) -> list[TokenLogprobs]:
        if self.access < TextAccess.TOPK_LOGPROBS:
            raise AccessError(
                f"scoring a text needs TOPK_LOGPROBS or more; this target grants {self.describe()}"
            )
        k = self._check_top(top_logprobs, "score")
        scored = self.inner.score(texts, top_logprobs=self._ask(k))
        out = []
        for tl in scored:
            shown = self.policy.apply_tokens(tl, self.inner.access, (), k)
            if shown is None:  # pragma: no cover - excluded by the access check above
                raise AccessError(f"scoring a text needs TOPK_LOGPROBS; this target grants {self.describe()}")
            out.append(shown)
        return out
