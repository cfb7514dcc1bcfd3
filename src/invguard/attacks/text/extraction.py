"""Training-text extraction (Carlini, Tramèr, Wallace, Jagielski, Herbert-Voss, Lee, Roberts,
Brown, Song, Erlingsson, Oprea & Raffel, "Extracting Training Data from Large Language Models",
USENIX Security 2021).

1. Generate: ``samples`` continuations with top-k sampling (Sec. 4.1), from prompts the attacker
   has without the private text (Sec. 5.1 "Internet" conditioning): the start of a line of a
   public document, the empty prompt, and optionally the public start of the secret format
   (``format``: the canary template before the name: the attacker knows the kind of sentence, not
   whose or which secret).
2. Rank the distinct generations by the membership signals of Sec. 5.1, lower meaning more likely
   memorised: ``perplexity`` (the target's per-token log-perplexity), ``zlib`` (log-perplexity
   over zlib entropy), ``lowercase`` (log-perplexity over that of the lowercased text),
   ``reference`` (log-perplexity over that of a reference LM trained on public text only, through
   the run's executor), and ``frequency`` (how often the same text came back: the one signal a
   text-only API leaves).
3. The judge checks the top ``top`` of each ranking against the private training text (verbatim
   pieces and near-duplicates that are not in the public text) and counts the canaries found.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from invguard.attacks.base import ATTACKS, RunContext
from invguard.attacks.text.common import LN2, TextAttack, batched, text_splits_of, zlib_bits
from invguard.core.access import TextAccess
from invguard.core.params import POSITIVE, Boolean, Dict, Int, Options, Sequence, Spec
from invguard.judges.text import Candidate, ExtractionCandidates

RANKINGS = ("perplexity", "zlib", "lowercase", "reference", "frequency")
PROMPTS = ("public", "empty", "format")


def public_prompts(docs: list[str], n: int, chars: int, rng: np.random.Generator) -> list[str]:
    """``n`` prompts: the first words (about ``chars`` characters) of random lines of public text."""
    lines = [ln for d in docs for ln in d.split("\n") if len(ln.strip()) >= chars]
    if not lines:
        return [""] * n
    out = []
    for i in rng.integers(0, len(lines), n):
        ln = lines[int(i)].lstrip()
        cut = ln.rfind(" ", 0, chars)
        out.append(ln[: cut if cut > 0 else chars] + " ")
    return out


@ATTACKS.register("text.extraction")
@dataclass(frozen=True)
class TextExtraction(TextAttack):
    """Generate, rank, check (see the module docstring).

    ``prompts``: the prompt sources, sharing ``samples`` equally; ``rankings``: which to compute
    (those the target's access cannot give are skipped and named in the result); ``top``: how many
    of each ranking the judge checks; ``reference_spec``: the reference LM (``None``: the default
    :class:`invguard.models.lm.LMSpec`); ``show_secrets``: put extracted strings in the report in
    clear (default: redacted).
    """

    name: ClassVar[str] = "text.extraction"
    requires: ClassVar[TextAccess] = TextAccess.TEXT
    strength: ClassVar[int] = 1
    fast_params: ClassVar[dict[str, Any]] = {
        "samples": 48,
        "max_tokens": 16,
        "top": 10,
        "rankings": ("perplexity", "zlib", "frequency"),
    }

    samples: int = 1000
    max_tokens: int = 48
    top_k: int = 40
    temperature: float = 1.0
    prompts: tuple[str, ...] = ("public", "empty", "format")
    prompt_chars: int = 24
    rankings: tuple[str, ...] = RANKINGS
    top: int = 100
    min_chars: int = 40
    reference_spec: dict[str, Any] | None = None
    batch: int = 64
    show_secrets: bool = False

    constraints: ClassVar[Mapping[str, Spec]] = {
        "samples": Int(1),
        "max_tokens": Int(1),
        "top_k": Int(0),
        "temperature": POSITIVE,
        "prompts": Sequence(Options(*PROMPTS), unique=True),
        "prompt_chars": Int(1),
        "rankings": Sequence(Options(*RANKINGS), unique=True),
        "top": Int(1),
        "min_chars": Int(8),
        "reference_spec": (None, Dict()),
        "batch": Int(1),
        "show_secrets": Boolean(),
    }

    def _prompts(self, splits: Any, rng: np.random.Generator) -> list[str]:
        share = [len(b) for b in np.array_split(np.arange(self.samples), len(self.prompts))]
        out: list[str] = []
        for source, n in zip(self.prompts, share, strict=True):
            if source == "public":
                out += public_prompts(list(splits.public), n, self.prompt_chars, rng)
            elif source == "empty":
                out += [""] * n
            else:
                out += [splits.canary_format.template.split("{name}")[0]] * n
        return out

    def search(
        self, target: Any, data: Any, rng: np.random.Generator, ctx: RunContext
    ) -> ExtractionCandidates:
        splits = text_splits_of(data, self.name, need=("public",))
        prompts = self._prompts(splits, rng)
        logprob_access = target.access >= TextAccess.TOPK_LOGPROBS
        counts: Counter[tuple[str, str]] = Counter()
        bits: dict[tuple[str, str], tuple[float, int]] = {}
        done = 0
        for chunk in batched(prompts, self.batch):
            gens = target.generate(
                list(chunk),
                max_tokens=self.max_tokens,
                temperature=self.temperature,
                top_k=self.top_k,
                seed=int(rng.integers(2**31)),
            )
            for g in gens:
                key = (g.prompt, g.text)
                counts[key] += 1
                if g.logprobs is not None and key not in bits:
                    bits[key] = (-g.logprobs.total() / LN2, max(1, g.logprobs.count()))
            done += len(chunk)
            ctx.report("extraction: generate", done, len(prompts))
        keys = [k for k in counts if len(k[1].strip()) >= 8]
        skipped = []
        rankings = [r for r in self.rankings]
        if not logprob_access:
            skipped = [r for r in rankings if r != "frequency"]
            rankings = [r for r in rankings if r == "frequency"]
        scores: dict[str, np.ndarray] = {}
        if keys and logprob_access:
            b = np.array([bits[k][0] for k in keys])
            ntok = np.array([bits[k][1] for k in keys], dtype=np.float64)
            if "perplexity" in rankings:
                scores["perplexity"] = b / ntok
            if "zlib" in rankings:
                scores["zlib"] = b / np.array([zlib_bits(k[1]) for k in keys])
            if "lowercase" in rankings:
                low = np.empty(len(keys))
                for at, part in zip(range(0, len(keys), self.batch), batched(keys, self.batch), strict=True):
                    scored = target.score([p.lower() + t.lower() for p, t in part])
                    for j, (s, (p, _)) in enumerate(zip(scored, part, strict=True)):
                        low[at + j] = -s.total(len(p)) / LN2
                scores["lowercase"] = b / np.maximum(low, 1e-9)
            if "reference" in rankings:
                scores["reference"] = b / np.maximum(self._reference_bits(splits, keys, ctx), 1e-9)
        if keys and "frequency" in rankings:
            scores["frequency"] = -np.array([counts[k] for k in keys], dtype=np.float64)
        order = {
            r: tuple(int(i) for i in np.argsort(scores[r], kind="stable")[: self.top])
            for r in rankings
            if r in scores
        }
        cands = tuple(
            Candidate(prompt=p, text=t, count=counts[(p, t)], scores={r: float(scores[r][i]) for r in scores})
            for i, (p, t) in enumerate(keys)
        )
        return ExtractionCandidates(
            candidates=cands,
            rankings=order,
            generated=len(prompts),
            show_secrets=self.show_secrets,
            min_chars=self.min_chars,
            info={
                "generations": len(prompts),
                "prompt_sources": list(self.prompts),
                "rankings": list(order),
                "rankings_unavailable": {
                    r: f"needs TOPK_LOGPROBS; the target grants {target.access.name}" for r in skipped
                },
                "sampling": {
                    "top_k": self.top_k,
                    "temperature": self.temperature,
                    "max_tokens": self.max_tokens,
                },
            },
        )

    def _reference_bits(self, splits: Any, keys: list[tuple[str, str]], ctx: RunContext) -> np.ndarray:
        """Bits of each continuation under a reference LM trained on the public documents only."""
        from invguard.models.lm import LMJob, LMSpec, run_lm_job

        spec = LMSpec.of(self.reference_spec)
        queries = tuple([p + t for p, t in keys] + [p for p, _ in keys])
        job = LMJob(
            "extraction-reference",
            tuple(splits.public),
            spec,
            1234,
            queries,
            str(ctx.cache_dir) if ctx.cache_dir is not None else None,
        )
        (res,) = ctx.map(run_lm_job, [job])
        n = len(keys)
        empty = np.array([p == "" for p, _ in keys])
        prompt_lp = np.where(empty, 0.0, res[n:, 0])
        return np.asarray(-(res[:n, 0] - prompt_lp) / LN2, dtype=np.float64)
