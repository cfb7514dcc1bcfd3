"""Three Grafana dashboards for the guard, generated in code with grafana-foundation-sdk.

- **executive**: leakage risk per model from the audit history (latest verdict and attack metrics,
  exported by the guard from ``incidents.history``), incidents opened and active, MTTR (M8), SLO
  error budgets and burn rates;
- **on-call**: live anomaly (detection) rate, top flagged clients and active mitigations,
  rate-limit violations, M2 rate, audit-log health and the active incidents (linking to the admin
  page);
- **debug**: entropy histograms by role, fields exposed per route, detections by detector,
  latency, upstream errors and the reconstruction (inversion) results of the latest audit.

Every dashboard is templated: a Prometheus ``datasource`` variable, ``model`` and ``version`` (from
``invguard_guard_model_info``) and ``role`` (from ``invguard_guard_requests_total``); no query names
a model or a role. Panels lay themselves out on the 24-column grid.
"""

from __future__ import annotations

import json
from typing import Any

from invguard.guard.ops.rules import BY

MODEL_SEL = 'model=~"$model", model_version=~"$version"'
JOIN = f"* on (job, instance) group_left (model, model_version) invguard_guard_model_info{{{MODEL_SEL}}}"
ROLE_SEL = 'role=~"$role"'


def _r(metric: str, window: str = "$__rate_interval", sel: str = "", by: str = BY) -> str:
    inner = f"{metric}{{{sel}}}" if sel else metric
    return f"sum by ({by}) (rate({inner}[{window}]) {JOIN})"


class _Layout:
    """Places panels left to right, wrapping at 24 columns."""

    def __init__(self) -> None:
        self.x = self.y = self.row_h = 0

    def place(self, w: int, h: int) -> Any:
        from grafana_foundation_sdk.models.dashboard import GridPos

        if self.x + w > 24:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        pos = GridPos(h=h, w=w, x=self.x, y=self.y)
        self.x += w
        self.row_h = max(self.row_h, h)
        return pos


def _query(expr: str, legend: str, ref: str, *, instant: bool = False) -> Any:
    from grafana_foundation_sdk.builders.prometheus import Dataquery

    q = Dataquery().expr(expr).legend_format(legend).ref_id(ref)
    return q.instant() if instant else q


def _panel(kind: str, title: str, queries: list[tuple[str, str]], unit: str, desc: str) -> Any:
    from grafana_foundation_sdk.builders import bargauge, heatmap, stat, table, timeseries
    from grafana_foundation_sdk.models.dashboard import DataSourceRef

    builders: dict[str, Any] = {
        "timeseries": timeseries.Panel,
        "stat": stat.Panel,
        "table": table.Panel,
        "heatmap": heatmap.Panel,
        "bargauge": bargauge.Panel,
    }
    p = (
        builders[kind]()
        .title(title)
        .description(desc)
        .datasource(DataSourceRef(type_val="prometheus", uid="$datasource"))
    )
    if kind not in ("heatmap",):
        p = p.unit(unit)
    for i, (expr, legend) in enumerate(queries):
        p = p.with_target(
            _query(expr, legend, chr(ord("A") + i), instant=kind in ("stat", "table", "bargauge"))
        )
    return p


