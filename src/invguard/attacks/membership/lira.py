"""LiRA, the Likelihood Ratio Attack of Carlini et al. 2022 ("Membership Inference Attacks From
First Principles", IEEE S&P 2022, Algorithm 1).

For each candidate ``(x, y)`` the attacker trains reference models on random halves of its data and
fits Gaussians to the logit-scaled confidence ``phi = log(p_y / (1 - p_y))`` of the models that
trained on ``x`` (IN) and of those that did not (OUT):

- **online**: reference models train on random halves of the public split *plus the candidates*
  (each candidate is IN for exactly half of them, as in the paper's balanced masks); the score is
  the log likelihood ratio ``log N(phi; mu_in, s_in^2) - log N(phi; mu_out, s_out^2)``;
- **offline**: reference models train on random halves of the public split only (every candidate
  is OUT); the one-sided test scores ``log Pr[Z <= phi]``, ``Z ~ N(mu_out, s_out^2)``.

Variances are per example or fixed (one global variance, better with few models, Sec. VI-A);
``augment`` queries shifted (and mirrored) copies and averages the per-query log likelihoods
(Sec. VI-B).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from scipy.stats import norm

from invguard.attacks.base import ATTACKS, RunContext
from invguard.attacks.membership.common import (
    AUGMENTATIONS,
    ReferenceAttack,
    as_target_would,
    augment,
    candidates_of,
    logit_confidence,
    paired_masks,
    run_references,
    scored,
    splits_of,
)
from invguard.core.access import Access
from invguard.core.data import Splits
from invguard.core.evidence import MembershipScores
from invguard.core.params import OPEN_UNIT, Int, Options, Spec
from invguard.core.result import Finding
from invguard.core.target import Target

VARIANCES = ("auto", "fixed", "per_example")


@ATTACKS.register("membership.lira")
@dataclass(frozen=True)
class LiRA(ReferenceAttack):
    """The likelihood ratio attack.

    ``n_models``: reference models (even numbers keep the IN/OUT split balanced); ``mode``: online or
    offline; ``variance``: ``fixed``, ``per_example`` or ``auto`` (fixed below 64 models, as the paper
    recommends); ``augment``: ``none``, ``shift`` or ``flip_shift`` (images); ``arch``/``recipe``/
    ``train``: how reference models are built and trained (default: the target's own
    ``invguard.models`` spec and recipe); ``decision_fpr``: level of the offline test's yes/no
    decision (online decides at likelihood ratio 1).
    """

    name: ClassVar[str] = "membership.lira"
    requires: ClassVar[Access] = Access.SCORES
    strength: ClassVar[int] = 50
    fast_params: ClassVar[Mapping[str, Any]] = {"n_models": 8, "n_boot": 300}

    n_models: int = 16
    mode: str = "online"
    variance: str = "auto"
    augment: str = "none"
    decision_fpr: float = 0.05

    constraints: ClassVar[Mapping[str, Spec]] = {
        "n_models": Int(2),
        "mode": Options("online", "offline"),
        "variance": Options(*VARIANCES),
        "augment": Options(*AUGMENTATIONS),
        "decision_fpr": OPEN_UNIT,
    }

    def search(
        self, target: Target, data: Splits, rng: np.random.Generator, ctx: RunContext
    ) -> MembershipScores:
        splits = splits_of(data, self.name)
        cand = candidates_of(splits)
        ref = self.reference(target)
        queries = augment(cand.X, self.augment)  # (n, A, ...)
        n, a = queries.shape[:2]
        seed = int(rng.integers(2**31))

        # the target's statistic on every query
        flat = queries.reshape((n * a, *queries.shape[2:]))
        phi_target = logit_confidence(target.predict(flat), np.repeat(cand.y, a)).reshape(n, a)

        # reference models on random halves of the attacker's data
        pub = splits.public
        if self.mode == "online":
            X = np.concatenate([pub.X, cand.X]).astype(np.float32)
            Y = np.concatenate([pub.y, cand.y])
        else:
            X, Y = pub.X.astype(np.float32), pub.y
        masks = paired_masks(self.n_models, len(Y), seed)
        logits = run_references(ctx, ref, X, Y, masks, queries, seed, task=f"{self.name} reference models")
        phi_ref = np.stack(
            [
                logit_confidence(
                    as_target_would(lg.reshape(n * a, -1), target), np.repeat(cand.y, a)
                ).reshape(n, a)
                for lg in logits
            ]
        )  # (models, n, A)
        fixed = self.variance == "fixed" or (self.variance == "auto" and self.n_models < 64)

        if self.mode == "online":
            keep = masks[:, len(pub) :]  # (models, n): was candidate i in model k's training half?
            scores = _online(phi_target, phi_ref, keep, fixed)
            threshold: float | None = 0.0
        else:
            scores = _offline(phi_target, phi_ref, fixed)
            threshold = float(np.log(1.0 - self.decision_fpr))

        notes = []
        if self.n_models < 16:
            notes.append(
                Finding(
                    "Few reference models",
                    f"LiRA ran with {self.n_models} reference models; the paper's figures use 64 or more. "
                    "More models sharpen the low-FPR estimate (and can only raise it).",
                    "info",
                )
            )
        return scored(
            scores,
            cand,
            decision_threshold=threshold,
            notes=notes,
            info={
                "mode": self.mode,
                "fixed_variance": fixed,
                "queries_per_record": a,
                **self.reference_info(ref, masks),
            },
        )


def _std(values: np.ndarray, weights: np.ndarray, axis: int) -> np.ndarray:
    cnt = weights.sum(axis=axis)
    mean = (values * weights).sum(axis=axis) / np.maximum(cnt, 1)
    var = (((values - np.expand_dims(mean, axis)) ** 2) * weights).sum(axis=axis) / np.maximum(cnt - 1, 1)
    out: np.ndarray = np.sqrt(var)
    return out


def _pooled_sd(values: np.ndarray, mean: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Within-candidate standard deviation pooled over candidates, per query position ``(A,)``."""
    ss = (((values - mean) ** 2) * weights).sum((0, 1))
    groups = (weights.sum(0) > 0).sum(0)  # candidates with at least one model, per query position
    dof = np.maximum(weights.sum((0, 1)) - groups, 1)
    out: np.ndarray = np.sqrt(ss / dof)
    return out


