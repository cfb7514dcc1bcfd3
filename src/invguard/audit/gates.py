"""Gates: thresholds on reported metrics, evaluated on the results JSON alone.

A gate names ``family.name.metric`` (``membership.lira.tpr_at_fpr_0.001``: the attack is the first
two dotted parts, the metric name is the rest and may itself contain dots), a comparison, a
threshold, what it decides on and a severity.

A gate decides on the **conservative side of the metric's 95% CI** by default (``on: bound``): a
``<=`` gate passes only when the upper end satisfies it and fails when even the lower end violates
it; an interval that straddles the threshold is **inconclusive**, never a pass, and the outcome says
roughly how much more data would settle it (a CI's width shrinks as one over the square root of the
sample size). ``on: estimate`` decides on the point estimate (the outcome still says when its CI
straddles). A metric reported without a CI is decided on its estimate, and the message says so.

A TPR at an FPR below the smallest step the non-member count allows (1/n) cannot be measured: a
gate on it is inconclusive at that sample size. A gate whose metric is missing, or whose attack
failed, is an error; neither an inconclusive gate nor an error ever reads as a pass.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from invguard.audit.config import SEVERITIES, GateConfig
from invguard.core.result import GateOutcome

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    "<": operator.lt,
    ">=": operator.ge,
    ">": operator.gt,
    "==": operator.eq,
}
_TPR_AT_FPR = re.compile(r"^tpr_at_fpr_([0-9.eE-]+)$")
STATUSES = ("pass", "fail", "inconclusive", "error")


def _attack_entry(attacks: Sequence[Mapping[str, Any]], name: str) -> Mapping[str, Any] | None:
    """The main (un-swept) result of attack ``name`` in the results' ``attacks`` list."""
    for a in attacks:
        if a.get("attack") == name and not a.get("sweep"):
            return a
    return None


def _finite(x: Any) -> float | None:
    if x is None or isinstance(x, bool):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def nonmember_count(info: Mapping[str, Any] | None) -> int | None:
    """How many non-members a membership result scored (``info.candidates - info.members``)."""
    if not info:
        return None
    if isinstance(info.get("nonmembers"), int):
        return int(info["nonmembers"])
    c, m = info.get("candidates"), info.get("members")
    if isinstance(c, int) and isinstance(m, int) and c > m:
        return c - m
    return None


def fpr_resolution(metric_name: str, info: Mapping[str, Any] | None) -> tuple[float, int] | None:
    """``(alpha, n)`` when ``metric_name`` is a TPR at FPR ``alpha`` below 1/n, the smallest FPR step
    that ``n`` non-members allow: such a TPR is not measurable at this sample size."""
    m = _TPR_AT_FPR.match(metric_name)
    if m is None:
        return None
    try:
        alpha = float(m.group(1))
    except ValueError:
        return None
    n = nonmember_count(info)
    if n is None or alpha * n >= 1:
        return None
    return alpha, n


def _settle(value: float, low: float, high: float, op: str, thr: float, n: int | None) -> str:
    """How much more data would move the interval to one side of the threshold, if the estimate held."""
    if value == thr:
        return "the estimate sits on the threshold: more data narrows the interval but cannot settle it"
    # the arm of the interval that crosses the threshold must shrink to the gap
    arm = (high - value) if value < thr else (value - low)
    gap = abs(thr - value)
    factor = (arm / gap) ** 2 if gap > 0 else math.inf
    if not math.isfinite(factor) or factor <= 1:
        return "a somewhat larger sample would settle it"
    more = f" (about {math.ceil(n * factor):,} records instead of {n:,})" if n else ""
    return f"about {factor:.1f}x as much data{more} would settle it, if the estimate holds"


def _sample_size(info: Mapping[str, Any] | None) -> int | None:
    c = (info or {}).get("candidates")
    return int(c) if isinstance(c, int) and c > 0 else None