def _variables(d: Any) -> Any:
    from grafana_foundation_sdk.builders.dashboard import DatasourceVariable, QueryVariable
    from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableRefresh, VariableSort

    ds = DataSourceRef(type_val="prometheus", uid="$datasource")
    d = d.with_variable(DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
    for name, label, query in (
        ("model", "Model", "label_values(invguard_guard_model_info, model)"),
        ("version", "Version", 'label_values(invguard_guard_model_info{model=~"$model"}, model_version)'),
        ("role", "Role", "label_values(invguard_guard_requests_total, role)"),
    ):
        d = d.with_variable(
            QueryVariable(name)
            .label(label)
            .query(query)
            .datasource(ds)
            .multi(True)
            .include_all(True)
            .all_value(".*")
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(VariableSort.ALPHABETICAL_ASC)
        )
    return d


# (kind, title, [(expr, legend)], unit, description, width, height)
PanelSpec = tuple[str, str, list[tuple[str, str]], str, str, int, int]


def _executive() -> list[PanelSpec]:
    lbl = "{{model}} {{model_version}}"
    return [
        (
            "stat",
            "Latest audit verdict",
            [('max by (model) (invguard_audit_passed{model=~"$model"})', "{{model}}")],
            "bool_yes_no",
            "1 when the latest audit of the model passed every gate (from the audit history).",
            6,
            5,
        ),
        (
            "table",
            "Leakage risk per model (latest audit)",
            [
                (
                    'max by (model, attack, metric) (invguard_audit_metric_value{model=~"$model", '
                    'metric=~"attack_accuracy|auc|tpr_at_fpr_0.01|advantage|lift_over_prior"})',
                    "{{model}} {{attack}} {{metric}}",
                )
            ],
            "percentunit",
            "The headline metric of each attack of the latest audit run.",
            18,
            8,
        ),
        (
            "stat",
            "Active incidents",
            [(f"sum by ({BY}) (invguard_incidents_active{{{MODEL_SEL}}})", lbl)],
            "short",
            "Privacy incidents open or acknowledged.",
            6,
            5,
        ),
        (
            "timeseries",
            "Incidents opened",
            [(f"sum by ({BY}) (increase(invguard_incidents_opened_total{{{MODEL_SEL}}}[1d]))", lbl)],
            "short",
            "Incidents opened per day.",
            9,
            8,
        ),
        (
            "timeseries",
            "MTTR (M8), 7 days",
            [(f"invguard:incident_mttr:7d{{{MODEL_SEL}}}", lbl)],
            "s",
            "Mean time from an incident's opening to its resolution over the last 7 days.",
            9,
            8,
        ),
        (
            "bargauge",
            "SLO error budget left",
            [(f"invguard_slo_error_budget_remaining {JOIN}", "{{slo}} {{model}}")],
            "percentunit",
            "Fraction of each privacy SLO's error budget left over its window.",
            12,
            8,
        ),
        (
            "timeseries",
            "SLO burn rate (1 h)",
            [(f'invguard_slo_burn_rate{{window="1h"}} {JOIN}', "{{slo}} {{model}}")],
            "short",
            "Burn rate over the last hour; 14.4 pages (2% of a 30-day budget in an hour).",
            12,
            8,
        ),
    ]


def _oncall() -> list[PanelSpec]:
    return [
        (
            "timeseries",
            "Anomaly rate (detections/s)",
            [
                (
                    _r("invguard_guard_detections_total", sel=ROLE_SEL, by=f"{BY}, detector"),
                    "{{detector}} {{model}}",
                )
            ],
            "reqps",
            "Detections of attack-like query patterns, by detector.",
            12,
            8,
        ),
        (
            "stat",
            "Flagged clients",
            [(f"max by ({BY}) (invguard_guard_flagged_clients {JOIN})", "{{model}}")],
            "short",
            "Clients with a detection whose mitigation is in force; the admin page lists them.",
            6,
            8,
        ),
        (
            "bargauge",
            "Active mitigations",
            [(f"sum by ({BY}, action) (invguard_guard_mitigations_active {JOIN})", "{{action}}")],
            "short",
            "Mitigations in force by action (tighten, throttle, block).",
            6,
            8,
        ),
        (
            "timeseries",
            "Rate-limit and budget refusals (M6)",
            [(_r("invguard_guard_limit_violations_total", sel=ROLE_SEL, by=f"{BY}, kind"), "{{kind}}")],
            "reqps",
            "Requests refused by a rate limit or a query budget.",
            8,
            8,
        ),
        (
            "timeseries",
            "High-confidence answers (M2)",
            [
                (
                    f"{_r('invguard_guard_high_confidence_responses_total', sel=ROLE_SEL)} / "
                    f"{_r('invguard_guard_response_entropy_nats_count', sel=ROLE_SEL)}",
                    "{{model}}",
                )
            ],
            "percentunit",
            "Share of rows answered with scores of very low entropy.",
            8,
            8,
        ),
        (
            "timeseries",
            "Audit log (M7)",
            [
                (_r("invguard_guard_audit_records_written_total"), "written {{model}}"),
                (_r("invguard_guard_audit_write_failures_total"), "failed {{model}}"),
            ],
            "reqps",
            "Records fsynced vs records that could not be written.",
            8,
            8,
        ),
        (
            "table",
            "Active incidents",
            [
                (
                    f"sum by ({BY}, state, severity, source) (invguard_incidents_active{{{MODEL_SEL}}})",
                    "{{state}} {{severity}} {{source}}",
                )
            ],
            "short",
            "Open and acknowledged incidents; act on them from the guard's /admin page or "
            "`invguard incidents list`.",
            24,
            7,
        ),
    ]


def _debug() -> list[PanelSpec]:
    return [
        (
            "heatmap",
            "Entropy of returned scores",
            [
                (
                    "sum by (le) (rate(invguard_guard_response_entropy_nats_bucket"
                    f"{{{ROLE_SEL}}}[$__rate_interval]) {JOIN})",
                    "{{le}}",
                )
            ],
            "short",
            "Histogram of the Shannon entropy (nats) of each returned score vector.",
            12,
            9,
        ),
        (
            "timeseries",
            "Fields exposed per route (M4)",
            [
                (
                    _r("invguard_guard_sensitive_fields_total", sel=ROLE_SEL, by=f"{BY}, route, field"),
                    "{{route}} {{field}}",
                )
            ],
            "reqps",
            "Responses exposing more than a label (scores, logits), by route and field.",
            12,
            9,
        ),
        (
            "timeseries",
            "Detections by detector",
            [
                (
                    _r("invguard_guard_detections_total", sel=ROLE_SEL, by=f"{BY}, detector, role"),
                    "{{detector}} {{role}}",
                )
            ],
            "reqps",
            "Detector firings by detector and role.",
            12,
            8,
        ),
        (
            "timeseries",
            "Latency p99",
            [
                (
                    "histogram_quantile(0.99, sum by (le, route) "
                    f"(rate(invguard_guard_request_seconds_bucket[$__rate_interval]) {JOIN}))",
                    "{{route}}",
                )
            ],
            "s",
            "99th percentile of the time to answer, audit fsync included.",
            6,
            8,
        ),
        (
            "timeseries",
            "Upstream errors",
            [(_r("invguard_guard_upstream_errors_total", by=f"{BY}, kind"), "{{kind}}")],
            "reqps",
            "Upstream model failures by kind.",
            6,
            8,
        ),
        (
            "table",
            "Reconstruction tests (latest audit)",
            [
                (
                    'max by (model, attack, exposure, metric) (invguard_audit_metric_value{model=~"$model", '
                    'attack=~"inversion.*"})',
                    "{{attack}} {{exposure}} {{metric}}",
                )
            ],
            "short",
            "Model-inversion results of the latest audit run, per exposure.",
            24,
            8,
        ),
    ]


DASHBOARDS = {
    "executive": ("invguard-executive", "invguard / executive", _executive),
    "oncall": ("invguard-oncall", "invguard / on-call", _oncall),
    "debug": ("invguard-debug", "invguard / debug", _debug),
}


def build_dashboard(name: str) -> dict[str, Any]:
    """One dashboard as Grafana JSON (a dict)."""
    from grafana_foundation_sdk.builders.dashboard import Dashboard
    from grafana_foundation_sdk.cog.encoder import JSONEncoder

    uid, title, panels = DASHBOARDS[name]
    d = (
        Dashboard(title)
        .uid(uid)
        .tags(["invguard", "privacy", name])
        .refresh("30s")
        .time("now-6h", "now")
        .timezone("utc")
    )
    d = _variables(d)
    layout = _Layout()
    for kind, ptitle, queries, unit, desc, w, h in panels():
        d = d.with_panel(_panel(kind, ptitle, queries, unit, desc).grid_pos(layout.place(w, h)))
    doc: dict[str, Any] = json.loads(json.dumps(d.build(), cls=JSONEncoder))
    return doc
