"""Shared machinery of the membership attacks.

- the candidates an audit scores (the members and non-members splits, with ground truth);
- the per-record statistics read off a prediction (true-class probability, the logit-scaled
  confidence of Carlini et al. 2022, loss, entropies);
- reference ("shadow") model training as independent, picklable jobs run through
  ``RunContext.map`` and cached by content hash;
- what a reference model would have revealed through the target's own output policy;
- the evidence a membership search returns (scored by :mod:`invguard.judges.membership`).
"""

from __future__ import annotations

import hashlib
import multiprocessing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from invguard.attacks.base import Attack, RunContext
from invguard.core.access import Access
from invguard.core.data import Splits, require_splits
from invguard.core.errors import ConfigError
from invguard.core.evidence import MembershipScores
from invguard.core.params import Dict, Int, Satisfies, Spec
from invguard.core.result import Finding
from invguard.core.target import Prediction, Target, unwrap

EPS = 1e-12


# ----------------------------------------------------------------------------------------- candidates


@dataclass(frozen=True)
class Candidates:
    """The records whose membership is audited: members then non-members."""

    X: np.ndarray
    y: np.ndarray
    is_member: np.ndarray  # 0/1
    indices: np.ndarray  # record indices into the source dataset

    def __len__(self) -> int:
        return int(self.y.shape[0])


def splits_of(data: object, attack: str) -> Splits:
    """``data`` as splits whose members, non-members and public splits hold records."""
    return require_splits(data, attack, nonempty=("members", "nonmembers", "public"))


def candidates_of(data: Splits) -> Candidates:
    m, n = data.members, data.nonmembers
    return Candidates(
        X=np.concatenate([m.X, n.X]).astype(np.float32),
        y=np.concatenate([m.y, n.y]).astype(np.int64),
        is_member=np.r_[np.ones(len(m), np.int64), np.zeros(len(n), np.int64)],
        indices=np.concatenate([m.indices, n.indices]).astype(np.int64),
    )


# ------------------------------------------------------------------------------------------ statistics


def calibrated_threshold(population: np.ndarray, fpr: float) -> float:
    """The lowest threshold ``t`` with ``mean(population >= t) <= fpr`` (decide "member" when ``score >= t``).

    Tie-safe: when many population scores are equal (rounded outputs, a confidence of exactly 1.0) the
    threshold steps above the whole tie group instead of letting the real false-positive rate exceed
    ``fpr``; above every population score when no threshold keeps to ``fpr``.
    """
    pop = np.asarray(population, dtype=np.float64)
    pop = pop[~np.isnan(pop)]
    if pop.size == 0:
        return float("inf")
    values = np.unique(pop)
    at_or_above = (pop.size - np.searchsorted(np.sort(pop), values, side="left")) / pop.size
    ok = np.flatnonzero(at_or_above <= fpr)
    if ok.size:
        return float(values[ok[0]])
    return float(np.nextafter(values[-1], np.inf))


def probabilities(pred: Prediction) -> np.ndarray:
    """``pred.probabilities()``, refusing a label-only prediction."""
    p = pred.probabilities()
    if p is None:
        raise ConfigError("this statistic needs scores or logits; the prediction carries labels only")
    return p


def true_prob(pred: Prediction, y: np.ndarray) -> np.ndarray:
    p = probabilities(pred)
    out: np.ndarray = p[np.arange(len(y)), y]
    return out


def logit_confidence(pred: Prediction, y: np.ndarray) -> np.ndarray:
    """phi = log(p_y / (1 - p_y)), the logit-scaled confidence of Carlini et al. 2022 (Sec. IV-C).

    From logits it is computed as ``z_y - logsumexp_{j != y} z_j`` (no rounding to 0 or 1); from
    scores as ``log p_y - log sum_{j != y} p_j`` with a tiny floor, so truncated or rounded score
    vectors stay finite.
    """
    rows = np.arange(len(y))
    if pred.logits is not None:
        z = np.asarray(pred.logits, dtype=np.float64)
        zy = z[rows, y]
        others = z.copy()
        others[rows, y] = -np.inf
        mx = np.max(others, axis=1)
        lse = mx + np.log(np.sum(np.exp(others - mx[:, None]), axis=1))
        out: np.ndarray = zy - lse
        return out
    p = probabilities(pred)
    py = p[rows, y]
    rest = np.clip(np.sum(p, axis=1) - py, 0.0, None)
    out = np.log(py + EPS) - np.log(rest + EPS)
    return out


