"""Model-based attribute inference (Fredrikson et al. 2014, "Privacy in Pharmacogenetics", and
Fredrikson et al. 2015, "Model Inversion Attacks that Exploit Confidence Information", Sec. 3).

The attacker knows a record's other features and its label ``y`` and wants the sensitive feature
``s``. For every candidate value ``v`` it queries the model on the record with ``s = v`` and picks

    argmax_v  log Pr(y | x_{s=v}) + log prior(v)

with ``Pr(y | x)`` the model's score for ``y`` (SCORES access) or, with labels only, the model's
confusion statistics ``Pr(true label = y | predicted label)`` measured on public data (Fredrikson
2014's label-only estimator). The prior is the sensitive column's distribution in the public split.
Continuous sensitive columns are binned into quantile bins of the public data; a guess is right when
it names the record's bin.

The figure that matters is the **advantage** over an attacker with no model access
(:mod:`invguard.attacks.attribute.baseline`); the imputation baseline (Jayaraman & Evans 2022, "Are
Attribute Inference Attacks Just Imputation?") and the same attack on non-members are reported as
controls, so a population-level correlation is not mistaken for a leak about the training records.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from invguard.attacks.attribute.baseline import (
    SensitiveColumn,
    baseline_guess,
    correct_array,
    per_value_table,
    sensitive_column,
    tabular_splits,
)
from invguard.attacks.base import ATTACKS, Attack, AttackOutput, RunContext
from invguard.core.access import Access
from invguard.core.errors import AccessError
from invguard.core.result import Finding, Metric
from invguard.core.target import Target
from invguard.metrics.stats import bootstrap_metric
from invguard.policies.base import probabilities


def map_guess(
    target: Target,
    col: SensitiveColumn,
    X: np.ndarray,
    y: np.ndarray,
    log_prior: np.ndarray,
    confusion: np.ndarray | None,
) -> np.ndarray:
    """Fredrikson's MAP estimate of the sensitive value index for each record (one query per value)."""
    n, v = X.shape[0], col.n_values
    queries = np.concatenate([col.substitute(X, k)[:, None] for k in range(v)], axis=1)  # (n, v, d)
    pred = target.predict(queries.reshape((n * v, *X.shape[1:])))
    if confusion is None:
        p = probabilities(pred)
        if p is None:
            raise AccessError(
                f"attribute inference with scores needs SCORES; the target answered {pred.access.name}"
            )
        like = np.asarray(p, dtype=np.float64)[np.arange(n * v), np.repeat(y, v)].reshape(n, v)
    else:
        like = confusion[pred.labels.reshape(n, v), y[:, None]]
    score = np.log(np.clip(like, 1e-12, None)) + log_prior[None, :]
    out: np.ndarray = np.argmax(score, axis=1)
    return out


def confusion_matrix(target: Target, X: np.ndarray, y: np.ndarray, classes: int) -> np.ndarray:
    """``C[predicted, true] = Pr(true | predicted)`` on public data, Laplace-smoothed."""
    pred = target.predict(X).labels
    c = np.ones((classes, classes))
    np.add.at(c, (pred, y), 1.0)
    out: np.ndarray = c / c.sum(axis=1, keepdims=True)
    return out


def advantage_metric(a: np.ndarray, b: np.ndarray, n_boot: int, seed: int, description: str) -> Metric:
    """Mean of ``a - b`` (paired per record) with a bootstrap CI."""
    return bootstrap_metric(
        lambda u, w: float(np.mean(u) - np.mean(w)), a, b, n_boot=n_boot, seed=seed, description=description
    )


