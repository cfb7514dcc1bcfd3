"""Privacy SLOs: error budgets, multi-window burn rates, breaches, and the exported gauges."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry

from invguard.guard.incidents import Detection, IncidentStore
from invguard.guard.metrics import GuardMetrics
from invguard.guard.slo import SLOConfig, SLOEvaluator, counter_totals
from tests.guard.test_incidents import Clock

M2 = SLOConfig(name="m2", sli="high_confidence_rate", objective=0.95)


class Counters:
    def __init__(self):
        self.v = {"high_confidence_rate": [0.0, 0.0], "audit_fidelity": [0.0, 0.0]}

    def add(self, sli, bad, total):
        self.v[sli][0] += bad
        self.v[sli][1] += total

    def __call__(self):
        return {k: (b, t) for k, (b, t) in self.v.items()}


def feed(ev, c, clock, minutes, bad_per_min, total_per_min, sli="high_confidence_rate"):
    out = []
    for _ in range(minutes):
        clock.t += 60
        c.add(sli, bad_per_min, total_per_min)
        out = ev.tick()
    return out


def test_burn_rate_windows_and_page_vs_ticket():
    clock, c, reg = Clock(), Counters(), CollectorRegistry()
    ev = SLOEvaluator([M2], c, clock=clock, registry=reg)
    ev.tick()
    # 1% high-confidence answers: within the 5% budget, burn 0.2, no alert
    assert feed(ev, c, clock, 120, 1, 100) == []
    assert ev.last["m2"]["burn"]["1h"] == pytest.approx(0.2)
    # a probe: 90% high confidence for 10 minutes -> burn 18 over 5 min; over 1 h (50 min at 1% and
    # 10 min at 90%) the rate is 15.8% -> burn 3.2: below 14.4, no page yet; over the 2 h 10 min seen
    # so far the rate is 7.8% (burn 1.55), but that is 2 h 10 min of the ticket's 3 d window: the rest
    # spent nothing, so the 3 d burn is 1.55 * 130 / 4320 = 0.047, no ticket
    assert feed(ev, c, clock, 10, 90, 100) == []
    assert ev.last["m2"]["burn"]["5m"] == pytest.approx(18)
    assert ev.last["m2"]["observed"]["3d"] == 130 * 60
    assert ev.last["m2"]["burn"]["3d"] == pytest.approx((1020 / 13000 / 0.05) * 130 / 4320)
    # 45 more minutes: over 1 h the rate is 83% (burn 16.5 > 14.4) and the 5 min window confirms
    (b,) = feed(ev, c, clock, 45, 90, 100)
    assert b.severity == "page" and b.long_window == 3600 and b.short_window == 300
    assert b.threshold == pytest.approx(14.4) and b.burn_long > 14.4
    assert "SLO m2 (high_confidence_rate) burning its error budget at" in b.describe()
    assert reg.get_sample_value("invguard_slo_burn_rate", {"slo": "m2", "window": "5m"}) == pytest.approx(18)
    assert reg.get_sample_value("invguard_slo_objective", {"slo": "m2"}) == 0.95
    left = reg.get_sample_value("invguard_slo_error_budget_remaining", {"slo": "m2"})
    assert left == pytest.approx(ev.last["m2"]["budget_remaining"]) and left < 0  # 2.5 h of history
    assert "over 1h and" in b.describe()  # the 1 h window was observed in full
    # the probe stops: the 5 min window clears within 5 minutes, and so does the page
    assert feed(ev, c, clock, 6, 0, 100) == []


def test_slow_burn_opens_a_ticket_not_a_page():
    clock, c = Clock(), Counters()
    ev = SLOEvaluator([M2], c, clock=clock)
    ev.tick()
    for _ in range(72):  # 3 days at a 6% rate (burn 1.2): the 3 d / 6 h ticket condition
        out = feed(ev, c, clock, 60, 6, 100)
    assert [b.severity for b in out] == ["ticket"]
    assert out[0].long_window == 72 * 3600 and out[0].burn_long == pytest.approx(1.2, rel=0.02)


def test_zero_budget_slo_breaches_on_one_failure_and_ignores_thin_windows():
    clock, c = Clock(), Counters()
    fid = SLOConfig(name="fidelity", sli="audit_fidelity", objective=1.0)
    ev = SLOEvaluator([fid, M2], c, clock=clock)
    ev.tick()
    assert feed(ev, c, clock, 5, 0, 50, sli="audit_fidelity") == []
    # 3 of 5 rows high-confidence in a window: fewer events than min_events, no alert
    c.add("high_confidence_rate", 3, 5)
    c.add("audit_fidelity", 1, 50)
    clock.t += 60
    (b,) = ev.tick()
    assert b.slo == "fidelity" and b.severity == "page" and math.isinf(b.burn_long)
    assert ev.last["fidelity"]["budget_remaining"] == -math.inf


def test_incident_resolution_slo_reads_the_store(tmp_path):
    clock = Clock()
    store = IncidentStore(tmp_path / "i.db", clock=clock)
    slo = SLOConfig(name="mttr", sli="incident_resolution", objective=0.9, threshold_hours=8)
    ev = SLOEvaluator([slo], dict, clock=clock, incidents=store)
    inc, _ = store.open(Detection("manual", "on-call", "t", "digits"))
    clock.t += 3600
    assert ev.tick() == [] and ev.last["mttr"]["total"] == 0  # open, but within its 8 h
    clock.t += 8 * 3600
    # open past 8 h: the one incident decided is late, 100% bad, burn 10: above the 6 h page's 6
    (b,) = ev.tick()
    assert b.severity == "page" and b.long_window == 6 * 3600 and b.burn_long == pytest.approx(10)
    assert ev.last["mttr"]["bad"] == 1 and ev.last["mttr"]["total"] == 1
    store.resolve(inc.id, "alice", "done")
    assert ev.last["mttr"]["budget_remaining"] == pytest.approx(-9)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="sli incident_resolution needs threshold_hours"):
        SLOConfig(name="x", sli="incident_resolution", objective=0.9)
    with pytest.raises(ValueError, match="threshold_hours applies to sli incident_resolution only"):
        SLOConfig(name="x", sli="audit_fidelity", objective=1, threshold_hours=1)


def test_counter_totals_read_the_guard_metrics():
    reg = CollectorRegistry()
    m = GuardMetrics(reg)
    for h in (0.01, 0.5, 2.0):
        m.entropy.labels("partner").observe(h)
    m.high_confidence.labels("partner").inc(1)
    m.audit_written.inc(10)
    m.audit_failures.inc(2)
    m.requests.labels("/v1", "200", "partner").inc(9)
    m.violations.labels("partner", "rate_limited").inc(3)
    t = counter_totals(reg)
    assert t["high_confidence_rate"] == (1, 3)
    assert t["audit_fidelity"] == (2, 12)
    assert t["limit_violation_rate"] == (3, 9)


def test_a_window_longer_than_the_uptime_is_not_reported_as_observed_in_full():
    # the guard started a minute ago and every answer since was high-confidence: that is not a
    # burn "over 6h" (the 6 h window holds one minute), so no page
    clock, c = Clock(), Counters()
    ev = SLOEvaluator([M2], c, clock=clock)
    ev.tick()
    assert feed(ev, c, clock, 1, 30, 30) == []
    assert ev.last["m2"]["observed"]["6h"] == 60 and ev.last["m2"]["burn"]["6h"] == pytest.approx(20 / 360)
    # a leak fast enough to spend 2% of the budget within the history there is still pages: 100%
    # high-confidence (burn 20) for 44 min spends 20 * 44/60 = 14.7 > 14.4 of the 1 h window
    (b,) = feed(ev, c, clock, 43, 30, 30)
    assert b.severity == "page" and b.long_window == 3600 and b.observed_long == 44 * 60
    assert b.burn_long == pytest.approx(20 * 44 / 60)
    assert "over 1h (only 44m observed so far, the rest counted as spending nothing)" in b.describe()


def test_answers_under_a_detection_mitigation_are_not_counted_in_m2():
    reg = CollectorRegistry()
    m = GuardMetrics(reg)
    m.entropy.labels("partner").observe(0.5)
    m.mitigated_rows.labels("partner").inc(40)  # a tightened client's one-hot answers
    m.mitigated_high_confidence.labels("partner").inc(40)
    assert counter_totals(reg)["high_confidence_rate"] == (0, 1)
