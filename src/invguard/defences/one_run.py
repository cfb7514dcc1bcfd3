"""Does the DP claim hold? The empirical epsilon of one training run.

Steinke, Nasr & Jagielski, "Privacy Auditing with One (1) Training Run", NeurIPS 2023: insert
``m`` canaries into the training set, each independently with probability 1/2, train once, score
every canary's membership, and turn the guesses into an epsilon lower bound at 95% confidence
(:func:`invguard.metrics.privacy.one_run_bound`). The classic bound from TPR/FPR with
Clopper-Pearson intervals is reported beside it. A lower bound above the accountant's epsilon is a
*finding*: the training does not deliver the privacy it claims (a broken DP implementation).

Canaries are records of the public split given a wrong label (``mislabelled``, the paper's
black-box input-space canaries: a model that memorises them gives them a low loss only when it saw
them) or uniform-noise images with random labels (``ood``). The membership score is the canary's
log-probability of its canary label under the trained model (minus its loss); the model is
queried, never inspected.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from invguard.core.errors import ConfigError
from invguard.core.result import Finding, Metric

CANARY_KINDS = ("mislabelled", "ood")


@dataclass(frozen=True)
class Canaries:
    """``m`` canary records, their canary labels and whether each was included (probability 1/2)."""

    X: np.ndarray
    y: np.ndarray
    included: np.ndarray  # bool
    source: np.ndarray  # indices into the dataset (-1 for synthetic noise)
    kind: str

    def __len__(self) -> int:
        return int(self.y.shape[0])


def make_canaries(splits: Any, m: int, *, kind: str = "mislabelled", seed: int = 0) -> Canaries:
    """``m`` canaries from the public split (mislabelled) or from noise (ood), included w.p. 1/2."""
    if kind not in CANARY_KINDS:
        raise ConfigError(f"canaries: kind must be one of {list(CANARY_KINDS)}, got {kind!r}")
    if m < 2:
        raise ConfigError(f"canaries: need at least 2 canaries, got {m}")
    rng = np.random.default_rng([seed, 31337])
    c = int(splits.num_classes)
    pub = splits.public
    if kind == "mislabelled":
        if m > len(pub):
            raise ConfigError(
                f"canaries: {m} mislabelled canaries need {m} public records; the public split has "
                f"{len(pub)} (use fewer canaries, kind 'ood', or a larger public fraction)"
            )
        pick = np.sort(rng.choice(len(pub), size=m, replace=False))
        X = pub.X[pick].astype(np.float32)
        y = (pub.y[pick] + rng.integers(1, c, size=m)) % c  # never the true label
        source = pub.indices[pick]
    else:
        lo, hi = float(pub.X.min()), float(pub.X.max())
        X = rng.uniform(lo, hi, size=(m, *pub.X.shape[1:])).astype(np.float32)
        y = rng.integers(0, c, size=m)
        source = np.full(m, -1, dtype=np.int64)
    included = rng.random(m) < 0.5
    return Canaries(X, y.astype(np.int64), included, np.asarray(source, dtype=np.int64), kind)


def with_canaries(X: np.ndarray, y: np.ndarray, canaries: Canaries | None) -> tuple[np.ndarray, np.ndarray]:
    """The training set: the given records plus the included canaries."""
    if canaries is None:
        return X, y
    inc = canaries.included
    return (
        np.concatenate([X, canaries.X[inc]]).astype(np.float32),
        np.concatenate([y, canaries.y[inc]]).astype(np.int64),
    )


def canary_scores(predict_logits: Callable[[np.ndarray], np.ndarray], canaries: Canaries) -> np.ndarray:
    """Each canary's log-probability of its canary label (higher = "more likely trained on")."""
    from scipy.special import log_softmax

    z = np.asarray(predict_logits(canaries.X), dtype=np.float64)
    out: np.ndarray = log_softmax(z, axis=1)[np.arange(len(canaries)), canaries.y]
    return out


def module_logits(module: Any) -> Callable[[np.ndarray], np.ndarray]:
    import torch

    def f(X: np.ndarray) -> np.ndarray:
        module.eval()
        with torch.no_grad():
            out: np.ndarray = module(torch.as_tensor(X, dtype=torch.float32)).double().numpy()
        return out

    return f


