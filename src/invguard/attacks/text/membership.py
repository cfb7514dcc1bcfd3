"""Text membership inference: was this document in the language model's training text?

- ``loss``: the mean token log-probability (Yeom et al. 2018, as for classifiers);
- ``zlib``: the log-probability over the zlib entropy of the document (Carlini et al. 2021,
  "Extracting Training Data from Large Language Models", Sec. 5.1: a text the model finds likely
  *for how compressible it is*);
- ``min_k``: Min-K% Prob (Shi et al. 2023, "Detecting Pretraining Data from Large Language
  Models"): the mean log-probability of the ``k``% least likely tokens;
- ``text.membership_reference``: reference-model calibration in the offline LiRA style (Carlini et
  al. 2022, Sec. VI-C; Mireshghallah et al. 2022 for LMs): reference LMs trained on public text
  only (through the run's executor, cached) give each document's expected log-probability per
  character; the score is the target's deviation from it in units of the references' spread.

Thresholds are calibrated on the public documents (non-members by construction) to
``decision_fpr``, never on the evaluation documents. Below LOGPROBS, a token outside the top k
takes the top-k bound (the result says so).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from invguard.attacks.base import ATTACKS, RunContext
from invguard.attacks.membership.common import calibrated_threshold
from invguard.attacks.text.common import TextAttack, batched, text_splits_of, zlib_bits
from invguard.core.access import TextAccess
from invguard.core.params import OPEN_UNIT, Dict, Int, Options, Real, Spec
from invguard.core.result import Finding
from invguard.judges.text import TextMembershipScores

STATISTICS = ("loss", "zlib", "min_k")


def doc_statistic(tl: Any, kind: str, k: float = 0.2) -> float:
    """One document's membership statistic from its token log-probabilities (higher: member)."""
    lp = tl.filled()
    lp = lp[~np.isnan(lp)]
    if lp.size == 0:
        return float("-inf")
    if kind == "loss":
        return float(lp.mean())
    if kind == "zlib":
        return float(lp.sum() / zlib_bits(tl.text))
    if kind == "min_k":
        n = max(1, int(np.ceil(k * lp.size)))
        return float(np.sort(lp)[:n].mean())
    raise ValueError(f"unknown statistic {kind!r}")


def score_docs(target: Any, docs: list[str], batch: int) -> list[Any]:
    out = []
    for chunk in batched(docs, batch):
        out.extend(target.score(list(chunk)))
    return out


@ATTACKS.register("text.membership")
@dataclass(frozen=True)
class TextThresholdMembership(TextAttack):
    """Score every member and non-member document by ``statistic``; decide above a threshold
    calibrated on the public documents. ``k``: the share of tokens Min-K% averages."""

    name: ClassVar[str] = "text.membership"
    requires: ClassVar[TextAccess] = TextAccess.TOPK_LOGPROBS
    strength: ClassVar[int] = 1
    fast_params: ClassVar[dict[str, Any]] = {"n_boot": 50}

    statistic: str = "loss"
    k: float = 0.2
    decision_fpr: float = 0.05
    n_boot: int = 1000
    batch: int = 32
    top: int = 20

    constraints: ClassVar[Mapping[str, Spec]] = {
        "statistic": Options(*STATISTICS),
        "k": Real(0, 1, "right"),
        "decision_fpr": OPEN_UNIT,
        "n_boot": Int(0),
        "batch": Int(1),
        "top": Int(0),
    }

    def search(
        self, target: Any, data: Any, rng: np.random.Generator, ctx: RunContext
    ) -> TextMembershipScores:
        splits = text_splits_of(data, self.name, need=("members", "nonmembers", "public"))
        docs = [*splits.members, *splits.nonmembers]
        scored = score_docs(target, docs, self.batch)
        scores = np.array([doc_statistic(s, self.statistic, self.k) for s in scored])
        population = np.array(
            [
                doc_statistic(s, self.statistic, self.k)
                for s in score_docs(target, list(splits.public), self.batch)
            ]
        )
        threshold = calibrated_threshold(population, self.decision_fpr)
        bounded = not all(s.exact() for s in scored)
        notes = (
            (
                Finding(
                    "Scores use top-k bounds",
                    "The target shows top-k log-probabilities only; tokens "
                    "outside the top k were scored with the k-th log-probability (an upper bound).",
                    "info",
                ),
            )
            if bounded
            else ()
        )
        return TextMembershipScores(
            scores=scores,
            is_member=np.r_[np.ones(len(splits.members)), np.zeros(len(splits.nonmembers))].astype(np.int64),
            decision_threshold=threshold,
            n_boot=self.n_boot,
            top=self.top,
            notes=notes,
            info={
                "statistic": self.statistic,
                "population_documents": len(splits.public),
                "bounded": bounded,
            },
        )