def _online(phi_t: np.ndarray, phi_r: np.ndarray, keep: np.ndarray, fixed: bool) -> np.ndarray:
    """Mean over queries of log N(phi; IN) - log N(phi; OUT), per candidate (Algorithm 1)."""
    w_in = keep[:, :, None].astype(np.float64) * np.ones_like(phi_r)
    w_out = (~keep)[:, :, None].astype(np.float64) * np.ones_like(phi_r)
    mu_in = (phi_r * w_in).sum(0) / np.maximum(w_in.sum(0), 1)  # (n, A)
    mu_out = (phi_r * w_out).sum(0) / np.maximum(w_out.sum(0), 1)
    if fixed:
        # one variance per query position, pooled over every candidate's IN (resp. OUT) residuals
        sd_in = np.broadcast_to(_pooled_sd(phi_r, mu_in, w_in), mu_in.shape)
        sd_out = np.broadcast_to(_pooled_sd(phi_r, mu_out, w_out), mu_out.shape)
    else:
        sd_in, sd_out = _std(phi_r, w_in, 0), _std(phi_r, w_out, 0)
    sd_in = np.maximum(sd_in, 1e-6)
    sd_out = np.maximum(sd_out, 1e-6)
    llr = norm.logpdf(phi_t, mu_in, sd_in) - norm.logpdf(phi_t, mu_out, sd_out)
    out: np.ndarray = llr.mean(axis=1)
    return out


def _offline(phi_t: np.ndarray, phi_r: np.ndarray, fixed: bool) -> np.ndarray:
    """Mean over queries of log Pr[Z <= phi], Z ~ N(mu_out, s_out^2): the one-sided test."""
    mu_out = phi_r.mean(0)
    if fixed:
        sd_out = np.broadcast_to(_pooled_sd(phi_r, mu_out, np.ones_like(phi_r)), mu_out.shape)
    else:
        sd_out = phi_r.std(0, ddof=1)
    sd_out = np.maximum(sd_out, 1e-6)
    out: np.ndarray = norm.logcdf(phi_t, mu_out, sd_out).mean(axis=1)
    return out
