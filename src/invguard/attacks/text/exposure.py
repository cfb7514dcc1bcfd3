"""Canary exposure (Carlini, Liu, Erlingsson, Kos & Song, "The Secret Sharer: Evaluating and
Testing Unintended Memorization in Neural Networks", USENIX Security 2019).

A canary ``prefix + secret`` whose secret was drawn from a randomness space ``R`` is ranked among
all candidates ``prefix + r`` (``r`` in ``R``) by the model's log-perplexity
``Px(r) = -log2 Pr(r | prefix)``; its exposure is ``log2 |R| - log2 rank`` (Definition 4), between
0 and ``log2 |R|``; a secret the model has not seen has about 1.44 bits on average (a uniform rank).

- ``text.exposure`` (needs TOPK_LOGPROBS):

  * *exact* (Sec. 5.1): every candidate is scored. Where the target gives whole next-token
    distributions (a local LM at LOGPROBS or more) and each alphabet character is one token, the
    candidates are enumerated as a tree, one forward pass per inner node (``|R| / |alphabet|``
    contexts for the last level); otherwise each candidate text is scored (``|R|`` queries), up to
    ``max_scored``.
  * *approximated* (Sec. 5.2): ``samples`` random candidates are scored, a skew-normal is fitted to
    their log-perplexities and exposure is ``-log2 CDF(Px(canary))``, capped at ``log2 |R|``. Both
    are reported where both apply, and their difference is the approximation's error.

    Two fits of the same samples are reported. ``approx_full`` is the paper's: a maximum-likelihood
    skew-normal of all samples. ``approx`` (the headline) fits the same family to the lower tail
    only: a censored maximum-likelihood fit of the lowest ``tail_fraction`` of the samples, the rest
    counted only as lying above them. The canary is in the lower tail, and on a trained LM the tail
    is heavier than the bulk predicts (candidates sharing the first digits of a memorised secret
    are all likely): on the tiny reference LM (|R| = 10^5, all 10^5 candidates scored), the
    skew-normal fitted to the *whole* population misses the canaries inserted 10 times (ranks 48 to
    136) by 0.9 to 1.6 bits, so no sample size fixes the full fit; the tail fit is within 0.6 bits
    (mean of five draws of 5000 samples). Confirmed on a second corpus (``stdlib-gpt2-tiny``, not
    used to choose the fit): the full fit misses the 10x canaries by 0.5 to 1.2 bits and one rank-1
    100x canary by 3.8 bits; the tail fit by at most 0.3 and 1.3 bits. Exposure near ``log2 |R|``
    (a rank of 1 in 10^5 extrapolated from 5000 samples) stays the approximation's weak end.
  * Below LOGPROBS (top-k log-probabilities only) a token outside the top k is scored with the
    bound the top k gives (the k-th log-probability); the result says the ranks are bounded.

- ``text.exposure_generations`` (needs TEXT): only generations. ``samples`` continuations of the
  canary's prefix are drawn at temperature 1; the canary's share ``p`` among them bounds its rank
  (at most ``1/p`` candidates can be more likely), so ``log2 |R| + log2 p_low`` (Wilson's lower
  95% bound of ``p``) is a lower bound on exposure; the point estimate is read from its rank among
  the sampled secrets. An unseen canary gets a lower bound of 0: generations alone cannot show a
  canary is *not* exposed.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from invguard.attacks.base import ATTACKS, RunContext
from invguard.attacks.text.common import LN2, TextAttack, batched, text_splits_of
from invguard.core.access import TextAccess
from invguard.core.params import POSITIVE, Int, Options, Real, Spec
from invguard.judges.text import CanaryExposure, CanaryRow

# the pruning bound's slack over the canary's separately scored log-perplexity (float32 round-off
# between two forward passes); the final ranking compares with the canary's own enumerated value
PRUNE_SLACK_BITS = 1e-3


def skewnormal_tail_fit(sample_bits: np.ndarray, fraction: float) -> tuple[float, float, float]:
    """A skew-normal ``(a, loc, scale)`` fitted by censored maximum likelihood to the lowest
    ``fraction`` of ``sample_bits`` (at least 20 of them): those enter by their density, the others
    only as lying above the cut (type-II right censoring). Starts from the full fit."""
    from scipy.optimize import minimize
    from scipy.stats import skewnorm

    x = np.sort(np.asarray(sample_bits, dtype=np.float64))
    n = x.size
    m = min(n, max(20, int(fraction * n)))
    a0, loc0, scale0 = skewnorm.fit(x)
    if m >= n:
        return float(a0), float(loc0), float(scale0)
    low, cut = x[:m], x[m - 1]

    def nll(p: np.ndarray) -> float:
        a, loc, log_scale = p
        scale = math.exp(log_scale)
        v = skewnorm.logpdf(low, a, loc, scale).sum() + (n - m) * skewnorm.logsf(cut, a, loc, scale)
        return float(-v) if np.isfinite(v) else 1e300

    r = minimize(
        nll,
        np.array([a0, loc0, math.log(max(scale0, 1e-9))]),
        method="Nelder-Mead",
        options={"maxiter": 4000, "xatol": 1e-6, "fatol": 1e-8},
    )
    a, loc, log_scale = r.x
    return float(a), float(loc), float(math.exp(log_scale))


def skewnormal_exposure(
    sample_bits: np.ndarray, canary_bits: float, space: int, tail_fraction: float | None = None
) -> float:
    """Exposure by the Secret Sharer's skew-normal approximation (Sec. 5.2), capped at log2|R|:
    the skew-normal fitted to all samples (``tail_fraction=None``, the paper's), or to their lower
    tail (:func:`skewnormal_tail_fit`)."""
    from scipy.stats import skewnorm

    if tail_fraction is None:
        a, loc, scale = skewnorm.fit(np.asarray(sample_bits, dtype=np.float64))
    else:
        a, loc, scale = skewnormal_tail_fit(sample_bits, tail_fraction)
    logcdf = float(skewnorm.logcdf(canary_bits, a, loc, scale))
    return float(min(math.log2(space), max(0.0, -logcdf / LN2)))


def _strings(alphabet: str, length: int) -> list[str]:
    """Every string of ``length`` characters of ``alphabet``, in lexicographic (index) order."""
    out = [""]
    for _ in range(length):
        out = [s + c for s in out for c in alphabet]
    return out


def exposure_of_rank(rank: float, space: int) -> float:
    return float(math.log2(space) - math.log2(max(1.0, rank)))


@ATTACKS.register("text.exposure")
@dataclass(frozen=True)
class CanaryExposureAttack(TextAttack):
    """Exposure of every canary of the text splits (the auditor inserted them, so knows them).

    ``max_exact``: enumerate exactly when ``|R|`` is at most this (and, without tree enumeration,
    at most ``max_scored``); ``samples``: random candidates for the skew-normal approximation (0:
    no approximation); ``approximate``: ``"always"`` or ``"beyond_exact"`` (only where exact
    enumeration does not apply); ``tail_fraction``: the share of the samples the headline
    approximation fits (the lower tail; 1: all, as the paper); ``batch``: texts per scoring call.
    """

    name: ClassVar[str] = "text.exposure"
    requires: ClassVar[TextAccess] = TextAccess.TOPK_LOGPROBS
    strength: ClassVar[int] = 2
    fast_params: ClassVar[dict[str, Any]] = {"max_exact": 1000, "samples": 200, "max_scored": 1000}

    max_exact: int = 1_100_000
    max_scored: int = 100_000
    samples: int = 5000
    approximate: str = "always"
    tail_fraction: float = 0.2
    batch: int = 256

    constraints: ClassVar[Mapping[str, Spec]] = {
        "max_exact": Int(0),
        "max_scored": Int(0),
        # a skew-normal fit needs data
        "samples": (Options(0), Int(50)),
        "approximate": Options("always", "beyond_exact"),
        "tail_fraction": Real(0, 1, "right"),
        "batch": Int(1),
    }

    def _tree_ok(self, target: Any, fmt: Any, prefix: str) -> bool:
        """Tree enumeration applies: whole next-token distributions and one token per character,
        tokenised the same way inside a candidate (checked on a probe)."""
        if target.access < TextAccess.LOGPROBS or not hasattr(target, "next_token_logprobs"):
            return False
        check = getattr(target, "per_character", None)
        return bool(check is not None and check(prefix, fmt.alphabet, fmt.secret(fmt.space_size // 3)))

    def _tree_rank(
        self, target: Any, fmt: Any, prefix: str, secret: str, canary_bits: float, ctx: RunContext
    ) -> float:
        """The canary's exact rank, by a branch-and-bound walk of the candidate tree: a prefix of a
        secret whose log-perplexity already reaches the canary's cannot lead to a candidate ranked
        above it (log-perplexity only grows with each character), so its subtree is never expanded
        (the Secret Sharer's shortest-path search, Sec. 5.1). The canary's own path is always
        expanded, so the last level compares every leaf with the canary's value from the same
        enumeration."""
        alphabet = fmt.alphabet
        frontier = [""]
        front_bits = np.zeros(1)
        bound = canary_bits + PRUNE_SLACK_BITS
        for depth in range(fmt.length):
            lp = np.concatenate(
                [
                    target.next_token_logprobs([prefix + s for s in chunk], list(alphabet))
                    for chunk in batched(frontier, 8192)
                ]
            )
            child = front_bits[:, None] - lp / LN2
            mine = frontier.index(secret[:depth])
            if depth == fmt.length - 1:
                own = child[mine, alphabet.index(secret[-1])]
                return float(1 + np.sum(child < own - 1e-12))
            keep_mask = child < bound
            keep_mask[mine, alphabet.index(secret[depth])] = True
            keep = np.argwhere(keep_mask)
            frontier = [frontier[i] + alphabet[j] for i, j in keep]
            front_bits = child[keep[:, 0], keep[:, 1]]
            ctx.report("exposure: enumerate", depth + 1, fmt.length)
        return 1.0  # pragma: no cover - the loop returns at the last depth

    def _scored_bits(self, target: Any, prefix: str, secrets: list[str]) -> tuple[np.ndarray, bool]:
        out = np.empty(len(secrets))
        exact = True
        at = 0
        for chunk in batched(secrets, self.batch):
            scored = target.score([prefix + s for s in chunk])
            for s in scored:
                out[at] = -s.total(len(prefix)) / LN2
                exact = exact and s.exact(len(prefix))
                at += 1
        return out, exact

    def search(self, target: Any, data: Any, rng: np.random.Generator, ctx: RunContext) -> CanaryExposure:
        splits = text_splits_of(data, self.name, need=("canaries",))
        fmt = splits.canary_format
        space = fmt.space_size
        rows = []
        bounded = False
        for i, c in enumerate(splits.canaries):
            canary_bits, ex = self._scored_bits(target, c.prefix, [c.secret])
            bounded = bounded or not ex
            exact = float("nan")
            rank = float("nan")
            method = ""
            if space <= self.max_exact:
                if self._tree_ok(target, fmt, c.prefix):
                    rank = self._tree_rank(target, fmt, c.prefix, c.secret, float(canary_bits[0]), ctx)
                    method = "tree"
                elif space <= self.max_scored:
                    all_bits, ex = self._scored_bits(target, c.prefix, fmt.secrets(np.arange(space)))
                    bounded = bounded or not ex
                    own = all_bits[fmt.index(c.secret)]
                    rank = float(1 + np.sum(all_bits < own - 1e-12))
                    method = "scored"
                if not math.isnan(rank):
                    exact = exposure_of_rank(rank, space)
            approx = approx_full = float("nan")
            if self.samples and (self.approximate == "always" or math.isnan(exact)):
                draw = rng.choice(space - 1, size=min(self.samples, space - 1), replace=False)
                draw = draw + (draw >= fmt.index(c.secret))  # never the canary itself
                sample_bits, ex = self._scored_bits(target, c.prefix, fmt.secrets(draw))
                bounded = bounded or not ex
                approx_full = skewnormal_exposure(sample_bits, float(canary_bits[0]), space)
                approx = (
                    approx_full
                    if self.tail_fraction >= 1.0
                    else skewnormal_exposure(sample_bits, float(canary_bits[0]), space, self.tail_fraction)
                )
            rows.append(
                CanaryRow(
                    name=c.name,
                    insertions=c.insertions,
                    log_perplexity_bits=float(canary_bits[0]),
                    exact=exact,
                    rank=rank,
                    approx=approx,
                    approx_full=approx_full,
                    method=method or "approximation",
                )
            )
            ctx.report("exposure: canaries", i + 1, len(splits.canaries))
        return CanaryExposure(
            rows=tuple(rows),
            space=space,
            source="logprobs",
            bounded=bounded,
            info={
                "canary_space": space,
                "canary_format": f"{fmt.length} characters of {fmt.alphabet!r}",
                "approximation_samples": self.samples,
                "approximation_fit": f"skew-normal, censored MLE of the lowest {self.tail_fraction:.0%} "
                "of the samples (approx); of all samples as the paper (approx_full)",
                "logprobs": "top-k bounds" if bounded else "exact",
            },
        )


@ATTACKS.register("text.exposure_generations")
@dataclass(frozen=True)
class GenerationExposureAttack(TextAttack):
    """Exposure estimated from generations alone (what a text-only API still gives away).

    ``samples``: continuations drawn per canary; ``max_tokens``: tokens per continuation (default:
    enough for a secret of one token per character, plus two); ``temperature``: sampling
    temperature (1: the model's own distribution, which the bound needs).
    """

    name: ClassVar[str] = "text.exposure_generations"
    requires: ClassVar[TextAccess] = TextAccess.TEXT
    strength: ClassVar[int] = 1
    fast_params: ClassVar[dict[str, Any]] = {"samples": 32}

    samples: int = 500
    max_tokens: int | None = None
    temperature: float = 1.0
    batch: int = 128

    constraints: ClassVar[Mapping[str, Spec]] = {
        "samples": Int(1),
        "max_tokens": (None, Int(1)),
        "temperature": POSITIVE,
        "batch": Int(1),
    }

    def search(self, target: Any, data: Any, rng: np.random.Generator, ctx: RunContext) -> CanaryExposure:
        import re

        splits = text_splits_of(data, self.name, need=("canaries",))
        fmt = splits.canary_format
        rx = re.compile(fmt.pattern())
        rows = []
        for i, c in enumerate(splits.canaries):
            got: Counter[str] = Counter()
            for n in [len(b) for b in batched(range(self.samples), self.batch)]:
                gens = target.generate(
                    [c.prefix] * n,
                    max_tokens=self.max_tokens or fmt.length + 2,
                    temperature=self.temperature,
                    seed=int(rng.integers(2**31)),
                )
                for g in gens:
                    m = rx.match(g.text)
                    got[m.group() if m else ""] += 1
            k = got.get(c.secret, 0)
            rank = (
                float(1 + sum(1 for s, v in got.items() if s and s != c.secret and v > k))
                if k
                else float("nan")
            )
            rows.append(
                CanaryRow(
                    name=c.name,
                    insertions=c.insertions,
                    log_perplexity_bits=float("nan"),
                    exact=float("nan"),
                    rank=rank,
                    approx=float("nan"),
                    method="generations",
                    hits=k,
                    samples=self.samples,
                    distinct=len([s for s in got if s]),
                )
            )
            ctx.report("exposure from generations", i + 1, len(splits.canaries))
        return CanaryExposure(
            rows=tuple(rows),
            space=fmt.space_size,
            source="generations",
            bounded=True,
            info={
                "canary_space": fmt.space_size,
                "samples_per_canary": self.samples,
                "assumption": "exposure estimated from generations alone (no log-probabilities): a lower "
                "bound from the canary's sampled share, and a point estimate from its rank among the "
                "sampled secrets",
            },
        )