@ATTACKS.register("text.membership_reference")
@dataclass(frozen=True)
class TextReferenceMembership(TextAttack):
    """Offline-LiRA calibration with ``n_models`` reference LMs, each trained on a random half of
    the public documents (through ``RunContext.map``; cached under ``RunContext.cache_dir``).

    ``spec``: the reference LMs' :class:`invguard.models.lm.LMSpec` (default: the target's own when
    it is an invguard LM, else the default spec).
    """

    name: ClassVar[str] = "text.membership_reference"
    requires: ClassVar[TextAccess] = TextAccess.TOPK_LOGPROBS
    strength: ClassVar[int] = 2
    fast_params: ClassVar[dict[str, Any]] = {
        "n_models": 2,
        "n_boot": 50,
        "spec": {"n_layer": 1, "n_embd": 32, "n_head": 2, "block_size": 32, "vocab_size": 300, "epochs": 1},
    }

    n_models: int = 4
    spec: dict[str, Any] | None = None
    decision_fpr: float = 0.05
    n_boot: int = 1000
    batch: int = 32
    top: int = 20

    constraints: ClassVar[Mapping[str, Spec]] = {
        "n_models": Int(1),
        "spec": (None, Dict()),
        "decision_fpr": OPEN_UNIT,
        "n_boot": Int(0),
        "batch": Int(1),
        "top": Int(0),
    }

    def cross_checks(self) -> list[str]:
        if self.spec is not None:
            from invguard.core.errors import ConfigError
            from invguard.models.lm import LMSpec

            try:
                LMSpec.of(self.spec)
            except ConfigError as e:
                return [str(e)]
        return []

    def _spec(self, target: Any) -> Any:
        import json

        from invguard.models.lm import LMSpec

        if self.spec is not None:
            return LMSpec.of(self.spec)
        t = target
        while getattr(t, "inner", None) is not None:
            t = t.inner
        meta = getattr(t, "path", None)
        if meta is not None and (meta / "invguard_lm.json").is_file():
            spec = json.loads((meta / "invguard_lm.json").read_text()).get("spec")
            if spec:
                return LMSpec.of(spec)
        return LMSpec()

    def search(
        self, target: Any, data: Any, rng: np.random.Generator, ctx: RunContext
    ) -> TextMembershipScores:
        from invguard.models.lm import LMJob, run_lm_job

        splits = text_splits_of(data, self.name, need=("members", "nonmembers", "public"))
        docs = [*splits.members, *splits.nonmembers]
        queries = (*docs, *splits.public)
        public = list(splits.public)
        spec = self._spec(target)
        cache = str(ctx.cache_dir) if ctx.cache_dir is not None else None
        jobs, picks = [], []
        half = max(1, len(public) // 2)
        for i in range(self.n_models):
            pick = np.sort(
                np.random.default_rng([int(rng.integers(2**31)), i]).permutation(len(public))[:half]
            )
            picks.append(pick)
            jobs.append(
                LMJob(
                    f"text-reference-{i}",
                    tuple(public[j] for j in pick),
                    spec,
                    int(np.random.SeedSequence([i, 4242]).generate_state(1)[0]),
                    queries,
                    cache,
                )
            )
        ctx.report("reference LMs", 0, len(jobs))
        ref = np.stack(ctx.map(run_lm_job, jobs))  # (models, queries, 2)
        ctx.report("reference LMs", len(jobs), len(jobs))
        chars = np.array([max(1, len(q)) for q in queries], dtype=np.float64)
        ref_pc = ref[:, :, 0] / chars[None, :]  # log-prob per character
        n = len(docs)
        # a public document is compared only with the references that did not train on it
        out = np.ones(ref_pc.shape, dtype=bool)
        for i, pick in enumerate(picks):
            out[i, n + pick] = False
        with np.errstate(invalid="ignore"):
            mu = np.where(
                out.any(axis=0), np.sum(ref_pc * out, axis=0) / np.maximum(1, out.sum(axis=0)), np.nan
            )
        scored = score_docs(target, list(queries), self.batch)
        tgt_pc = np.array([s.total() for s in scored]) / chars
        # a record's own spread needs many models; pool it (Carlini et al. 2022's global variance)
        dev = (ref_pc - mu[None, :])[out & ~np.isnan(mu)[None, :]]
        sigma = float(np.std(dev)) if self.n_models > 1 and dev.size > 1 else float(np.nanstd(tgt_pc - mu))
        z = (tgt_pc - mu) / max(sigma, 1e-9)
        population = z[n:][~np.isnan(z[n:])]
        threshold = calibrated_threshold(population, self.decision_fpr)
        return TextMembershipScores(
            scores=z[:n],
            is_member=np.r_[np.ones(len(splits.members)), np.zeros(len(splits.nonmembers))].astype(np.int64),
            decision_threshold=threshold,
            n_boot=self.n_boot,
            top=self.top,
            info={
                "statistic": "reference_calibrated",
                "reference_models": self.n_models,
                "reference_train_documents": len(jobs[0].docs),
                "reference_spec": spec.__dict__,
                "pooled_sigma": sigma,
            },
        )