def evaluate_one(
    gate: GateConfig,
    metrics: Mapping[str, Any] | None,
    *,
    status: str = "ok",
    error: str | None = None,
    fail_on: str = "low",
    info: Mapping[str, Any] | None = None,
) -> GateOutcome:
    """Check ``gate`` against one attack's metrics (the JSON form: ``{name: {value, low, high}}``);
    ``info`` is the attack's ``info`` (its sample sizes)."""
    blocking = SEVERITIES.index(gate.severity) >= SEVERITIES.index(fail_on)
    base: dict[str, Any] = {
        "gate": gate.expression,
        "attack": gate.attack,
        "metric": gate.metric_name,
        "op": gate.op,
        "threshold": gate.threshold,
        "on": gate.on,
        "severity": gate.severity,
        "blocking": blocking,
    }
    empty: dict[str, Any] = {"observed": None, "low": None, "high": None}
    if metrics is None:
        why = f"attack {gate.attack} {'failed: ' + error if error else 'did not run'}"
        return GateOutcome(**base, **empty, status="error", message=f"cannot check: {why}")
    if status != "ok":
        return GateOutcome(
            **base, **empty, status="error", message=f"cannot check: attack {gate.attack} {status}: {error}"
        )
    m = metrics.get(gate.metric_name)
    if m is None:
        have = ", ".join(sorted(metrics)) or "none"
        return GateOutcome(
            **base,
            **empty,
            status="error",
            message=f"cannot check: {gate.attack} reported no metric {gate.metric_name!r} "
            f"(it reports: {have})",
        )
    value, low, high = _finite(m.get("value")), _finite(m.get("low")), _finite(m.get("high"))
    seen: dict[str, Any] = {"observed": value, "low": low, "high": high}
    if value is None:
        return GateOutcome(
            **base, **seen, status="error", message=f"cannot check: {gate.metric} is not computable"
        )
    res = fpr_resolution(gate.metric_name, info)
    if res is not None:
        alpha, n = res
        need = math.ceil(1 / alpha)
        return GateOutcome(
            **base,
            **seen,
            status="inconclusive",
            decided_on=None,
            message=f"{gate.metric} is not measurable at this sample size: {n} non-members allow no "
            f"FPR below 1/{n} = {1 / n:.2g}, so a TPR at FPR {alpha:g} cannot be told from one at FPR "
            f"{1 / n:.2g}",
            settle=f"at least {need:,} non-members would make it measurable",
        )
    op, thr = _OPS[gate.op], gate.threshold
    ci = "" if low is None or high is None else f" [{low:.3g}, {high:.3g}]"
    straddles = low is not None and high is not None and op(low, thr) != op(high, thr)
    if gate.on == "estimate" or low is None or high is None:
        ok = op(value, thr)
        why = (
            " (no 95% CI reported: decided on the estimate)"
            if low is None or high is None
            else " (decided on the estimate, as the gate asks; its 95% CI straddles the threshold)"
            if straddles
            else ""
        )
        return GateOutcome(
            **base,
            **seen,
            status="pass" if ok else "fail",
            decided_on="estimate",
            message=f"{gate.metric} = {value:.3g}{ci} {'satisfies' if ok else 'violates'} "
            f"{gate.op} {thr:g}{why}",
        )
    # the conservative end: the one nearer to violating the gate
    if gate.op in ("<=", "<"):
        worst, best, worst_name = high, low, "high"
    elif gate.op in (">=", ">"):
        worst, best, worst_name = low, high, "low"
    else:  # ==: the whole interval must sit on the threshold
        worst, best, worst_name = (high if abs(high - thr) >= abs(low - thr) else low), value, "both"
    assert worst is not None and best is not None
    if gate.op == "==":
        ok, bad = (low == thr == high), not (low <= thr <= high)
    else:
        ok, bad = op(worst, thr), not op(best, thr)
    if ok or bad:
        end = "upper" if worst_name == "high" else "lower" if worst_name == "low" else "whole"
        what = f"the {end} end of its 95% CI" if ok else "its whole 95% CI"
        return GateOutcome(
            **base,
            **seen,
            status="pass" if ok else "fail",
            decided_on=worst_name if ok else ("low" if worst_name == "high" else "high"),
            message=f"{gate.metric} = {value:.3g}{ci}: {what} "
            f"{'satisfies' if ok else 'violates'} {gate.op} {thr:g}",
        )
    settle = _settle(value, low, high, gate.op, thr, _sample_size(info))
    return GateOutcome(
        **base,
        **seen,
        status="inconclusive",
        decided_on=worst_name,
        message=f"{gate.metric} = {value:.3g}{ci}: the interval straddles {gate.op} {thr:g}, so the "
        "data cannot tell whether the gate holds",
        settle=settle,
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
                    info=entry.get("info"),
                )
            )
    return out


# ---------------------------------------------------------------------------- the verdict
_FINDING_SEVERITIES = ("low", "medium", "high", "critical")


