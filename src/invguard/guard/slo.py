"""Privacy SLOs with error budgets and multi-window burn rates, evaluated from the guard's own counters.

An SLO says which fraction of events must be good over a window (30 days by default)::

    slos:
      - {name: m2-high-confidence, sli: high_confidence_rate, objective: 0.95}   # M2 < 5% of rows
      - {name: audit-fidelity, sli: audit_fidelity, objective: 1.0}              # every record written
      - {name: mttr, sli: incident_resolution, objective: 0.9, threshold_hours: 8}

SLIs (bad / total events):

- ``high_confidence_rate`` (M2): rows answered with scores of entropy below the threshold / rows
  answered with scores;
- ``audit_fidelity`` (M7): audit records that could not be written / records attempted;
- ``limit_violation_rate`` (M6): requests refused by a rate limit or budget / requests;
- ``incident_resolution`` (M8): incidents resolved later than ``threshold_hours`` (or still open
  past it) / incidents due, read from the incident store.

The **error budget** is ``1 - objective``; the **burn rate** over a window is the window's bad
fraction divided by the budget (1 = spending it exactly over the SLO window). Alerts follow the
multi-window, multi-burn-rate recipe of the SRE workbook (Beyer et al., *The Site Reliability
Workbook*, ch. 5, "Alerting on SLOs"): page when 2% of the budget burns in 1 h (burn 14.4 for a 30-day
window) or 5% in 6 h (burn 6), each confirmed by the short window of 1/12 its length (5 min, 30
min) so the alert stops soon after the problem does; open a ticket when 10% burns in 3 days (burn 1,
short window 6 h). The factors scale with the SLO's window. Incidents being rare, the
incident-resolution SLO is judged on the long windows alone. The exported rules of
:mod:`invguard.guard.ops` compute the same burn rates in PromQL from the raw counters.

:class:`SLOEvaluator` samples the cumulative counters at each :meth:`~SLOEvaluator.tick` (clock
injected), keeps a fine history for the short windows and a coarse one (every 5 min) for the SLO
window, exports ``invguard_slo_burn_rate{slo,window}``, ``invguard_slo_error_budget_remaining{slo}``
and ``invguard_slo_objective{slo}``, and returns the breaches so the guard opens an incident.
Until a window has been observed in full (the guard started less than a window ago), its burn rate
counts the unobserved part as spending nothing: the rate over the history there is, times the
observed share of the window. So a long window's condition means what the workbook means by it (that
fraction of the budget spent within the window), a minute of one-sided traffic after a start is not
reported as a burn "over 6h", and a leak fast enough to spend the fraction within the history
observed so far still alerts. A breach says how much of its long window was observed. (The
exported rules read Prometheus's own history, which outlives a restart of the guard.)

M2 reads the rows answered under the role's own policy: rows answered under a detection mitigation
(a tightened client's one-hot answers) are counted apart by :mod:`invguard.guard.metrics`.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from invguard.guard.incidents import Clock, IncidentStore

SLI = Literal["high_confidence_rate", "audit_fidelity", "limit_violation_rate", "incident_resolution"]
HOUR = 3600.0

# (severity, long window, short window, fraction of the budget) for a 30-day SLO window
ALERT_WINDOWS: tuple[tuple[str, float, float, float], ...] = (
    ("page", 1 * HOUR, 5 * 60.0, 0.02),
    ("page", 6 * HOUR, 30 * 60.0, 0.05),
    ("ticket", 72 * HOUR, 6 * HOUR, 0.10),
)
_FINE_KEEP = 6 * HOUR + 60.0
_COARSE_STEP = 300.0


class SLOConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    sli: SLI
    objective: float = Field(gt=0, le=1)
    window_days: float = Field(default=30.0, gt=0, le=365)
    threshold_hours: float | None = Field(default=None, gt=0)
    min_events: int = Field(default=20, ge=1)  # fewer events in a window: no burn-rate alert from it

    @model_validator(mode="after")
    def _check(self) -> SLOConfig:
        if self.sli == "incident_resolution" and self.threshold_hours is None:
            raise ValueError("sli incident_resolution needs threshold_hours (e.g. 8 for 'MTTR < 8 h')")
        if self.sli != "incident_resolution" and self.threshold_hours is not None:
            raise ValueError(f"threshold_hours applies to sli incident_resolution only, not {self.sli}")
        return self

    @property
    def budget(self) -> float:
        return 1.0 - self.objective

    @property
    def window_seconds(self) -> float:
        return self.window_days * 24 * HOUR

    def burn_threshold(self, long_window: float, fraction: float) -> float:
        """The burn rate at which ``fraction`` of the budget goes in ``long_window``."""
        return fraction * self.window_seconds / long_window


@dataclass(frozen=True)
class Breach:
    slo: str
    sli: str
    severity: str
    long_window: float
    short_window: float
    burn_long: float
    burn_short: float
    threshold: float
    budget_remaining: float
    observed_long: float | None = None  # seconds of the long window observed (None: all of it)

    def describe(self) -> str:
        partial = self.observed_long is not None and self.observed_long < self.long_window
        over = (
            f"{_win(self.long_window)} (only {_win(self.observed_long)} observed so far, the rest "
            "counted as spending nothing)"
            if partial and self.observed_long is not None
            else _win(self.long_window)
        )
        return (
            f"SLO {self.slo} ({self.sli}) burning its error budget at {self.burn_long:.1f}x over "
            f"{over} and {self.burn_short:.1f}x over {_win(self.short_window)} "
            f"(alert at {self.threshold:g}x); {self.budget_remaining:.0%} of the budget left"
        )


def _win(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds >= 86400 and seconds % 86400 == 0:
        return f"{seconds / 86400:g}d"
    if seconds >= HOUR:
        return f"{seconds / HOUR:g}h"
    return f"{seconds / 60:g}m"


def counter_totals(registry: Any) -> dict[str, tuple[float, float]]:
    """Cumulative (bad, total) of the counter-based SLIs, summed over labels, from a registry."""
    sums: dict[str, float] = {}
    for fam in registry.collect():
        for s in fam.samples:
            sums[s.name] = sums.get(s.name, 0.0) + s.value
    written = sums.get("invguard_guard_audit_records_written_total", 0.0)
    failed = sums.get("invguard_guard_audit_write_failures_total", 0.0)
    return {
        "high_confidence_rate": (
            sums.get("invguard_guard_high_confidence_responses_total", 0.0),
            sums.get("invguard_guard_response_entropy_nats_count", 0.0),
        ),
        "audit_fidelity": (failed, written + failed),
        "limit_violation_rate": (
            sums.get("invguard_guard_limit_violations_total", 0.0),
            sums.get("invguard_guard_requests_total", 0.0),
        ),
    }


def _ratio(bad: float, total: float, budget: float) -> float:
    if total <= 0:
        return 0.0
    rate = bad / total
    if budget <= 0:
        return math.inf if rate > 0 else 0.0
    return rate / budget


class SLOEvaluator:
    """Evaluates SLOs from cumulative counters read by ``read`` at each tick."""

    def __init__(
        self,
        slos: Sequence[SLOConfig],
        read: Callable[[], dict[str, tuple[float, float]]],
        *,
        clock: Clock = time.time,
        registry: Any = None,
        incidents: IncidentStore | None = None,
    ) -> None:
        self.slos = tuple(slos)
        self.read = read
        self.clock = clock
        self.incidents = incidents
        self._fine: dict[str, deque[tuple[float, float, float]]] = {}
        self._coarse: dict[str, deque[tuple[float, float, float]]] = {}
        self.last: dict[str, dict[str, Any]] = {}
        self._g_burn = self._g_left = self._g_obj = None
        if registry is not None:
            from prometheus_client import Gauge

            self._g_burn = Gauge(
                "invguard_slo_burn_rate",
                "Error-budget burn rate of a privacy SLO over a window (1: the budget lasts the window).",
                ["slo", "window"],
                registry=registry,
                multiprocess_mode="livemostrecent",
            )
            self._g_left = Gauge(
                "invguard_slo_error_budget_remaining",
                "Fraction of a privacy SLO's error budget left over its window (negative: overspent).",
                ["slo"],
                registry=registry,
                multiprocess_mode="livemostrecent",
            )
            self._g_obj = Gauge(
                "invguard_slo_objective",
                "A privacy SLO's objective (good fraction).",
                ["slo"],
                registry=registry,
                multiprocess_mode="livemostrecent",
            )
            for s in self.slos:
                self._g_obj.labels(s.name).set(s.objective)

    def _sample(self, now: float) -> dict[str, tuple[float, float]]:
        cur = self.read()
        for sli, (bad, total) in cur.items():
            fine = self._fine.setdefault(sli, deque())
            fine.append((now, bad, total))
            while len(fine) > 2 and fine[1][0] <= now - _FINE_KEEP:
                fine.popleft()
            coarse = self._coarse.setdefault(sli, deque())
            if not coarse or now - coarse[-1][0] >= _COARSE_STEP:
                coarse.append((now, bad, total))
            keep = max((s.window_seconds for s in self.slos if s.sli == sli), default=0.0) + _COARSE_STEP
            while len(coarse) > 2 and coarse[1][0] <= now - keep:
                coarse.popleft()
        return cur

    def _window(self, sli: str, now: float, w: float) -> tuple[float, float, float]:
        """(bad, total, seconds observed) of the events of the last ``w`` seconds."""
        hist = self._fine.get(sli) if w <= _FINE_KEEP - 60 else self._coarse.get(sli)
        if not hist:
            return 0.0, 0.0, 0.0
        start = hist[0]
        for s in hist:  # the latest sample at or before now - w
            if s[0] <= now - w:
                start = s
            else:
                break
        end = self._fine[sli][-1]
        return end[1] - start[1], end[2] - start[2], min(w, now - start[0])

    def _events(self, slo: SLOConfig, now: float, w: float) -> tuple[float, float, float]:
        if slo.sli == "incident_resolution":  # the incident store keeps its own history
            if self.incidents is None:
                return 0.0, 0.0, w
            assert slo.threshold_hours is not None
            late, total = self.incidents.resolution_within(slo.threshold_hours * HOUR, now - w, now)
            return float(late), float(total), w
        return self._window(slo.sli, now, w)

    def tick(self) -> list[Breach]:
        """Sample the counters, update the gauges, return the SLOs breaching an alert condition."""
        now = self.clock()
        self._sample(now)
        breaches = []
        for slo in self.slos:
            bad, total, _ = self._events(slo, now, slo.window_seconds)
            spent = _ratio(bad, total, slo.budget)
            left = 1.0 - spent if math.isfinite(spent) else -math.inf
            burns: dict[float, float] = {}
            observed: dict[float, float] = {}
            alerts: list[Breach] = []
            for sev, lw, sw, frac in ALERT_WINDOWS:
                for w in (lw, sw):
                    if w not in burns:
                        b, t, seen = self._events(slo, now, w)
                        enough = t >= slo.min_events or slo.budget <= 0 or slo.sli == "incident_resolution"
                        rate = _ratio(b, t, slo.budget) if enough else 0.0
                        # a window not yet observed in full: its unobserved part spent nothing
                        share = min(1.0, seen / w) if w > 0 else 1.0
                        burns[w] = rate * share if rate > 0 else 0.0
                        observed[w] = seen
                thr = slo.burn_threshold(lw, frac)
                # incidents are rare events: the short window's confirmation is for traffic SLIs
                confirmed = slo.sli == "incident_resolution" or burns[sw] > thr
                if burns[lw] > thr and confirmed:
                    breach = Breach(slo.name, slo.sli, sev, lw, sw, burns[lw], burns[sw], thr, left)
                    alerts.append(replace(breach, observed_long=observed[lw]))
            if alerts:  # the most urgent condition speaks for the SLO
                breaches.append(alerts[0])
            self.last[slo.name] = {
                "slo": slo.name,
                "sli": slo.sli,
                "objective": slo.objective,
                "window_days": slo.window_days,
                "bad": bad,
                "total": total,
                "budget_remaining": left,
                "burn": {_win(w): v for w, v in sorted(burns.items())},
                "observed": {_win(w): v for w, v in sorted(observed.items())},
                "alert": alerts[0].severity if alerts else None,
            }
            if self._g_burn is not None and self._g_left is not None:
                for w, v in burns.items():
                    self._g_burn.labels(slo.name, _win(w)).set(v)
                self._g_left.labels(slo.name).set(left)
        return breaches