def _gap_metric(member_diff: np.ndarray, nonmember_diff: np.ndarray, n_boot: int, seed: int) -> Metric:
    """Advantage on members minus advantage on non-members (two independent samples)."""
    diff = np.r_[member_diff, nonmember_diff]
    group = np.r_[np.ones(member_diff.size, np.int64), np.zeros(nonmember_diff.size, np.int64)]

    def stat(d: np.ndarray, g: np.ndarray) -> float:
        return float(np.mean(d[g == 1]) - np.mean(d[g == 0]))

    return bootstrap_metric(
        stat,
        diff,
        group,
        n_boot=n_boot,
        seed=seed,
        stratify=list(group),
        description="advantage on members minus on non-members (> 0: specific to the training records)",
    )


BASELINES = ("strongest", "marginal", "imputation")


def strongest_baseline(truth: np.ndarray, guesses: dict[str, np.ndarray]) -> str:
    """The name of the no-model guess that is right most often on ``truth`` (ties: the first named)."""
    return max(guesses, key=lambda k: float(np.mean(correct_array(guesses[k], truth))))


@ATTACKS.register("attribute.map")
@dataclass(frozen=True)
class AttributeInference(Attack):
    """Fredrikson-style MAP attribute inference on the members split, with controls.

    ``sensitive``: the column to infer (a key of the dataset's ``feature_groups``, e.g.
    ``marital-status`` or ``sex`` on Adult); ``bins``: quantile bins for a numeric column;
    ``use_scores``: use the model's scores when the target gives them (else its labels and a
    confusion matrix); ``baseline``: the no-model attacker the headline advantage is measured
    against, ``strongest`` (default: whichever of the two below infers more members correctly, so
    the headline never flatters), ``marginal`` (the public prior's mode, Fredrikson's baseline) or
    ``imputation`` (a classifier trained on the public split from the other features and the label;
    Jayaraman & Evans 2022); both advantages are always reported; ``max_records``: members
    (and as many non-members) attacked, sampled at random.
    """

    name: ClassVar[str] = "attribute.map"
    requires: ClassVar[Access] = Access.LABEL

    sensitive: str = "sex"
    bins: int = 5
    use_scores: bool = True
    baseline: str = "strongest"
    max_records: int = 1000
    n_boot: int = 1000

    def validate(self) -> list[str]:
        p = []
        if not self.sensitive:
            p.append("sensitive must name a column")
        if self.bins < 2:
            p.append(f"bins must be >= 2, got {self.bins}")
        if self.baseline not in BASELINES:
            p.append(f"baseline must be 'strongest', 'marginal' or 'imputation', got {self.baseline!r}")
        if self.max_records < 1:
            p.append(f"max_records must be >= 1, got {self.max_records}")
        if self.n_boot < 0:
            p.append(f"n_boot must be >= 0, got {self.n_boot}")
        return p

    def _run(self, target: Target, data: Any, rng: np.random.Generator, ctx: RunContext) -> AttackOutput:
        splits = tabular_splits(data, self.name)
        col = sensitive_column(splits, self.sensitive, self.bins, self.name)
        seed = int(rng.integers(2**31))
        pub = splits.public
        log_prior = np.log(col.prior(pub.X))
        scores_ok = self.use_scores and target.access >= Access.SCORES
        confusion = None if scores_ok else confusion_matrix(target, pub.X, pub.y, target.num_classes)

        results: dict[str, dict[str, np.ndarray]] = {}
        for split in ("members", "nonmembers"):
            s = getattr(splits, split)
            ix = np.sort(rng.permutation(len(s))[: min(self.max_records, len(s))])
            X, y = s.X[ix], s.y[ix]
            truth = col.value_of(X)
            results[split] = {
                "truth": truth,
                "map": map_guess(target, col, X, y, log_prior, confusion),
                "marginal": baseline_guess("marginal", col, pub, X, y, seed),
                "imputation": baseline_guess("imputation", col, pub, X, y, seed),
                "indices": s.indices[ix],
            }
        out = self._assemble(col, results, seed)
        out.info.update(
            {
                "sensitive": col.name,
                "kind": col.kind,
                "values": col.labels,
                "answers_used": "scores" if scores_ok else "labels (public confusion matrix)",
                "records": int(results["members"]["truth"].size),
            }
        )
        return out

    def _assemble(self, col: SensitiveColumn, r: dict[str, dict[str, np.ndarray]], seed: int) -> AttackOutput:
        m, nm = r["members"], r["nonmembers"]
        base = self.baseline
        if base == "strongest":
            base = strongest_baseline(m["truth"], {k: m[k] for k in ("marginal", "imputation")})
        c_map, c_base, c_imp, c_marg = (
            correct_array(m[k], m["truth"]) for k in ("map", base, "imputation", "marginal")
        )
        n_map, n_base = correct_array(nm["map"], nm["truth"]), correct_array(nm[base], nm["truth"])
        nb, sd = self.n_boot, seed

        def acc(c: np.ndarray, d: str) -> Metric:
            return bootstrap_metric(np.mean, c, n_boot=nb, seed=sd, description=d)

        metrics = {
            "accuracy": acc(c_map, f"share of members whose {col.name} the attack infers"),
            "baseline_accuracy": acc(c_base, f"same, for the {base} attacker with no model access"),
            "advantage": advantage_metric(
                c_map,
                c_base,
                nb,
                sd,
                f"accuracy minus the {base} baseline's, on members"
                + (" (the stronger no-model attacker)" if self.baseline == "strongest" else ""),
            ),
            "marginal_accuracy": acc(c_marg, "marginal baseline: the public prior's mode, no model"),
            "advantage_over_marginal": advantage_metric(
                c_map, c_marg, nb, sd, "accuracy minus the marginal baseline's, on members"
            ),
            "imputation_accuracy": acc(c_imp, "imputation baseline: a public-data classifier, no model"),
            "advantage_over_imputation": advantage_metric(
                c_map, c_imp, nb, sd, "accuracy minus the imputation baseline's, on members"
            ),
            "member_gap": _gap_metric(c_map - c_base, n_map - n_base, nb, sd),
            "nonmember_advantage": advantage_metric(
                n_map,
                n_base,
                nb,
                sd,
                f"control: the same advantage on non-members ({base} baseline)",
            ),
        }
        adv, ctrl, imp = (
            metrics["advantage"],
            metrics["nonmember_advantage"],
            metrics["advantage_over_imputation"],
        )
        detail = (
            f"Inferring {col.name} of {c_map.size} training records: accuracy "
            f"{metrics['accuracy']:.3f} vs {metrics['baseline_accuracy']:.3f} for the {base} "
            f"attacker without the model: advantage {adv:.3f}. Control on non-members: advantage "
            f"{ctrl:.3f}; over imputation from public data: {imp:.3f}; over the marginal guess: "
            f"{metrics['advantage_over_marginal']:.3f} (95% bootstrap CIs)."
        )
        gap = metrics["member_gap"]
        findings = []
        beyond_public = imp.low is not None and imp.low > 0
        if adv.low is not None and adv.low > 0 and beyond_public:
            about_members = gap.low is not None and gap.low > 0
            if about_members:
                why = (
                    f" Members are exposed more than non-members (gap {gap:.3f}): the model memorised "
                    "something about its training records."
                )
            else:
                why = (
                    f" Non-members are exposed as much (gap {gap:.3f}): the model reveals {col.name} through "
                    "what it learnt about the population, not about its training records, though more "
                    "sharply than public data alone."
                )
            findings.append(
                Finding(f"The model reveals {col.name}", detail + why, "high" if about_members else "medium")
            )
        else:
            findings.append(Finding(f"No {col.name} leak found", detail, "info"))
        return AttackOutput(
            metrics=metrics,
            tables={"per_value": per_value_table(col, m["truth"], m["map"], m[base])},
            arrays={
                "indices": m["indices"],
                "truth": m["truth"],
                "inferred": m["map"],
                "correct": c_map.astype(np.int64),
            },
            findings=findings,
            info={"baseline": base},
        )
