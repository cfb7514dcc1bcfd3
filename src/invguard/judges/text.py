"""Evidence and judges of the text attacks (canary exposure, extraction, text membership).

The judges hold the honesty rules: exposure is compared with the never-inserted canaries (the
no-memorisation baseline, about 1.44 bits) and reported per insertion count with a bootstrap CI
over canaries; an extraction counts only text that occurs in the private training text and not in
the public text, and says which ranking found it; membership uses the classifier family's metrics
(AUC, TPR at 1% and 0.1% FPR with bootstrap CIs). Extracted strings are redacted unless the attack
was run with ``show_secrets``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from invguard.core.evidence import Evidence
from invguard.core.result import Finding, Metric
from invguard.core.run import AttackOutput, Case
from invguard.judges.registry import register_judge
from invguard.metrics.stats import bootstrap_metric, proportion_metric

# ------------------------------------------------------------------------------------- exposure


def _first(metrics: dict[str, Metric], names: Sequence[str]) -> dict[str, Metric]:
    """``metrics`` with ``names`` (those present) first: the headline a summary shows."""
    head = {n: metrics[n] for n in names if n in metrics}
    return {**head, **{k: v for k, v in metrics.items() if k not in head}}


@dataclass(frozen=True)
class CanaryRow:
    """One canary's measurement. ``exact``/``approx`` are exposures in bits (NaN where not computed)."""

    name: str
    insertions: int
    log_perplexity_bits: float
    exact: float
    rank: float
    approx: float
    method: str
    hits: int = 0
    samples: int = 0
    distinct: int = 0
    approx_full: float = float("nan")  # the paper's fit of all samples (``approx``: the lower tail's)


@dataclass(frozen=True, kw_only=True)
class CanaryExposure(Evidence):
    """Per-canary exposure measurements; ``source`` is ``logprobs`` or ``generations``."""

    rows: tuple[CanaryRow, ...]
    space: int
    source: str
    bounded: bool = False


def _wilson_low(k: int, n: int) -> float:
    m = proportion_metric(k, n)
    return float(m.low if m.low is not None else m.value)


def _exposure_value(r: CanaryRow, space: int) -> tuple[float, float, float]:
    """(estimate, lower bound, upper bound) of one canary's exposure in bits."""
    top = math.log2(space)
    if r.method == "generations":
        low = max(0.0, top + math.log2(max(_wilson_low(r.hits, r.samples), 1e-300))) if r.hits else 0.0
        est = top - math.log2(r.rank) if r.hits else low
        return est, low, top
    v = r.exact if not math.isnan(r.exact) else r.approx
    return v, v, v