def statistic(pred: Prediction, y: np.ndarray, kind: str) -> np.ndarray:
    """Per-record membership signal, higher meaning "more likely a member".

    ``loss``: minus the cross-entropy loss (Yeom et al. 2018); ``confidence``: the true-class
    probability (Salem et al. 2019); ``entropy``: minus the prediction entropy (Salem et al. 2019);
    ``modified_entropy``: minus Song & Mittal's (2021) label-aware modified entropy
    ``-(1-p_y) log p_y - sum_{j != y} p_j log(1 - p_j)``.
    """
    p = probabilities(pred)
    rows = np.arange(len(y))
    py = p[rows, y]
    if kind == "loss":
        out: np.ndarray = np.log(py + EPS)
        return out
    if kind == "confidence":
        out = np.asarray(py, dtype=np.float64)
        return out
    if kind == "entropy":
        out = np.sum(p * np.log(p + EPS), axis=1)
        return out
    if kind == "modified_entropy":
        q = p.copy()
        q[rows, y] = 0.0
        mentr = -(1 - py) * np.log(py + EPS) - np.sum(q * np.log(1 - q + EPS), axis=1)
        out = -mentr
        return out
    raise ConfigError(f"unknown statistic {kind!r}")


# ------------------------------------------------------------------------------------- augmentation

AUGMENTATIONS = ("none", "shift", "flip_shift")


def augment(X: np.ndarray, kind: str) -> np.ndarray:
    """Deterministic query augmentations of Carlini et al. 2022 (Sec. VI-B): ``(n, A, *shape)``.

    ``shift``: the image and its four one-pixel translations (zero padded); ``flip_shift``: the same
    and their horizontal mirror images. ``none``: the record itself (``A = 1``).
    """
    if kind == "none":
        return X[:, None]
    if X.ndim != 4:
        raise ConfigError(f"augmentation {kind!r} needs images of shape (n, c, h, w); got {X.shape[1:]}")
    views = [X]
    for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        views.append(shift(X, dy, dx))
    if kind == "flip_shift":
        views += [v[..., ::-1] for v in views]
    return np.stack(views, axis=1).astype(np.float32)


