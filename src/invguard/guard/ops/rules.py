"""Prometheus recording and alerting rules for the guard, generated from its SLOs.

Every series is labelled with the model served by joining on the guard's info metric
``invguard_guard_model_info{model,model_version}`` (``* on (job, instance) group_left (model,
model_version)``), so the rules and dashboards need no hard-coded model.

Recording rules (``invguard:<what>:<window>``):

- ``invguard:slo_errors:ratio_rate<w>{slo}`` for w in 5m, 30m, 1h, 6h, 3d: the bad fraction of each
  counter-based SLO (see :mod:`invguard.guard.slo`), the input of the burn-rate alerts;
- ``invguard:detections:rate5m{detector}``, ``invguard:requests:rate5m``,
  ``invguard:limit_violations:ratio_rate5m``, ``invguard:entropy_mean:1h`` and
  ``invguard:entropy_mean:baseline7d`` (the week before the last hour), ``invguard:incident_mttr:7d``.

Alerting rules, each with ``severity`` (page or ticket) and a ``runbook_url`` annotation (the
annotations template only labels, so ``promtool test rules`` can state them exactly):
query anomalies (any detection: ticket; sustained, over 1 per minute for 10 minutes: page), entropy drift
(the last hour's mean entropy of returned scores below half its 7-day baseline: ticket),
rate-limit violations above 0.1% of requests for 15 minutes (ticket; no client ids are exported, so
the share is of requests, not of clients), audit-log write failures (fidelity below 100%: page),
the guard not ready (page), open incidents older than the resolution SLO (page), a failed audit gate
(ticket), a canary version rolled back (page), and the SRE workbook's multi-window burn-rate
alerts per SLO (page: 1 h / 5 min above 14.4x or 6 h / 30 min above 6x; ticket: 3 d / 6 h above 1x,
scaled to the SLO window).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from invguard.guard.slo import ALERT_WINDOWS, SLOConfig, _win

JOIN = "* on (job, instance) group_left (model, model_version) invguard_guard_model_info"
BY = "model, model_version"
WINDOWS = ("5m", "30m", "1h", "6h", "3d")

# counter-based SLIs: (bad counter(s), total counter(s)); a total of two counters is their sum
SLI_COUNTERS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "high_confidence_rate": (
        ("invguard_guard_high_confidence_responses_total",),
        ("invguard_guard_response_entropy_nats_count",),
    ),
    "audit_fidelity": (
        ("invguard_guard_audit_write_failures_total",),
        ("invguard_guard_audit_records_written_total", "invguard_guard_audit_write_failures_total"),
    ),
    "limit_violation_rate": (
        ("invguard_guard_limit_violations_total",),
        ("invguard_guard_requests_total",),
    ),
}

RUNBOOK_FOR_SLI = {
    "high_confidence_rate": "suspected-inversion-probe",
    "audit_fidelity": "audit-log-integrity-failure",
    "limit_violation_rate": "key-compromise",
    "incident_resolution": "incident-overdue",
}

DEFAULT_SLOS = (
    SLOConfig(name="m2-high-confidence", sli="high_confidence_rate", objective=0.95),
    SLOConfig(name="audit-fidelity", sli="audit_fidelity", objective=1.0),
)


def rate(metric: str, window: str, by: str = BY, offset: str = "") -> str:
    """``sum by (model, model_version, ...) (rate(metric[window]) * <join on the info metric>)``."""
    off = f" offset {offset}" if offset else ""
    return f"sum by ({by}) (rate({metric}[{window}]{off}) {JOIN})"


def _sum(metrics: Sequence[str], window: str) -> str:
    return " + ".join(rate(m, window) for m in metrics)


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def build_rules(
    slos: Sequence[SLOConfig] = (),
    *,
    runbook_base: str,
    incident_threshold_hours: float | None = None,
) -> dict[str, Any]:
    """The rule file (a dict to dump as YAML) for ``slos`` (the defaults if none)."""
    slos = tuple(slos) or DEFAULT_SLOS
    base = runbook_base.rstrip("/")

    def runbook(name: str) -> str:
        return f"{base}/{name}.md"

    recording: list[dict[str, Any]] = []
    for slo in slos:
        if slo.sli not in SLI_COUNTERS:
            continue
        bad, total = SLI_COUNTERS[slo.sli]
        for w in WINDOWS:
            recording.append(
                {
                    "record": f"invguard:slo_errors:ratio_rate{w}",
                    "expr": f"({_sum(bad, w)}) / ({_sum(total, w)})",
                    "labels": {"slo": slo.name},
                }
            )
    recording += [
        {"record": "invguard:requests:rate5m", "expr": rate("invguard_guard_requests_total", "5m")},
        {
            "record": "invguard:detections:rate5m",
            "expr": rate("invguard_guard_detections_total", "5m", f"{BY}, detector"),
        },
        {
            "record": "invguard:limit_violations:ratio_rate5m",
            "expr": f"({rate('invguard_guard_limit_violations_total', '5m')}) / "
            f"({rate('invguard_guard_requests_total', '5m')})",
        },
        {
            "record": "invguard:entropy_mean:1h",
            "expr": f"({rate('invguard_guard_response_entropy_nats_sum', '1h')}) / "
            f"({rate('invguard_guard_response_entropy_nats_count', '1h')})",
        },
        {
            "record": "invguard:entropy_mean:baseline7d",
            "expr": f"({rate('invguard_guard_response_entropy_nats_sum', '7d', offset='1h')}) / "
            f"({rate('invguard_guard_response_entropy_nats_count', '7d', offset='1h')})",
        },
        {
            "record": "invguard:incident_mttr:7d",
            "expr": "sum by (model, model_version) "
            "(increase(invguard_incident_time_to_resolve_seconds_sum[7d])) / "
            "sum by (model, model_version) (increase(invguard_incident_time_to_resolve_seconds_count[7d]))",
        },
    ]

    thr_h = incident_threshold_hours
    if thr_h is None:
        thr_h = next((s.threshold_hours for s in slos if s.sli == "incident_resolution"), None) or 8.0
    alerts: list[dict[str, Any]] = [
        {
            "alert": "InvguardQueryAnomaly",
            "expr": "sum by (model, model_version, detector) (invguard:detections:rate5m) > 0",
            "labels": {"severity": "ticket"},
            "annotations": {
                "summary": "{{ $labels.detector }} flagged attack-like queries on {{ $labels.model }} "
                "{{ $labels.model_version }}",
                "description": "The guard opened (or grouped into) an incident. "
                "`invguard incidents list --state active` "
                "shows the incident and its clients.",
                "runbook_url": runbook("suspected-inversion-probe"),
            },
        },
        {
            "alert": "InvguardQueryAnomalySustained",
            "expr": "sum by (model, model_version, detector) (invguard:detections:rate5m) > 1 / 60",
            "for": "10m",
            "labels": {"severity": "page"},
            "annotations": {
                "summary": "Sustained attack-like queries on {{ $labels.model }} ({{ $labels.detector }})",
                "description": "More than one detection a minute for 10 minutes.",
                "runbook_url": runbook("suspected-inversion-probe"),
            },
        },
        {
            "alert": "InvguardEntropyDrift",
            "expr": "invguard:entropy_mean:1h < 0.5 * invguard:entropy_mean:baseline7d",
            "for": "15m",
            "labels": {"severity": "ticket"},
            "annotations": {
                "summary": "Returned scores on {{ $labels.model }} are far more confident than last week",
                "description": "Mean entropy over the last hour is below half its 7-day baseline: the model, "
                "its policy or the traffic changed.",
                "runbook_url": runbook("suspected-inversion-probe"),
            },
        },
        {
            "alert": "InvguardRateLimitViolations",
            "expr": "invguard:limit_violations:ratio_rate5m > 0.001",
            "for": "15m",
            "labels": {"severity": "ticket"},
            "annotations": {
                "summary": "Rate-limit and budget refusals above 0.1% of requests on {{ $labels.model }}",
                "description": "Many refusals: a client scripting past its limits, or a leaked key.",
                "runbook_url": runbook("key-compromise"),
            },
        },
        {
            "alert": "InvguardAuditLogWriteFailures",
            "expr": "sum by (model, model_version) "
            f"(increase(invguard_guard_audit_write_failures_total[5m]) {JOIN}) > 0",
            "labels": {"severity": "page"},
            "annotations": {
                "summary": "Audit log fidelity below 100% on {{ $labels.model }}",
                "description": "Audit records could not be written (those requests got 503, no prediction).",
                "runbook_url": runbook("audit-log-integrity-failure"),
            },
        },
        {
            "alert": "InvguardGuardNotReady",
            "expr": f"max by (model, model_version, instance) (invguard_guard_ready {JOIN}) == 0",
            "for": "5m",
            "labels": {"severity": "page"},
            "annotations": {
                "summary": "Guard {{ $labels.instance }} for {{ $labels.model }} not ready for 5 minutes",
                "description": "GET /readyz names the problem (audit log, model or rate-limit backend).",
                "runbook_url": runbook("audit-log-integrity-failure"),
            },
        },
        {
            "alert": "InvguardIncidentOverdue",
            "expr": "max by (model, model_version) (invguard_incidents_oldest_active_age_seconds) > "
            + _fmt(thr_h * 3600),
            "labels": {"severity": "page"},
            "annotations": {
                "summary": "A privacy incident on {{ $labels.model }} has been open more than "
                f"{thr_h:g} h",
                "description": "The resolution SLO is being missed: "
                "`invguard incidents list --state active`.",
                "runbook_url": runbook("incident-overdue"),
            },
        },
        {
            "alert": "InvguardAuditGateFailed",
            "expr": 'sum by (model, model_version) (invguard_incidents_active{source="audit"}) > 0',
            "labels": {"severity": "ticket"},
            "annotations": {
                "summary": "The latest audit of {{ $labels.model }} failed a privacy gate",
                "description": "An incident was opened from the audit history; the report says which gate.",
                "runbook_url": runbook("confirmed-leak"),
            },
        },
        {
            "alert": "InvguardCanaryRolledBack",
            "expr": 'sum by (model, model_version) (invguard_incidents_active{source="canary"}) > 0',
            "labels": {"severity": "page"},
            "annotations": {
                "summary": "Canary {{ $labels.model_version }} of {{ $labels.model }} was rolled back",
                "description": "It breached a privacy SLI against the stable version or failed its audit; "
                "every client gets the stable version: `invguard canary status`.",
                "runbook_url": runbook("canary-rolled-back"),
            },
        },
    ]
    for slo in slos:
        for sev in ("page", "ticket"):
            conds = []
            for s, lw, sw, frac in ALERT_WINDOWS:
                if s != sev:
                    continue
                thr = slo.burn_threshold(lw, frac)
                if slo.sli in SLI_COUNTERS:
                    lim = _fmt(thr * slo.budget)
                    conds.append(
                        f'(invguard:slo_errors:ratio_rate{_win(lw)}{{slo="{slo.name}"}} > {lim} and '
                        f'invguard:slo_errors:ratio_rate{_win(sw)}{{slo="{slo.name}"}} > {lim})'
                    )
                else:  # incident resolution: the guard's own burn-rate gauge, long window only
                    conds.append(
                        f'(invguard_slo_burn_rate{{slo="{slo.name}",window="{_win(lw)}"}} {JOIN})'
                        f" > {_fmt(thr)}"
                    )
            alerts.append(
                {
                    "alert": "InvguardSLOBurnRate" + ("Page" if sev == "page" else "Ticket"),
                    "expr": " or ".join(conds),
                    "labels": {"severity": sev, "slo": slo.name},
                    "annotations": {
                        "summary": f"SLO {slo.name} ({slo.sli}, objective {slo.objective:g}) is burning its "
                        "error budget on {{ $labels.model }}",
                        "description": "Multi-window burn-rate alert (SRE workbook ch. 5): "
                        + ("fast burn, the budget is gone in days" if sev == "page" else "slow burn"),
                        "runbook_url": runbook(RUNBOOK_FOR_SLI[slo.sli]),
                    },
                }
            )
    return {
        "groups": [
            {"name": "invguard-recording", "rules": recording},
            {"name": "invguard-alerts", "rules": alerts},
        ]
    }
