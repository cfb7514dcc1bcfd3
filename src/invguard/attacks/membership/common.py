"""Shared machinery of the membership attacks.

- the candidates an audit scores (the members and non-members splits, with ground truth);
- the per-record statistics read off a prediction (true-class probability, the logit-scaled
  confidence of Carlini et al. 2022, loss, entropies);
- reference ("shadow") model training as independent, picklable jobs run through
  ``RunContext.map`` and cached by content hash;
- what a reference model would have revealed through the target's own output policy;
- turning scores into the AttackOutput the report reads.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from invguard.attacks.base import Attack, AttackOutput, RunContext
from invguard.core.access import Access
from invguard.core.errors import ConfigError
from invguard.core.result import Finding, Metric
from invguard.core.target import Prediction, Target, softmax

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


def splits_of(data: Any, attack: str, needs_public: bool = True) -> Any:
    """Check that ``data`` is an ``invguard.data.Splits`` (members, non-members, public)."""
    missing = [n for n in ("members", "nonmembers", "public") if not hasattr(data, n)]
    if missing:
        raise ConfigError(
            f"{attack}: needs data splits (invguard.data.load(...)) with members, nonmembers and public; "
            f"got {type(data).__name__} without {', '.join(missing)}"
        )
    for name in ("members", "nonmembers") + (("public",) if needs_public else ()):
        if len(getattr(data, name)) == 0:
            raise ConfigError(f"{attack}: the {name} split is empty")
    return data


def candidates_of(data: Any) -> Candidates:
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
    if pred.scores is not None:
        return np.asarray(pred.scores, dtype=np.float64)
    if pred.logits is not None:
        return softmax(pred.logits)
    raise ConfigError("this statistic needs scores or logits; the prediction carries labels only")


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


def _inner_module(target: Any) -> Any:
    t = target
    for _ in range(16):
        mod = getattr(t, "_module", None)
        if mod is not None:
            return mod
        t = getattr(t, "inner", None)
        if t is None:
            return None
    return None


@dataclass(frozen=True, kw_only=True)
class ReferenceAttack(Attack):
    """The parameters every attack that trains reference ("shadow") models shares.

    ``n_models``: how many (at least ``min_models``); ``arch``/``recipe``/``train``: how they are
    built and trained (default: the target's own ``invguard.models`` spec and recipe); ``n_boot``:
    bootstrap resamples of the confidence intervals; ``top``: records listed in the risk ranking.
    Subclasses redeclare ``n_models`` with their own default and extend ``validate``.
    """

    min_models: ClassVar[int] = 1

    n_models: int = 8
    arch: dict[str, Any] | None = None
    recipe: str | None = None
    train: dict[str, Any] = field(default_factory=dict)
    n_boot: int = 1000
    top: int = 20

    def validate(self) -> list[str]:
        p = []
        if self.n_models < self.min_models:
            p.append(f"n_models must be >= {self.min_models}, got {self.n_models}")
        if self.n_boot < 0:
            p.append(f"n_boot must be >= 0, got {self.n_boot}")
        return p

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

    module = _inner_module(target)
    if arch is None:
        spec = getattr(module, "invguard_spec", None) if module is not None else None
        if spec is None:
            raise ConfigError(
                f"{attack}: reference models need an architecture: give arch={{'arch': 'mlp', "
                f"'hidden': [128]}} (an invguard.models.build spec); the target's architecture is only "
                f"known when it is a TorchTarget around a module built by invguard.models.build"
            )
        spec = dict(spec)
    else:
        spec = dict(arch)
    spec.setdefault("input_shape", list(target.input_shape))
    spec.setdefault("num_classes", target.num_classes)
    if "arch" not in spec:
        raise ConfigError(f"{attack}: arch needs an 'arch' key (e.g. 'mlp' or 'cnn'); got {sorted(spec)}")
    if recipe is None:
        meta = getattr(module, "invguard_meta", None) or {}
        recipe = str(meta.get("recipe", "standard"))
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

    def key(self) -> str:
        h = hashlib.sha256()
        h.update(
            json.dumps(
                {
                    "spec": self.ref.spec,
                    "recipe": self.ref.recipe,
                    "train": self.ref.overrides,
                    "seed": self.seed,
                },
                sort_keys=True,
                default=str,
            ).encode()
        )
        idx = np.sort(np.asarray(self.train_idx, dtype=np.int64))
        h.update(np.ascontiguousarray(self.X[idx]).tobytes())
        h.update(np.ascontiguousarray(self.y[idx]).tobytes())
        return h.hexdigest()[:24]


def train_reference(job: ReferenceJob) -> np.ndarray:
    """Train (or load from the cache) one reference model; its logits on the queries ``(n, A, C)``."""
    import torch

    from invguard.models import load, save
    from invguard.models.train import fit

    if multiprocessing.parent_process() is not None:  # a pool worker: one thread per job
        torch.set_num_threads(1)
    path = Path(job.cache_dir) / "references" / f"ref-{job.key()}.pt" if job.cache_dir else None
    if path is not None and path.exists():
        module = load(path)
    else:
        idx = np.asarray(job.train_idx, dtype=np.int64)
        module, report = fit(
            job.ref.spec, job.X[idx], job.y[idx], recipe=job.ref.recipe, seed=job.seed, **job.ref.overrides
        )
        if path is not None:
            save(module, path, meta={"reference": True, "train_accuracy": report.train_accuracy})
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


def policy_chain(target: Any) -> tuple[Access, list[Any]]:
    """The base access of the wrapped model and the output policies around it (innermost first)."""
    policies = []
    t = target
    for _ in range(16):
        if hasattr(t, "policy") and hasattr(t, "inner"):
            policies.append(t.policy)
            t = t.inner
        else:
            break
    return min(Access(int(t.access)), Access.LOGITS), policies[::-1]


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


# --------------------------------------------------------------------------------------------- output


def membership_output(
    attack: str,
    scores: np.ndarray,
    cand: Candidates,
    *,
    decision_threshold: float | None,
    n_boot: int,
    seed: int,
    top: int = 20,
    notes: list[Finding] | None = None,
    info: dict[str, Any] | None = None,
) -> AttackOutput:
    """Metrics with CIs, ROC arrays, per-record scores and the risk ranking, plus findings."""
    from invguard.metrics.membership import membership_metrics, risk_ranking, roc_for_plot
    from invguard.metrics.privacy import roc_epsilon_metric

    scores = np.asarray(scores, dtype=np.float64)
    metrics = membership_metrics(
        scores, cand.is_member, decision_threshold=decision_threshold, n_boot=n_boot, seed=seed
    )
    # "this model behaves as no better than epsilon >= x": the bound its ROC implies at low FPR
    metrics["epsilon_at_fpr_0.01"] = roc_epsilon_metric(scores, cand.is_member, max_fpr=0.01)
    fpr, tpr = roc_for_plot(scores, cand.is_member)
    ranking = risk_ranking(scores, cand.is_member, cand.indices, cand.y, top=top)
    findings = [_verdict(attack, metrics, len(cand), int(cand.is_member.sum()))]
    if ranking:
        top_rows = ", ".join(f"#{r['index']} (class {r['class']})" for r in ranking[:5])
        findings.append(
            Finding(
                "Most exposed training records",
                f"The training records scored most confidently as members are {top_rows}; "
                f"see the risk_ranking table for the top {len(ranking)}.",
                "info",
            )
        )
    findings += notes or []
    return AttackOutput(
        metrics=metrics,
        arrays={
            "roc_fpr": fpr,
            "roc_tpr": tpr,
            "scores": scores,
            "is_member": cand.is_member.astype(np.int64),
            "indices": cand.indices,
            "labels": cand.y,
        },
        tables={"risk_ranking": ranking},
        findings=findings,
        info={
            "candidates": len(cand),
            "members": int(cand.is_member.sum()),
            "decision_threshold": decision_threshold,
            **(info or {}),
        },
    )


def _verdict(attack: str, m: dict[str, Metric], n: int, members: int) -> Finding:
    auc, t1, t01 = m["auc"], m["tpr_at_fpr_0.01"], m["tpr_at_fpr_0.001"]
    auc_low = auc.low if auc.low is not None else auc.value
    t1_low = t1.low if t1.low is not None else t1.value
    detail = (
        f"On {n} candidate records ({members} members), {attack} reaches AUC {auc:.3f}, "
        f"TPR {t1:.3f} at 1% FPR and {t01:.3f} at 0.1% FPR (95% bootstrap CIs)."
    )
    eps = m.get("epsilon_at_fpr_0.01")
    if eps is not None and eps.low is not None:
        detail += (
            f" Its ROC at FPR <= 1% says the model behaves as no better than epsilon >= {eps.low:.2f}-DP "
            f"(95% confidence, delta 0; estimate {eps.value:.2f})."
        )
    if auc_low > 0.5 and t1_low > 0.01:
        sev = "high" if t1.value >= 0.1 or auc.value >= 0.75 else "medium"
        return Finding(
            "Training membership is exposed",
            detail + " The model reveals who was in its "
            "training set, most sharply for the records in the risk ranking.",
            sev,
        )
    if auc_low > 0.5:
        return Finding(
            "Weak average membership signal",
            detail + " Members score higher on average, but no confident low-FPR identification.",
            "low",
        )
    return Finding("No membership leak found", detail + " The attack does no better than chance.", "info")
