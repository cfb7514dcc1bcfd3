"""Language models as targets: the protocol, what they answer, query and token budgets.

A text target declares the highest :class:`~invguard.core.access.TextAccess` it grants:

- ``TEXT``: :meth:`TextTarget.generate` returns continuations only;
- ``TOPK_LOGPROBS``: generations and scored texts (``score``, the ``echo`` of OpenAI-style APIs)
  carry, per position, the top-k alternatives' log-probabilities; a token's own log-probability
  only when it is among them;
- ``LOGPROBS``: every token's log-probability;
- ``WHITEBOX``: the model itself as well (local models).

Every prompt or scored text is one query; generated and scored tokens count against an optional
token budget. Both budgets are checked before anything is sent, with an upper bound for the tokens
(``max_tokens`` per generation; the UTF-8 length of a scored text, which bounds its byte-level
tokens), and the unused part is refunded once the answer is in, so no budget is ever exceeded.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from invguard.core.access import TextAccess
from invguard.core.errors import AccessError, BudgetExhausted, ConfigError


@dataclass(frozen=True)
class TokenLogprobs:
    """Per-token view of one text: tokens, where they start, and what the target revealed.

    ``logprobs[i]`` is the log-probability of token ``i`` given the tokens before it, NaN where it
    was not revealed (below ``LOGPROBS``; the first token of an echoed text on servers that do not
    score it). ``top[i]`` maps the most likely tokens at position ``i`` to their log-probabilities
    (empty mappings at ``LOGPROBS`` when none were asked for; ``None`` at ``TEXT``).
    """

    text: str
    tokens: tuple[str, ...]
    offsets: tuple[int, ...]
    logprobs: np.ndarray
    top: tuple[Mapping[str, float], ...] | None = None
    access: TextAccess = TextAccess.LOGPROBS

    def __post_init__(self) -> None:
        n = len(self.tokens)
        if len(self.offsets) != n or self.logprobs.shape != (n,):
            raise ValueError(
                f"TokenLogprobs: {n} tokens but {len(self.offsets)} offsets and logprobs of shape "
                f"{self.logprobs.shape}"
            )
        if self.top is not None and len(self.top) != n:
            raise ValueError(f"TokenLogprobs: {n} tokens but {len(self.top)} top-logprob entries")

    def _mask(self, start_char: int) -> np.ndarray:
        return np.asarray(self.offsets, dtype=np.int64) >= start_char

    def filled(self) -> np.ndarray:
        """Log-probabilities with each hidden one replaced by an upper bound on it: the lowest
        top-k log-probability shown at its position (a token outside the top k is at most that
        likely). Positions with neither stay NaN."""
        lp = np.array(self.logprobs, dtype=np.float64)
        if self.top is not None:
            for i in np.flatnonzero(np.isnan(lp)):
                alt = self.top[i]
                if alt:
                    lp[i] = min(alt.values())
        return lp

    def total(self, start_char: int = 0) -> float:
        """Sum of the (filled) log-probabilities of the tokens starting at or after ``start_char``."""
        lp = self.filled()[self._mask(start_char)]
        return float(np.nansum(lp))

    def count(self, start_char: int = 0) -> int:
        """How many tokens from ``start_char`` on carry a (filled) log-probability."""
        lp = self.filled()[self._mask(start_char)]
        return int(np.sum(~np.isnan(lp)))

    def exact(self, start_char: int = 0) -> bool:
        """Whether every token from ``start_char`` on has its own log-probability (no bound used)."""
        return bool(np.all(~np.isnan(self.logprobs[self._mask(start_char)])))

    def to_json(self) -> dict[str, Any]:
        return {
            "tokens": list(self.tokens),
            "text_offset": list(self.offsets),
            "token_logprobs": [None if math.isnan(v) else float(v) for v in self.logprobs],
            "top_logprobs": None if self.top is None else [dict(t) for t in self.top],
        }


@dataclass(frozen=True)
class Generation:
    """One continuation of a prompt; ``logprobs`` of its tokens where access allows."""

    prompt: str
    text: str
    logprobs: TokenLogprobs | None = None
    finish_reason: str = "length"


@runtime_checkable
class TextTarget(Protocol):
    """What an attack may ask of a language model."""

    @property
    def access(self) -> TextAccess: ...

    @property
    def queries_used(self) -> int: ...

    @property
    def budget(self) -> int | None: ...

    @property
    def tokens_used(self) -> int: ...

    def describe(self) -> str: ...

    def generate(
        self,
        prompts: Sequence[str],
        *,
        max_tokens: int = 32,
        temperature: float = 1.0,
        top_k: int = 0,
        top_logprobs: int = 0,
        seed: int | None = None,
    ) -> list[Generation]: ...

    def score(self, texts: Sequence[str], *, top_logprobs: int = 0) -> list[TokenLogprobs]: ...


def _whole(value: Any, what: str, name: str, minimum: int = 0) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{name}: {what} must be a whole number >= {minimum} or None, got {value!r}")
    return int(value)


class BaseTextTarget:
    """Query and token counting and budgets shared by every text adapter.

    Subclasses implement ``_generate(prompts, **options)`` and ``_score(texts, top_logprobs)``; they
    never see a request that would break a budget.
    """

    def __init__(
        self,
        *,
        access: TextAccess | str | int,
        budget: int | None = None,
        token_budget: int | None = None,
        max_top_logprobs: int = 20,
        name: str = "text target",
    ) -> None:
        self.name = name
        self._access = TextAccess.parse(access)
        self._budget = _whole(budget, "budget", name)
        self._token_budget = _whole(token_budget, "token_budget", name)
        self.max_top_logprobs = int(_whole(max_top_logprobs, "max_top_logprobs", name) or 0)
        self._queries = 0
        self._tokens = 0
        self._lock = threading.Lock()

    @property
    def access(self) -> TextAccess:
        return self._access

    @property
    def queries_used(self) -> int:
        return self._queries

    @property
    def tokens_used(self) -> int:
        return self._tokens

    @property
    def budget(self) -> int | None:
        return self._budget

    @property
    def token_budget(self) -> int | None:
        return self._token_budget

    def describe(self) -> str:
        return self._access.name

    def reset_queries(self) -> None:
        with self._lock:
            self._queries = 0
            self._tokens = 0

    def charge(self, queries: int, tokens: int) -> None:
        """Count ``queries`` and (an upper bound of) ``tokens``, refusing before anything is spent."""
        with self._lock:
            if self._budget is not None and self._queries + queries > self._budget:
                raise BudgetExhausted(
                    f"{self.name}: query budget exhausted: {self._queries} of {self._budget} queries "
                    f"used, this request needs {queries} more",
                    used=self._queries,
                    budget=self._budget,
                    requested=queries,
                )
            if self._token_budget is not None and self._tokens + tokens > self._token_budget:
                raise BudgetExhausted(
                    f"{self.name}: token budget exhausted: {self._tokens} of {self._token_budget} tokens "
                    f"used, this request may need up to {tokens} more",
                    used=self._tokens,
                    budget=self._token_budget,
                    requested=tokens,
                )
            self._queries += queries
            self._tokens += tokens

    def refund(self, queries: int, tokens: int) -> None:
        with self._lock:
            self._queries = max(0, self._queries - queries)
            self._tokens = max(0, self._tokens - tokens)

    def _check_top(self, top_logprobs: int, what: str) -> int:
        k = _whole(top_logprobs, "top_logprobs", self.name) or 0
        if k > self.max_top_logprobs:
            raise ConfigError(f"{self.name}: top_logprobs must be <= {self.max_top_logprobs}, got {k}")
        if k and self._access < TextAccess.TOPK_LOGPROBS:
            raise AccessError(
                f"{what} with top_logprobs needs TOPK_LOGPROBS; this target grants {self.describe()}"
            )
        return k

    @staticmethod
    def _texts(values: Sequence[str], what: str, name: str) -> list[str]:
        if isinstance(values, str) or not isinstance(values, Sequence):
            raise ConfigError(f"{name}: {what} must be a list of strings, got {type(values).__name__}")
        out = list(values)
        if not out:
            raise ConfigError(f"{name}: {what} is empty: pass at least one string")
        bad = [i for i, v in enumerate(out) if not isinstance(v, str)]
        if bad:
            raise ConfigError(f"{name}: {what}[{bad[0]}] is not a string")
        return out

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
        """Sample one continuation per prompt (``temperature=0``: greedy)."""
        ps = self._texts(prompts, "prompts", self.name)
        if not 1 <= int(max_tokens) <= 4096:
            raise ConfigError(f"{self.name}: max_tokens must be in [1, 4096], got {max_tokens}")
        if not (temperature >= 0 and math.isfinite(temperature)):
            raise ConfigError(f"{self.name}: temperature must be >= 0, got {temperature}")
        if isinstance(top_k, bool) or int(top_k) < 0:
            raise ConfigError(f"{self.name}: top_k must be >= 0 (0: no truncation), got {top_k}")
        k = self._check_top(top_logprobs, "generate")
        bound = len(ps) * int(max_tokens)
        self.charge(len(ps), bound)
        try:
            out = self._generate(
                ps,
                max_tokens=int(max_tokens),
                temperature=float(temperature),
                top_k=int(top_k),
                top_logprobs=k,
                seed=seed,
            )
        except BaseException:
            self.refund(len(ps), bound)
            raise
        used = sum(
            len(g.logprobs.tokens) if g.logprobs is not None else self._count_tokens(g.text) for g in out
        )
        self.refund(0, max(0, bound - used))
        return out

    def score(self, texts: Sequence[str], *, top_logprobs: int = 0) -> list[TokenLogprobs]:
        """The log-probability the model gives each token of each text (needs TOPK_LOGPROBS)."""
        ts = self._texts(texts, "texts", self.name)
        if self._access < TextAccess.TOPK_LOGPROBS:
            raise AccessError(
                f"scoring a text needs TOPK_LOGPROBS or more; this target grants {self.describe()}"
            )
        k = self._check_top(top_logprobs, "score")
        bound = sum(len(t.encode()) + 1 for t in ts)
        self.charge(len(ts), bound)
        try:
            out = self._score(ts, k)
        except BaseException:
            self.refund(len(ts), bound)
            raise
        self.refund(0, max(0, bound - sum(len(s.tokens) for s in out)))
        return out

    def _count_tokens(self, text: str) -> int:
        return len(text.encode())

    def _generate(
        self,
        prompts: list[str],
        *,
        max_tokens: int,
        temperature: float,
        top_k: int,
        top_logprobs: int,
        seed: int | None,
    ) -> list[Generation]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _score(self, texts: list[str], top_logprobs: int) -> list[TokenLogprobs]:  # pragma: no cover
        raise NotImplementedError