@register_judge(CanaryExposure)
def judge_exposure(ev: CanaryExposure, case: Case) -> AttackOutput:
    space = ev.space
    top = math.log2(space)
    values = [_exposure_value(r, space) for r in ev.rows]
    metrics: dict[str, Metric] = {}
    table = []
    for r, (est, low, _high) in zip(ev.rows, values, strict=True):
        table.append(
            {
                "canary": r.name,
                "insertions": r.insertions,
                "exposure": est,
                "exposure_low": low,
                "exact": r.exact,
                "approx": r.approx,
                "approx_full": r.approx_full,
                "rank": r.rank,
                "log_perplexity_bits": r.log_perplexity_bits,
                "method": r.method,
                **(
                    {"hits": r.hits, "samples": r.samples, "distinct": r.distinct}
                    if r.method == "generations"
                    else {}
                ),
            }
        )
    n_boot = 1000
    counts = sorted({r.insertions for r in ev.rows})
    for k in counts:
        ix = [i for i, r in enumerate(ev.rows) if r.insertions == k]
        ests = np.array([values[i][0] for i in ix])
        desc = f"mean exposure (bits, of {top:.1f}) of the {len(ix)} canaries inserted {k} times"
        if ev.source == "generations":
            lows = np.array([values[i][1] for i in ix])
            m = bootstrap_metric(
                np.mean, ests, n_boot=n_boot, seed=case.seed, description=desc + ", from generations"
            )
            # the lower end is the rigorous bound; nothing bounds exposure from above without logprobs
            metrics[f"exposure_{k}"] = Metric(
                m.value,
                float(np.mean(lows)),
                top,
                True,
                m.description + "; low = mean lower bound, high = log2|R| (no upper bound from text)",
            )
        else:
            metrics[f"exposure_{k}"] = bootstrap_metric(
                np.mean, ests, n_boot=n_boot, seed=case.seed, description=desc
            )
            both = [i for i in ix if not math.isnan(ev.rows[i].exact) and not math.isnan(ev.rows[i].approx)]
            if both:
                metrics[f"exposure_approx_{k}"] = bootstrap_metric(
                    np.mean,
                    np.array([ev.rows[i].approx for i in both]),
                    n_boot=n_boot,
                    seed=case.seed,
                    description=f"mean skew-normal approximated exposure (lower-tail fit) of the canaries "
                    f"inserted {k} times",
                )
                full = [i for i in both if not math.isnan(ev.rows[i].approx_full)]
                if full:
                    metrics[f"exposure_approx_full_{k}"] = bootstrap_metric(
                        np.mean,
                        np.array([ev.rows[i].approx_full for i in full]),
                        n_boot=n_boot,
                        seed=case.seed,
                        description=f"mean skew-normal approximated exposure (the paper's fit of all "
                        f"samples) of the canaries inserted {k} times",
                    )
    both_all = [r for r in ev.rows if not math.isnan(r.exact) and not math.isnan(r.approx)]
    if both_all:
        err = np.array([abs(r.exact - r.approx) for r in both_all])
        metrics["approx_error_bits"] = Metric(
            float(err.max()),
            None,
            None,
            True,
            "largest |exact - approximated| exposure over the canaries (bits; lower-tail fit)",
        )
        full_err = [abs(r.exact - r.approx_full) for r in both_all if not math.isnan(r.approx_full)]
        if full_err:
            metrics["approx_full_error_bits"] = Metric(
                float(max(full_err)),
                None,
                None,
                True,
                "largest |exact - approximated| exposure over the canaries (bits; the paper's fit of "
                "all samples)",
            )
    baseline = [values[i][0] for i, r in enumerate(ev.rows) if r.insertions == 0]
    inserted = [(r, values[i]) for i, r in enumerate(ev.rows) if r.insertions > 0]
    findings = []
    base_txt = (
        f"never-inserted canaries (the no-memorisation baseline) average {np.mean(baseline):.2f} bits"
        if baseline
        else "no never-inserted canary was measured (the expected no-memorisation baseline is 1.44 bits)"
    )
    if inserted:
        best_r, best_v = max(inserted, key=lambda rv: rv[1][1])
        base_high = max(baseline) if baseline else 1.44 * 3
        exposed = [r for r, v in inserted if v[1] > max(base_high, 0.5 * top)]
        per_k = ", ".join(f"{k}x: {metrics[f'exposure_{k}'].value:.1f}" for k in counts if k > 0)
        detail = (
            f"Exposure by insertion count (bits of {top:.1f}): {per_k}; {base_txt}. "
            + (
                "Estimated from generations alone (no log-probabilities); lower bounds shown as low. "
                if ev.source == "generations"
                else ""
            )
            + (
                "Ranks use top-k log-probability bounds (the API hides the rest). "
                if ev.bounded and ev.source != "generations"
                else ""
            )
        )
        if exposed:
            sev = "high" if any(v[1] >= top - 2 for _, v in inserted) else "medium"
            findings.append(
                Finding(
                    "Inserted canaries are memorised",
                    detail + f"{len(exposed)} of {len(inserted)} inserted canaries stand out "
                    f"(highest lower bound {best_v[1]:.1f} bits, inserted {best_r.insertions} times): "
                    "the model would let an attacker who knows the prefix guess such a secret in few tries.",
                    sev,
                )
            )
        else:
            findings.append(
                Finding(
                    "No canary stands out",
                    detail + "No inserted canary is clearly above the baseline.",
                    "info",
                )
            )
    if both_all:
        findings.append(
            Finding(
                "Exact and approximated exposure",
                f"On {len(both_all)} canaries where both apply, the skew-normal approximation (fitted to "
                f"the lower tail) differs from exact enumeration by at most "
                f"{metrics['approx_error_bits'].value:.2f} bits"
                + (
                    "; fitted to all samples as in the paper, by "
                    f"{metrics['approx_full_error_bits'].value:.2f}."
                    if "approx_full_error_bits" in metrics
                    else "."
                ),
                "info",
            )
        )
    return AttackOutput(
        metrics=_first(metrics, [f"exposure_{counts[-1]}", "exposure_0"] if counts else []),
        tables={"canaries": table},
        findings=findings,
        info={
            "source": ev.source,
            "bounded": ev.bounded,
            "baseline_bits": float(np.mean(baseline)) if baseline else None,
        },
    )


