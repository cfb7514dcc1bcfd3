"""Gates: thresholds on reported metrics, evaluated on the results JSON alone.

A gate names ``family.name.metric`` (``membership.lira.tpr_at_fpr_0.001``: the attack is the first
two dotted parts, the metric name is the rest and may itself contain dots), a comparison, a
threshold, the bound compared (the point estimate or an end of its 95% CI) and a severity. A gate
whose metric is missing, or whose attack failed, is an error and fails like a violated gate: a
gate that cannot be checked must never read as a pass.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from invguard.audit.config import SEVERITIES, GateConfig

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    "<": operator.lt,
    ">=": operator.ge,
    ">": operator.gt,
    "==": operator.eq,
}


@dataclass(frozen=True)
class GateOutcome:
    """The outcome of one gate: ``status`` is ``pass``, ``fail`` or ``error`` (metric not available)."""

    gate: str
    attack: str
    metric: str
    op: str
    threshold: float
    bound: str
    severity: str
    status: str
    observed: float | None
    low: float | None
    high: float | None
    blocking: bool
    message: str

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _attack_entry(attacks: Sequence[Mapping[str, Any]], name: str) -> Mapping[str, Any] | None:
    """The main (un-swept) result of attack ``name`` in the results' ``attacks`` list."""
    for a in attacks:
        if a.get("attack") == name and not a.get("sweep"):
            return a
    return None


def evaluate_one(
    gate: GateConfig,
    metrics: Mapping[str, Any] | None,
    *,
    status: str = "ok",
    error: str | None = None,
    fail_on: str = "low",
) -> GateOutcome:
    """Check ``gate`` against one attack's metrics (the JSON form: ``{name: {value, low, high}}``)."""
    blocking = SEVERITIES.index(gate.severity) >= SEVERITIES.index(fail_on)
    base: dict[str, Any] = {
        "gate": gate.expression,
        "attack": gate.attack,
        "metric": gate.metric_name,
        "op": gate.op,
        "threshold": gate.threshold,
        "bound": gate.bound,
        "severity": gate.severity,
        "blocking": blocking,
    }
    if metrics is None:
        why = f"attack {gate.attack} {'failed: ' + error if error else 'did not run'}"
        return GateOutcome(
            **base, status="error", observed=None, low=None, high=None, message=f"cannot check: {why}"
        )
    if status != "ok":
        return GateOutcome(
            **base,
            status="error",
            observed=None,
            low=None,
            high=None,
            message=f"cannot check: attack {gate.attack} {status}: {error}",
        )
    m = metrics.get(gate.metric_name)
    if m is None:
        have = ", ".join(sorted(metrics)) or "none"
        return GateOutcome(
            **base,
            status="error",
            observed=None,
            low=None,
            high=None,
            message=f"cannot check: {gate.attack} reported no metric {gate.metric_name!r} "
            f"(it reports: {have})",
        )
    value, low, high = m.get("value"), m.get("low"), m.get("high")
    observed = {"value": value, "low": low, "high": high}[gate.bound]
    if observed is None or (isinstance(observed, float) and math.isnan(observed)):
        return GateOutcome(
            **base,
            status="error",
            observed=None,
            low=low,
            high=high,
            message=f"cannot check: {gate.metric} has no {gate.bound} (not computable)",
        )
    ok = _OPS[gate.op](float(observed), gate.threshold)
    what = "" if gate.bound == "value" else f" ({gate.bound} end of the 95% CI)"
    msg = (
        f"{gate.metric}{what} = {float(observed):.3g} "
        f"{'satisfies' if ok else 'violates'} {gate.op} {gate.threshold:g}"
    )
    return GateOutcome(
        **base, status="pass" if ok else "fail", observed=float(observed), low=low, high=high, message=msg
    )


def evaluate(
    gates: Sequence[GateConfig], attacks: Sequence[Mapping[str, Any]], *, fail_on: str = "low"
) -> list[GateOutcome]:
    """Evaluate every gate against the ``attacks`` entries of a results document."""
    out = []
    for g in gates:
        entry = _attack_entry(attacks, g.attack)
        if entry is None:
            out.append(evaluate_one(g, None, fail_on=fail_on))
        else:
            out.append(
                evaluate_one(
                    g,
                    entry.get("metrics", {}),
                    status=entry.get("status", "ok"),
                    error=entry.get("error"),
                    fail_on=fail_on,
                )
            )
    return out


def verdict(outcomes: Sequence[GateOutcome | Mapping[str, Any]]) -> dict[str, Any]:
    """The audit verdict in data and in words: passed iff no blocking gate failed or errored."""
    rows = [o.to_json() if isinstance(o, GateOutcome) else dict(o) for o in outcomes]
    failed = [r for r in rows if r["status"] != "pass"]
    blocking = [r for r in failed if r["blocking"]]
    passed = not blocking
    if not rows:
        words = "No gates were configured: the audit reports its measurements but checks nothing."
    elif passed and not failed:
        words = f"All {len(rows)} gate{'s' if len(rows) != 1 else ''} passed."
    elif passed:
        words = (
            f"Passed with warnings: {len(failed)} non-blocking gate{'s' if len(failed) != 1 else ''} "
            f"did not pass ({'; '.join(r['gate'] for r in failed)})."
        )
    else:
        listed = "; ".join(
            f"{r['gate']} ({r['severity']}{', not checkable' if r['status'] == 'error' else ''})"
            for r in blocking
        )
        words = f"{len(blocking)} of {len(rows)} gate{'s' if len(rows) != 1 else ''} failed: {listed}."
    return {
        "passed": passed,
        "summary": words,
        "gates_total": len(rows),
        "gates_passed": len(rows) - len(failed),
        "gates_failed": len(failed),
        "gates_blocking_failed": len(blocking),
    }
