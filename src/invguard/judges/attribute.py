"""The attribute judge: guessed sensitive values in, accuracy and advantage over no-model attackers out.

The headline advantage is over the strongest attacker that never queries the model (the marginal
guess, Fredrikson et al. 2014; imputation from public data, Jayaraman & Evans 2022), both built
here from the public split; the same advantage on non-members is the control that tells a
population rule from memorised training records.
"""

from __future__ import annotations

import numpy as np

from invguard.attacks.attribute.baseline import (
    SensitiveColumn,
    baseline_guess,
    correct_array,
    per_value_table,
)
from invguard.core.evidence import AttributeGuesses, BaselineGuesses, GuessedRecords
from invguard.core.result import Finding, Metric
from invguard.core.run import AttackOutput, Case
from invguard.judges.membership import run_seed_draw
from invguard.judges.registry import register_judge
from invguard.metrics.stats import bootstrap_metric

__all__ = ["advantage_metric", "judge_attribute", "judge_baseline", "strongest_baseline"]


@register_judge(AttributeGuesses)
def judge_attribute(ev: AttributeGuesses, case: Case) -> AttackOutput:
    """Reads ``baseline`` (``strongest``, ``marginal`` or ``imputation``) and ``n_boot`` from the attack."""
    seed = run_seed_draw(case.seed)
    pub = case.data.public
    col: SensitiveColumn = ev.column
    results: dict[str, dict[str, np.ndarray]] = {}
    for split, rec in (("members", ev.members), ("nonmembers", ev.nonmembers)):
        results[split] = {
            "truth": rec.truth,
            "map": rec.guess,
            "marginal": baseline_guess("marginal", col, pub, rec.X, rec.y, seed),
            "imputation": baseline_guess("imputation", col, pub, rec.X, rec.y, seed),
            "indices": rec.indices,
        }
    return _assemble(col, results, seed, case.attack.baseline, int(case.attack.n_boot))


@register_judge(BaselineGuesses)
def judge_baseline(ev: BaselineGuesses, case: Case) -> AttackOutput:
    """Accuracy of the no-model attacker itself, beside the marginal guess per value."""
    seed = run_seed_draw(case.seed)
    col: SensitiveColumn = ev.column
    rec: GuessedRecords = ev.members
    marginal = baseline_guess("marginal", col, case.data.public, rec.X, rec.y, seed)
    c = correct_array(rec.guess, rec.truth)
    acc = bootstrap_metric(
        np.mean,
        c,
        n_boot=int(case.attack.n_boot),
        seed=seed,
        description=f"{ev.method} baseline accuracy on members",
    )
    return AttackOutput(
        metrics={"accuracy": acc},
        tables={"per_value": per_value_table(col, rec.truth, rec.guess, marginal)},
        findings=[
            Finding(
                f"{col.name} inferred without the model",
                f"A {ev.method} attacker with public data only infers {col.name} of {c.size} training "
                f"records with accuracy {acc:.3f} (95% CI); model-based attacks are judged against this.",
                "info",
            )
        ],
        info={"records": int(c.size)},
    )


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


def strongest_baseline(truth: np.ndarray, guesses: dict[str, np.ndarray]) -> str:
    """The name of the no-model guess that is right most often on ``truth`` (ties: the first named)."""
    return max(guesses, key=lambda k: float(np.mean(correct_array(guesses[k], truth))))


def _assemble(
    col: SensitiveColumn, r: dict[str, dict[str, np.ndarray]], seed: int, baseline: str, n_boot: int
) -> AttackOutput:
    m, nm = r["members"], r["nonmembers"]
    base = baseline
    if base == "strongest":
        base = strongest_baseline(m["truth"], {k: m[k] for k in ("marginal", "imputation")})
    c_map, c_base, c_imp, c_marg = (
        correct_array(m[k], m["truth"]) for k in ("map", base, "imputation", "marginal")
    )
    n_map, n_base = correct_array(nm["map"], nm["truth"]), correct_array(nm[base], nm["truth"])
    nb, sd = n_boot, seed

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
            + (" (the stronger no-model attacker)" if baseline == "strongest" else ""),
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