# ----------------------------------------------------------------------------------- extraction


@dataclass(frozen=True)
class Candidate:
    """One distinct generation: the prompt, the continuation and its scores (lower = more suspect)."""

    prompt: str
    text: str
    count: int
    scores: dict[str, float]


@dataclass(frozen=True, kw_only=True)
class ExtractionCandidates(Evidence):
    """Distinct generations with their ranking scores, and the rankings' top lists (indices)."""

    candidates: tuple[Candidate, ...]
    rankings: dict[str, tuple[int, ...]]
    generated: int
    show_secrets: bool = False
    min_chars: int = 40


class _Grams:
    """Character ``k``-grams of a corpus, for "does a ``k``-character piece occur in it"."""

    def __init__(self, texts: Sequence[str], k: int) -> None:
        self.k = k
        self.grams = {t[i : i + k] for t in texts for i in range(max(0, len(t) - k + 1))}

    def pieces(self, text: str) -> list[str]:
        return [text[i : i + self.k] for i in range(max(0, len(text) - self.k + 1))]


def memorised(text: str, private: _Grams, public: _Grams) -> bool:
    """Whether ``text`` holds a ``k``-character piece of the private training text that is not in
    the public text (verbatim memorisation of private text)."""
    return any(p in private.grams and p not in public.grams for p in private.pieces(text))


def near_duplicate(text: str, private: _Grams, public: _Grams, share: float = 0.5) -> bool:
    """Whether at least ``share`` of ``text``'s short grams are private-only (a near-duplicate)."""
    ps = [p for p in private.pieces(text) if p not in public.grams]
    total = len(private.pieces(text))
    return bool(total) and sum(p in private.grams for p in ps) >= share * total