def shift(X: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Translate images by (dy, dx) pixels, filling with zeros."""
    out = np.zeros_like(X)
    h, w = X.shape[-2:]
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[..., yd, xd] = X[..., ys, xs]
    return out


# -------------------------------------------------------------------------------- reference models


@dataclass(frozen=True)
class ReferenceSpec:
    """How to train a reference model like the target: architecture spec, recipe and overrides."""

    spec: dict[str, Any]
    recipe: str
    overrides: dict[str, Any] = field(default_factory=dict)


def _known_recipe(name: Any) -> bool:
    from invguard.models.train import RECIPES

    return isinstance(name, str) and name in RECIPES


@dataclass(frozen=True, kw_only=True)
class ReferenceAttack(Attack):
    """The parameters every attack that trains reference ("shadow") models shares.

    ``n_models``: how many; ``arch``/``recipe``/``train``: how they are
    built and trained (default: the target's own ``invguard.models`` spec and recipe); ``n_boot``:
    bootstrap resamples of the confidence intervals; ``top``: records listed in the risk ranking.
    Subclasses redeclare ``n_models`` with their own default and add to ``constraints``.
    """

    n_models: int = 8
    arch: dict[str, Any] | None = None
    recipe: str | None = None
    train: dict[str, Any] = field(default_factory=dict)
    n_boot: int = 1000
    top: int = 20

    constraints: ClassVar[Mapping[str, Spec]] = {
        "n_models": Int(1),
        "arch": (None, Dict()),
        "recipe": (None, Satisfies(_known_recipe, "the name of a training recipe", "no-such-recipe")),
        "train": Dict(),
        "n_boot": Int(0),
        "top": Int(0),
    }

    def reference(self, target: Target) -> ReferenceSpec:
        return resolve_reference(target, self.arch, self.recipe, self.train, self.name)

    @staticmethod
    def reference_info(ref: ReferenceSpec, masks: np.ndarray) -> dict[str, Any]:
        """What the report states about the reference models: how many, their training-set size
        and recipe."""
        return {
            "reference_models": int(masks.shape[0]),
            "reference_train_size": int(masks[0].sum()),
            "reference_spec": ref.spec,
            "reference_recipe": ref.recipe,
        }


def resolve_reference(
    target: Target, arch: Any, recipe: str | None, train: Any, attack: str
) -> ReferenceSpec:
    """The reference-model recipe: ``arch`` (an ``invguard.models.build`` spec) or the target's own."""
    from invguard.models import RECIPES

    seen = unwrap(target)
    if arch is None:
        spec = seen.spec
        if spec is None:
            raise ConfigError(
                f"{attack}: reference models need an architecture: give arch={{'arch': 'mlp', "
                f"'hidden': [128]}} (an invguard.models.build spec); the target's architecture is only "
                f"known when it is a TorchTarget around a module built by invguard.models.build"
            )
    else:
        spec = dict(arch)
    spec.setdefault("input_shape", list(target.input_shape))
    spec.setdefault("num_classes", target.num_classes)
    if "arch" not in spec:
        raise ConfigError(f"{attack}: arch needs an 'arch' key (e.g. 'mlp' or 'cnn'); got {sorted(spec)}")
    if recipe is None:
        recipe = str(seen.meta.get("recipe", "standard"))
    if recipe not in RECIPES:
        raise ConfigError(f"{attack}: unknown training recipe {recipe!r}; expected one of {sorted(RECIPES)}")
    return ReferenceSpec(spec=spec, recipe=recipe, overrides=dict(train or {}))


@dataclass(frozen=True)
class ReferenceJob:
    """One reference model: train on ``X[train_idx]`` and return its logits on ``queries``.

    Module-level and picklable so that a process pool or Dask can run it.
    """

    ref: ReferenceSpec
    seed: int
    X: np.ndarray
    y: np.ndarray
    train_idx: np.ndarray
    queries: np.ndarray  # (n, A, *input_shape)
    cache_dir: str | None = None

    def parts(self) -> dict[str, Any]:
        """What the trained model depends on (the cache key's description, see invguard.storage)."""
        h = hashlib.sha256()
        idx = np.sort(np.asarray(self.train_idx, dtype=np.int64))
        h.update(np.ascontiguousarray(self.X[idx]).tobytes())
        h.update(np.ascontiguousarray(self.y[idx]).tobytes())
        return {
            "spec": self.ref.spec,
            "recipe": self.ref.recipe,
            "train": self.ref.overrides,
            "seed": self.seed,
            "records": h.hexdigest(),
        }


def train_reference(job: ReferenceJob) -> np.ndarray:
    """Train (or load from the cache) one reference model; its logits on the queries ``(n, A, C)``."""
    import torch

    from invguard.models import load
    from invguard.models.store import save_with_meta
    from invguard.models.train import fit
    from invguard.storage import cached

    if multiprocessing.parent_process() is not None:  # a pool worker: one thread per job
        torch.set_num_threads(1)

    def make() -> Any:
        idx = np.asarray(job.train_idx, dtype=np.int64)
        module, report = fit(
            job.ref.spec, job.X[idx], job.y[idx], recipe=job.ref.recipe, seed=job.seed, **job.ref.overrides
        )
        module.invguard_meta = {"reference": True, "train_accuracy": report.train_accuracy}  # type: ignore[assignment]
        return module

    module = cached(
        None if job.cache_dir is None else Path(job.cache_dir) / "references",
        "ref",
        job.parts(),
        make=make,
        load=load,
        save=save_with_meta,
    )
    q = np.asarray(job.queries, dtype=np.float32)
    n, a = q.shape[:2]
    flat = q.reshape((n * a, *q.shape[2:]))
    module.eval()
    out = []
    with torch.no_grad():
        for i in range(0, flat.shape[0], 4096):
            out.append(module(torch.from_numpy(flat[i : i + 4096])).double().numpy())
    logits: np.ndarray = np.concatenate(out).reshape(n, a, -1)
    return logits


def model_seed(seed: int, i: int) -> int:
    return int(np.random.SeedSequence([seed, 7919, i]).generate_state(1)[0])


def paired_masks(n_models: int, n_records: int, seed: int) -> np.ndarray:
    """Training masks ``(n_models, n_records)``: model ``2k`` takes a random half, ``2k+1`` the rest.

    Every record is in exactly half the models of any even prefix (as the balanced ``keep`` masks
    of Carlini et al.'s reference code), and a prefix of masks does not depend on ``n_models``, so
    8 reference models are the first 8 of 32 and come from the cache.
    """
    masks = np.zeros((n_models, n_records), dtype=bool)
    for pair in range((n_models + 1) // 2):
        order = np.random.default_rng([seed, 104729, pair]).permutation(n_records)
        first = np.zeros(n_records, dtype=bool)
        first[order[: n_records // 2]] = True
        masks[2 * pair] = first
        if 2 * pair + 1 < n_models:
            masks[2 * pair + 1] = ~first
    return masks


def run_references(
    ctx: RunContext,
    ref: ReferenceSpec,
    X: np.ndarray,
    y: np.ndarray,
    masks: np.ndarray,
    queries: np.ndarray,
    seed: int,
    task: str = "reference models",
) -> np.ndarray:
    """Train one reference model per mask through ``ctx.map``; logits ``(n_models, n, A, C)``."""
    cache = str(ctx.cache_dir) if ctx.cache_dir is not None else None
    jobs = [
        ReferenceJob(ref, model_seed(seed, i), X, y, np.flatnonzero(mk), queries, cache)
        for i, mk in enumerate(masks)
    ]
    ctx.report(task, 0, len(jobs))
    out = ctx.map(train_reference, jobs)
    ctx.report(task, len(jobs), len(jobs))
    return np.stack(out)


def policy_chain(target: Target) -> tuple[Access, list[Any]]:
    """The base access of the wrapped model and the output policies around it (innermost first)."""
    seen = unwrap(target)
    return min(Access(int(seen.base.access)), Access.LOGITS), list(seen.policies[::-1])


def as_target_would(logits: np.ndarray, target: Target) -> Prediction:
    """What ``target`` would reveal if it were this reference model: same access, same policies.

    The attacker knows the API's output policy (it is public behaviour), so reference statistics
    are computed from the same reduced outputs as the target's.
    """
    base, policies = policy_chain(target)
    pred = Prediction.from_logits(logits, base)
    for p in policies:
        pred = p.apply(pred)
    return pred


# ------------------------------------------------------------------------------------------- evidence


def scored(
    scores: np.ndarray,
    cand: Candidates,
    *,
    decision_threshold: float | None,
    notes: list[Finding] | None = None,
    info: dict[str, Any] | None = None,
) -> MembershipScores:
    """The evidence of a membership search: ``scores`` of the candidates ``cand``."""
    return MembershipScores(
        scores=np.asarray(scores, dtype=np.float64),
        is_member=cand.is_member.astype(np.int64),
        indices=cand.indices,
        labels=cand.y,
        decision_threshold=decision_threshold,
        notes=tuple(notes or ()),
        info=dict(info or {}),
    )