def judge_one_run(
    scores: np.ndarray,
    canaries: Canaries,
    privacy: dict[str, Any] | None,
    *,
    delta: float | None = None,
    n_boot: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """The one-run and Clopper-Pearson bounds beside the accountant's epsilon, with a finding.

    ``delta`` defaults to the accountant's delta for a DP model and 0 otherwise.
    """
    from invguard.metrics.privacy import clopper_pearson_metric, one_run_metric

    d = float(delta if delta is not None else (privacy or {}).get("delta", 0.0))
    one, bound = one_run_metric(scores, canaries.included, delta=d, n_boot=n_boot, seed=seed)
    cp = clopper_pearson_metric(scores, canaries.included, delta=d)
    claimed = None if not privacy else float(privacy["epsilon"])
    findings = []
    m, k = len(canaries), int(canaries.included.sum())
    where = (
        f"{m} {canaries.kind} canaries ({k} included at random): the one-run bound is "
        f"epsilon >= {one.value:.3g} at 95% confidence (bootstrap range {_rng(one)}; "
        f"{bound.correct} of {bound.guesses} guesses right), the Clopper-Pearson TPR/FPR bound "
        f"epsilon >= {cp.value:.3g}"
    )
    if claimed is not None:
        worst = max(one.value, cp.value)
        if worst > claimed:
            findings.append(
                Finding(
                    "The differential-privacy claim does not hold",
                    f"{where}, above the accountant's epsilon {claimed:.3g}. At least one of the "
                    "training's privacy mechanisms is broken (noise, clipping, sampling or accounting).",
                    "critical",
                )
            )
        else:
            sound = one.high is not None and one.high < claimed
            findings.append(
                Finding(
                    "Consistent with the DP claim",
                    f"{where}, below the accountant's epsilon {claimed:.3g}"
                    + (" (the whole bootstrap range too)." if sound else ".")
                    + " A lower bound cannot prove the claim; it found no violation.",
                    "info",
                )
            )
    else:
        sev = "high" if one.value >= 1 else ("medium" if one.value > 0 else "info")
        findings.append(
            Finding(
                "No privacy guarantee; measured leakage"
                if one.value > 0
                else "No privacy guarantee; no leakage measured",
                f"{where}. The model was trained without differential privacy: "
                f"it behaves as no better than {one.value:.3g}-DP on these canaries.",
                sev,
            )
        )
    return {
        "metrics": {"epsilon_one_run": one.to_json(), "epsilon_clopper_pearson": cp.to_json()},
        "accountant_epsilon": claimed,
        "delta": d,
        "canaries": m,
        "canaries_included": k,
        "canary_kind": canaries.kind,
        "guesses": {"in": bound.k_pos, "out": bound.k_neg, "correct": bound.correct, "total": bound.guesses},
        "hypotheses": bound.hypotheses,
        "claim_refuted": claimed is not None and max(one.value, cp.value) > claimed,
        "findings": [f.to_json() if hasattr(f, "to_json") else f.__dict__ for f in findings],
    }


def _rng(m: Metric) -> str:
    if m.low is None or m.high is None:
        return "n/a"
    return f"{m.low:.3g}-{m.high:.3g}"


def one_run_audit(
    spec: dict[str, Any],
    splits: Any,
    defence: Any,
    *,
    canaries: int = 1000,
    kind: str = "mislabelled",
    seed: int = 0,
    n_boot: int = 200,
    progress: Callable[[int, int, float], None] | None = None,
) -> tuple[Any, Any, dict[str, Any]]:
    """Train ``spec`` once on the members plus random canaries under ``defence`` and audit it.

    Returns ``(module, training report, audit)``; the audit is JSON-ready (see :func:`judge_one_run`).
    """
    from invguard.models.defended import fit_defended

    can = make_canaries(splits, canaries, kind=kind, seed=seed)
    X, y = with_canaries(splits.members.X, splits.members.y, can)
    module, report = fit_defended(spec, X, y, defence, seed=seed, progress=progress)
    scores = canary_scores(module_logits(module), can)
    return module, report, judge_one_run(scores, can, report.privacy, n_boot=n_boot, seed=seed)