@register_judge(ExtractionCandidates)
def judge_extraction(ev: ExtractionCandidates, case: Case) -> AttackOutput:
    from invguard.attacks.text.common import redact

    data = case.data
    private_docs = list(data.members) + [c.text for c in data.canaries if c.insertions > 0]
    public_docs = list(data.public)
    exact_p, exact_q = _Grams(private_docs, ev.min_chars), _Grams(public_docs, ev.min_chars)
    near_p, near_q = _Grams(private_docs, 12), _Grams(public_docs, 12)
    many = [c for c in data.canaries if c.insertions >= 10]
    never = [c for c in data.canaries if c.insertions == 0]
    metrics: dict[str, Metric] = {}
    rows = []
    found_by: dict[str, list[str]] = {}
    best_share = -1.0
    best = ""
    for rank_name, order in ev.rankings.items():
        top = [ev.candidates[i] for i in order]
        full = [c.prompt + c.text for c in top]
        exact = [memorised(c.text, exact_p, exact_q) for c in top]
        near = [near_duplicate(c.text, near_p, near_q) for c in top]
        rec = [c for c in many if any(c.secret in f for f in full)]
        false = [c for c in never if any(c.secret in f for f in full)]
        found_by[rank_name] = [c.name for c in rec]
        n = len(top)
        metrics[f"memorised_share_{rank_name}"] = proportion_metric(
            sum(exact),
            n,
            description=f"share of the top {n} by {rank_name} holding >= {ev.min_chars} "
            "characters of private-only training text",
        )
        metrics[f"near_duplicate_share_{rank_name}"] = proportion_metric(
            sum(near),
            n,
            description=f"share of the top {n} by {rank_name} that are near-duplicates "
            "(>= 50% private-only 12-character pieces)",
        )
        metrics[f"canaries_recovered_{rank_name}"] = proportion_metric(
            len(rec),
            len(many),
            description=f"share of the canaries inserted >= 10 times whose secret "
            f"appears in the top {n} by {rank_name}",
        )
        metrics[f"never_inserted_recovered_{rank_name}"] = proportion_metric(
            len(false), len(never), description="control: never-inserted canaries found (should be 0)"
        )
        share = len(rec) / max(1, len(many))
        if share > best_share:
            best_share, best = share, rank_name
        for pos, (c, e, nd) in enumerate(zip(top, exact, near, strict=True)):
            if e or nd or any(k.secret in c.prompt + c.text for k in many):
                rows.append(
                    {
                        "ranking": rank_name,
                        "position": pos + 1,
                        "count": c.count,
                        "verbatim": e,
                        "near_duplicate": nd,
                        "canary": next((k.name for k in many if k.secret in c.prompt + c.text), None),
                        "text": (c.prompt + c.text) if ev.show_secrets else redact(c.prompt + c.text),
                    }
                )
    if ev.rankings:
        metrics["canaries_recovered"] = Metric(
            metrics[f"canaries_recovered_{best}"].value,
            metrics[f"canaries_recovered_{best}"].low,
            metrics[f"canaries_recovered_{best}"].high,
            True,
            f"share of the canaries inserted >= 10 times recovered by the best ranking ({best})",
        )
    findings = []
    rec_any = sorted({n for v in found_by.values() for n in v})
    verbatim = sum(1 for r in rows if r["verbatim"])
    detail = (
        f"{ev.generated} generations, {len(ev.candidates)} distinct; rankings: {', '.join(ev.rankings)}. "
        f"{len(rec_any)} of {len(many)} canaries inserted >= 10 times were recovered without knowing them "
        f"(best ranking: {best}, {best_share:.0%}); {verbatim} top-ranked generations hold private-only "
        "training text verbatim."
        + (
            ""
            if ev.show_secrets
            else " Extracted strings are redacted (run with show_secrets to reveal them)."
        )
    )
    if rec_any or verbatim:
        findings.append(Finding("Training text is extractable", detail, "high" if rec_any else "medium"))
    else:
        findings.append(Finding("No training text extracted", detail, "info"))
    return AttackOutput(
        metrics=_first(metrics, ["canaries_recovered", f"memorised_share_{best}"]),
        tables={
            "extracted": rows,
            "recovered_by": [{"ranking": k, "canaries": len(v)} for k, v in found_by.items()],
        },
        findings=findings,
        info={"best_ranking": best, "distinct_generations": len(ev.candidates)},
    )


# ----------------------------------------------------------------------------------- membership


@dataclass(frozen=True, kw_only=True)
class TextMembershipScores(Evidence):
    """Membership scores (higher: more likely a member) of member then non-member documents."""

    scores: np.ndarray
    is_member: np.ndarray
    decision_threshold: float | None = None
    n_boot: int = 1000
    top: int = 20
    notes: tuple[Finding, ...] = field(default_factory=tuple)


@register_judge(TextMembershipScores)
def judge_text_membership(ev: TextMembershipScores, case: Case) -> AttackOutput:
    from invguard.judges.membership import membership_output

    n = int(ev.scores.shape[0])
    out = membership_output(
        case.attack.name,
        ev.scores,
        is_member=np.asarray(ev.is_member, dtype=np.int64),
        indices=np.arange(n, dtype=np.int64),
        labels=np.zeros(n, dtype=np.int64),
        decision_threshold=ev.decision_threshold,
        n_boot=ev.n_boot,
        seed=case.seed,
        top=ev.top,
        notes=list(ev.notes),
    )
    out.arrays.pop("labels", None)
    return out
