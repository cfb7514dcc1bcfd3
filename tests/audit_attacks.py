"""Two small but real attacks used by the audit tests (registered under test-only names).

- ``test.prototype``: gradient-free model inversion (random-search hill climbing on the class
  score, scores access), judged by an independent evaluator trained on the evaluation split;
  reports attack_accuracy (Wilson CI), knn_distance, reconstructions and nearest private members.
- ``test.confidence``: the confidence-threshold membership test (Yeom et al. 2018): the score of
  the true class separates members from non-members; reports auc (bootstrap CI), TPR at low FPR,
  advantage and the ROC curve.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from invguard.attacks import ATTACKS, Attack, AttackOutput
from invguard.core import Access
from invguard.core.evidence import Evidence
from invguard.core.params import POSITIVE, Int
from invguard.core.result import Finding, Metric
from invguard.judges import register_judge
from invguard.metrics import bootstrap_metric, proportion_metric


def _where() -> str:
    try:
        from distributed import get_worker

        return f"dask:{get_worker().address}"
    except (ImportError, ValueError):
        return "in-process"


def _fit_evaluator(X, y, seed):
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(max_iter=300, C=0.5 + seed, random_state=seed).fit(X.reshape(len(X), -1), y)
    return model, _where()


@ATTACKS.register("test.prototype")
@dataclass(frozen=True)
class Prototype(Attack):
    name = "test.prototype"
    requires = Access.SCORES
    steps: int = 40
    population: int = 8
    step_size: float = 0.15

    constraints: ClassVar[Mapping[str, Any]] = {"steps": Int(1), "population": Int(1), "step_size": POSITIVE}

    def search(self, target, data, rng, ctx):
        classes = list(range(target.num_classes))
        recs = []
        for ci, c in enumerate(classes):
            x = rng.random((1, *target.input_shape)) * 0.2
            best = target.predict(x).scores[0, c]
            for _ in range(self.steps):
                cand = np.clip(
                    x + self.step_size * rng.normal(size=(self.population, *target.input_shape)), 0, 1
                )
                s = target.predict(cand).scores[:, c]
                k = int(np.argmax(s))
                if s[k] > best:
                    best, x = s[k], cand[k : k + 1]
            recs.append(x[0])
            ctx.report("classes", ci + 1, len(classes))
        return Prototypes(recs=np.stack(recs).astype(np.float32), classes=np.asarray(classes))


@dataclass(frozen=True, kw_only=True)
class Prototypes(Evidence):
    recs: np.ndarray
    classes: np.ndarray


@register_judge(Prototypes)
def _judge_prototypes(evidence, case):
    data, ctx = case.data, case.ctx
    recs, classes = evidence.recs, [int(c) for c in evidence.classes]
    ev = data.evaluation
    fitted = ctx.map(_fit_evaluator, [ev.X, ev.X], [ev.y, ev.y], [0, 1])
    evaluators = [m for m, _ in fitted]
    proba = sum(e.predict_proba(recs.reshape(len(recs), -1)) for e in evaluators)
    hits = int(np.sum(np.argmax(proba, 1) == np.asarray(classes)))
    near, dist = [], []
    for c, r in zip(classes, recs, strict=True):
        m = data.members.of_class(c)
        d = np.sqrt(((m.reshape(len(m), -1) - r.reshape(1, -1)) ** 2).sum(1))
        near.append(m[int(np.argmin(d))])
        dist.append(float(d.min()))
    acc = proportion_metric(hits, len(classes), description="evaluator agrees with the target class")
    return AttackOutput(
        metrics={
            "attack_accuracy": acc,
            "knn_distance": Metric(
                float(np.mean(dist)),
                higher_is_worse=False,
                description="mean L2 distance to the nearest private member",
            ),
        },
        arrays={
            "reconstructions": recs,
            "reconstruction_classes": np.asarray(classes),
            "nearest_private": np.stack(near),
        },
        tables={"per_class": [{"class": c, "knn_distance": d} for c, d in zip(classes, dist, strict=True)]},
        info={"evaluators_fitted_on": [w for _, w in fitted]},
        findings=[
            Finding(
                "class prototypes",
                f"{hits} of {len(classes)} reconstructions are recognised by an independent evaluator",
                "medium" if hits > len(classes) // 2 else "info",
            )
        ],
    )


def _auc(s, y):
    from sklearn.metrics import roc_auc_score

    return roc_auc_score(y, s) if 0 < y.sum() < len(y) else np.nan


@ATTACKS.register("test.confidence")
@dataclass(frozen=True)
class Confidence(Attack):
    name = "test.confidence"
    requires = Access.SCORES
    records: int = 200

    constraints: ClassVar[Mapping[str, Any]] = {"records": Int(10)}

    def search(self, target, data, rng, ctx):
        n = self.records
        X = np.concatenate([data.members.X[:n], data.nonmembers.X[:n]])
        y = np.concatenate([data.members.y[:n], data.nonmembers.y[:n]])
        truth = np.concatenate([np.ones(min(n, len(data.members))), np.zeros(min(n, len(data.nonmembers)))])
        return TrueClassScores(scores=target.predict(X).scores[np.arange(len(y)), y], truth=truth)


@dataclass(frozen=True, kw_only=True)
class TrueClassScores(Evidence):
    scores: np.ndarray
    truth: np.ndarray


@register_judge(TrueClassScores)
def _judge_true_class_scores(evidence, case):
    from sklearn.metrics import roc_curve

    s, truth = evidence.scores, evidence.truth
    fpr, tpr, _ = roc_curve(truth, s)
    auc = bootstrap_metric(
        _auc,
        s,
        truth,
        n_boot=200,
        seed=0,
        stratify=truth,
        description="membership AUC of the true-class score",
    )

    def tpr_at(f):
        ok = fpr <= f
        return float(tpr[ok].max()) if ok.any() else 0.0

    return AttackOutput(
        metrics={
            "auc": auc,
            "tpr_at_fpr_0.01": Metric(tpr_at(0.01)),
            "tpr_at_fpr_0.001": Metric(tpr_at(0.001)),
            "advantage": Metric(float(np.max(tpr - fpr))),
        },
        arrays={"roc_fpr": fpr, "roc_tpr": tpr},
    )
