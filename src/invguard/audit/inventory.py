"""The model inventory and the privacy decision checklist (``invguard inventory check``).

An inventory lists the organisation's models: owner, how sensitive the training data is, how big
the training set is (and whether its records are unique individuals), what the endpoint returns,
whether gradients are shared, and the mitigations in place. The checklist turns each entry into
the tests and mitigations privacy practice requires (after Fredrikson et al. 2015, Shokri et al.
2017, and the ICO/NIST guidance on model inversion):

1. sensitive data AND scores/logits/weights exposed -> model-inversion tests are required;
2. a small or unique training set -> differential-privacy training and inversion tests;
3. public data AND label-only answers -> monitoring suffices;
4. gradients shared (federated learning) -> a gradient-leakage test, and secure aggregation or DP.

A required test is satisfied by an audit of that model in the history store that ran an attack of
that family, passed its gates, and is not older than the maximum age. Anything required and
missing makes the check fail (exit code 1).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from invguard.configfile import read_yaml, validate

SENSITIVE = ("confidential", "sensitive", "special")
MITIGATIONS = ("dp_training", "output_policy", "monitoring", "secure_aggregation", "rate_limit")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelEntry(_Strict):
    name: str = Field(description="the model's key in the audit history (the audit's target name)")
    owner: str
    data_sensitivity: Literal["public", "internal", "confidential", "sensitive", "special"]
    training_set_size: int = Field(ge=1)
    unique_records: bool = Field(False, description="records are unique individuals or rare cases")
    returns: Literal["labels", "scores", "logits", "weights"]
    gradients_shared: bool = False
    mitigations: list[
        Literal["dp_training", "output_policy", "monitoring", "secure_aggregation", "rate_limit"]
    ] = Field(default_factory=list)
    max_audit_age_days: float | None = Field(None, gt=0)


class InventoryDefaults(_Strict):
    max_audit_age_days: float = Field(90, gt=0)
    small_training_set: int = Field(10_000, ge=1, description="below this many records a set is 'small'")


class Inventory(_Strict):
    version: Literal[1] = 1
    history: str = ".invguard/history.db"
    defaults: InventoryDefaults = Field(default_factory=InventoryDefaults)  # type: ignore[arg-type]
    models: list[ModelEntry] = Field(min_length=1)


@dataclass
class ModelCheck:
    name: str
    owner: str
    reasons: list[str] = field(default_factory=list)
    tests: list[str] = field(default_factory=list)
    mitigations: list[str] = field(default_factory=list)
    last_audit: str = "never"
    missing: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "ok": self.ok}


def load_inventory(path: str | Path) -> Inventory:
    p = Path(path)
    raw, text = read_yaml(p, "inventory file")
    inv = validate(Inventory, raw, source=str(p), what="inventory", text=text)
    if not Path(inv.history).is_absolute():
        inv = inv.model_copy(update={"history": str((p.parent / inv.history).resolve())})
    return inv


def requirements(m: ModelEntry, defaults: InventoryDefaults) -> tuple[list[str], list[str], list[str]]:
    """``(reasons, tests, mitigations)`` the checklist requires for one model.

    A mitigation written ``a|b`` is satisfied by either.
    """
    reasons: list[str] = []
    tests: list[str] = []
    mitigations: list[str] = []
    sensitive = m.data_sensitivity in SENSITIVE
    exposes = m.returns in ("scores", "logits", "weights")
    if sensitive and exposes:
        reasons.append(f"{m.data_sensitivity} data and the endpoint returns {m.returns}")
        tests.append("inversion")
    small = m.training_set_size < defaults.small_training_set
    if small or m.unique_records:
        why = (
            f"small training set ({m.training_set_size} < {defaults.small_training_set})"
            if small
            else "training records are unique individuals"
        )
        reasons.append(why)
        mitigations.append("dp_training")
        if "inversion" not in tests:
            tests.append("inversion")
    if m.data_sensitivity == "public" and m.returns == "labels" and not tests:
        reasons.append("public data and label-only answers: monitoring suffices")
        mitigations.append("monitoring")
    if m.gradients_shared:
        reasons.append(
            "gradients are shared (federated learning): clients' inputs can be rebuilt from updates"
        )
        mitigations.append("secure_aggregation|dp_training")
        tests.append("gradient")
    if not reasons:
        reasons.append("no checklist rule applies; an audit is still recommended")
    return reasons, tests, mitigations


def check(inv: Inventory, *, now: float | None = None) -> list[ModelCheck]:
    """Apply the checklist to every model and compare with the audit history and declared mitigations."""
    from invguard.audit.history import last_audit

    now = time.time() if now is None else now
    out = []
    for m in inv.models:
        reasons, tests, mitigations = requirements(m, inv.defaults)
        c = ModelCheck(m.name, m.owner, reasons, tests, mitigations)
        for need in mitigations:
            options = need.split("|")
            if not any(o in m.mitigations for o in options):
                c.missing.append(f"mitigation {' or '.join(options)} not in place")
        last = last_audit(Path(inv.history), m.name)
        max_age = m.max_audit_age_days or inv.defaults.max_audit_age_days
        if last is not None:
            age = (now - last["finished_at"]) / 86400
            c.last_audit = f"{age:.0f} days ago, {'passed' if last['passed'] else 'FAILED'}"
        if tests:
            if last is None:
                c.missing.append(f"no audit of {m.name!r} in the history store ({inv.history})")
            else:
                age = (now - last["finished_at"]) / 86400
                if age > max_age:
                    c.missing.append(f"last audit is {age:.0f} days old (older than {max_age:g} days)")
                families = {a.split(".")[0] for a in last["attacks"]}
                for t in tests:
                    if t not in families:
                        c.missing.append(f"the last audit ran no {t} attack")
                if not last["passed"]:
                    c.missing.append("the last audit failed its gates")
        out.append(c)
    return out