def notable_findings(attacks: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The findings of severity low or above of the attacks run as deployed, worst first."""
    out = []
    for a in attacks:
        if a.get("sweep") or a.get("status") != "ok":
            continue
        for f in a.get("findings", []):
            if f.get("severity") in _FINDING_SEVERITIES:
                out.append({"attack": a["attack"], **f})
    out.sort(key=lambda f: -_FINDING_SEVERITIES.index(f["severity"]))
    return out


_UNFINISHED = {
    "budget_exhausted": "budget exhausted, partial",
    "target_error": "the target stopped answering",
    "crashed": "crashed",
    "error": "failed",
}


def unfinished(jobs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The attack jobs that did not finish, and why (budget exhausted, target gone, crashed)."""
    return [
        {
            "job": j.get("job"),
            "attack": j.get("attack"),
            "exposure": j.get("exposure"),
            "status": j["status"],
            "why": _UNFINISHED[j["status"]],
        }
        for j in jobs
        if j.get("status") in _UNFINISHED
    ]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def findings_count(findings: Sequence[Mapping[str, Any]]) -> str:
    """``"1 medium, 2 low findings"``; ``"no findings"`` for none."""
    if not findings:
        return "no findings"
    counts = [
        f"{sum(1 for f in findings if f['severity'] == s)} {s}"
        for s in reversed(_FINDING_SEVERITIES)
        if any(f["severity"] == s for f in findings)
    ]
    return f"{', '.join(counts)} finding{'' if len(findings) == 1 else 's'}"


def findings_phrase(findings: Sequence[Mapping[str, Any]]) -> str:
    """``"1 medium finding: Training membership is exposed (membership.lira)"``; ``"no findings"``."""
    if not findings:
        return findings_count(findings)
    listed = "; ".join(f"{f['title']} ({f['attack']})" for f in findings[:3])
    more = f"; and {len(findings) - 3} more" if len(findings) > 3 else ""
    return f"{findings_count(findings)}: {listed}{more}"


def verdict(
    outcomes: Sequence[GateOutcome | Mapping[str, Any]],
    findings: Sequence[Mapping[str, Any]] = (),
    incomplete: Sequence[Mapping[str, Any]] = (),
    endpoint_changed: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The audit verdict in data and in words: it passes iff every blocking gate passed and the
    endpoint answered the same way throughout (``endpoint_changed`` is None; otherwise a pass
    becomes inconclusive and its message leads the headline).

    ``headline`` summarises gates and findings together (``"PASS: 7 of 7 gates pass; 1 medium
    finding: ..."``) so the top of a report never contradicts its body."""
    rows = [o.to_json() if isinstance(o, GateOutcome) else dict(o) for o in outcomes]
    by = {s: [r for r in rows if r["status"] == s] for s in STATUSES}
    blocking = [r for r in rows if r["status"] != "pass" and r["blocking"]]
    passed = not blocking and endpoint_changed is None
    if passed:
        status = "pass"
    elif not blocking:
        status = "inconclusive"
    elif any(r["status"] in ("fail", "error") for r in blocking):
        status = "fail"
    else:
        status = "inconclusive"
    n = len(rows)
    if not rows:
        gates_text = "no gates configured (the audit measures but checks nothing)"
    else:
        parts = [f"{len(by['pass'])} of {_plural(n, 'gate')} pass"]
        for s, word in (("fail", "failed"), ("inconclusive", "inconclusive"), ("error", "not checkable")):
            if by[s]:
                nb = [r for r in by[s] if not r["blocking"]]
                tail = f", {len(nb)} of them non-blocking" if nb else ""
                parts.append(f"{len(by[s])} {word}{tail} ({'; '.join(r['gate'] for r in by[s])})")
        gates_text = "; ".join(parts)
    changed = "" if endpoint_changed is None else f"{endpoint_changed['message']}; "
    headline = f"{status.upper()}: {changed}{gates_text}; {findings_phrase(findings)}"
    if incomplete:

        def where(j: Mapping[str, Any]) -> str:
            at = j.get("exposure")
            return str(j["attack"]) + ("" if at in (None, "as deployed") else f" @ {at}")

        listed = "; ".join(f"{where(j)}: {j['why']}" for j in incomplete[:4])
        more = f"; and {len(incomplete) - 4} more" if len(incomplete) > 4 else ""
        headline += f"; {_plural(len(incomplete), 'attack')} did not finish ({listed}{more})"
    return {
        "passed": passed,
        "status": status,
        "headline": headline,
        "gates_summary": gates_text,
        "findings_summary": findings_count(findings),
        "summary": headline,
        "gates_total": n,
        "gates_passed": len(by["pass"]),
        "gates_failed": len(by["fail"]),
        "gates_inconclusive": len(by["inconclusive"]),
        "gates_error": len(by["error"]),
        "gates_blocking_failed": len(blocking),
        "findings": [dict(f) for f in findings],
        "incomplete": [dict(j) for j in incomplete],
        "endpoint_changed": None if endpoint_changed is None else dict(endpoint_changed),
    }
