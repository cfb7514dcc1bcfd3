"""The exposure sweep: one attack across access levels and output policies.

It answers the question the product exists for: *what may this API return?* For each exposure
(white-box, logits, scores, top-3, rounded to 2 decimals, label only, and any configured policy)
the target is wrapped in that policy and attacked; where the attack needs more access than the
exposure grants, the strongest attack of its family allowed there runs instead (by the attacks'
declared ``strength``; the row says which), chosen by the access the policy *leaves* (its declared
``leaves``: top-1 scores leave only the label).
Each row also gives the model's utility under the policy: test accuracy of the labels it returns
and, for policies that alter scores, how often the returned scores' argmax agrees with the raw one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from invguard.attacks.base import Attack, RunContext, for_sweep
from invguard.attacks.base import substitute as base_substitute
from invguard.core.access import Access
from invguard.core.errors import ConfigError
from invguard.core.target import Target
from invguard.metrics.utility import exposure_utility

#: the standard exposures: (name, policy spec); ``None`` is the white-box target itself
DEFAULT_EXPOSURES: tuple[tuple[str, Any], ...] = (
    ("whitebox", None),
    ("logits", "identity"),
    ("scores", "scores"),
    ("top-3", "top_k=3"),
    ("rounded-2", "round=2"),
    ("label", "label_only"),
)


def _exposures(exposures: Sequence[Any] | None, policies: Sequence[Any]) -> list[tuple[str, Any]]:
    from invguard.policies.base import OutputPolicy, parse

    items = list(DEFAULT_EXPOSURES if exposures is None else exposures) + list(policies)
    out: list[tuple[str, Any]] = []
    for i, item in enumerate(items):
        if isinstance(item, tuple) and len(item) == 2:
            name, spec = item
        elif isinstance(item, OutputPolicy):
            name, spec = item.label(), item
        elif isinstance(item, str) and item.strip().lower() == "whitebox":
            name, spec = "whitebox", None
        else:
            name, spec = str(item), item
        out.append((str(name), None if spec is None else parse(spec, f"exposures[{i}]")))
    return out


def substitute(
    attack: Attack, access: Access, fallbacks: Mapping[str, Attack] | None = None
) -> Attack | None:
    """``attack`` if ``access`` allows it, else the strongest allowed attack of its family: the one
    configured in ``fallbacks`` under that name, or built by :func:`invguard.attacks.base.substitute`."""
    chosen = base_substitute(attack, access)
    if chosen is not None and chosen is not attack and fallbacks and chosen.name in fallbacks:
        return fallbacks[chosen.name]
    return chosen


def _utility(raw: Target, exposed: Target, splits: Any) -> tuple[float, float]:
    X, y = splits.nonmembers.X, splits.nonmembers.y
    u = exposure_utility(y, raw.predict(X), exposed.predict(X))
    return u["utility"], u["argmax_agreement"]


def exposure_sweep(
    attack: Attack,
    target: Target,
    splits: Any,
    exposures: Sequence[Any] | None = None,
    *,
    policies: Sequence[Any] = (),
    fallbacks: Mapping[str, Attack] | None = None,
    seed: int = 0,
    context: RunContext | None = None,
    role_swap: bool = False,
) -> list[dict[str, Any]]:
    """Run ``attack`` (or its strongest allowed substitute) at every exposure; one row per exposure.

    ``target`` is the raw model (white-box for the ``whitebox`` exposure; an exposure that asks for
    more access than it grants is reported as not run). ``exposures`` defaults to white-box, logits,
    scores, top-3, rounded-2 and label only; ``policies`` adds configured output policies (any
    form :func:`invguard.policies.parse` reads). ``role_swap=False`` skips the role-swap control in
    each run (the sweep compares exposures; run the attack alone for the leak verdict).
    Rows: exposure, access, attack, substituted_for, attack_accuracy (+ _low/_high), knn_distance,
    utility (test accuracy of the returned labels), argmax_agreement, queries.
    """
    if not isinstance(attack, Attack):
        raise ConfigError(f"exposure_sweep: attack must be an Attack instance, got {type(attack).__name__}")
    rows: list[dict[str, Any]] = []
    for name, policy in _exposures(exposures, policies):
        exposed = target if policy is None else policy.wrap(target)
        access = exposed.access if policy is not None or target.access >= Access.WHITEBOX else None
        row: dict[str, Any] = {"exposure": name, "access": exposed.access.name}
        if access is None:
            rows.append({**row, "attack": None, "note": f"the target grants only {target.access.name}"})
            continue
        if policy is not None and policy.leaves < access:
            access = policy.leaves
            row["note"] = f"{policy.label()} leaves only {access.name.lower()} access: attacked as such"
        chosen = substitute(attack, access, fallbacks)
        if chosen is None:
            rows.append({**row, "attack": None, "note": "no inversion attack runs at this access"})
            continue
        substituted = chosen is not attack
        if not role_swap:
            chosen = for_sweep(chosen)
        result = chosen.run(exposed, splits, seed=seed, context=context)
        acc = result.metric("attack_accuracy")
        utility, agreement = _utility(target, exposed, splits)
        rows.append(
            {
                **row,
                "policy": "whitebox" if policy is None else policy.label(),
                "attack": chosen.name,
                "substituted_for": attack.name if substituted else None,
                "attack_accuracy": acc.value,
                "attack_accuracy_low": acc.low,
                "attack_accuracy_high": acc.high,
                "knn_distance": result.metric("knn_distance").value,
                "baseline_prior_accuracy": result.metric("baseline_prior_accuracy").value,
                "utility": utility,
                "argmax_agreement": agreement,
                "queries": result.queries_used,
                "queries_per_class": result.info.get("queries_per_class"),
            }
        )
    return rows
