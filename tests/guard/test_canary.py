"""The privacy canary: a keyed, stable traffic split per client; the two versions' privacy SLIs
compared over a window (no decision on too little data); automatic rollback with an incident, an
audit record and a metric; the admin API and CLI see the state and re-enable it by hand."""

from __future__ import annotations

import asyncio
import json
import math
import sqlite3
import urllib.error
import urllib.request

import numpy as np
import pytest
import yaml
from prometheus_client import CollectorRegistry

from invguard.core.errors import ConfigError
from invguard.guard import from_dict
from invguard.guard.canary import Canary, CanaryStateStore
from invguard.guard.config import CanaryConfig, load
from invguard.guard.incidents import IncidentStore
from invguard.metrics.stats import difference_interval
from tests.guard.conftest import KEYS, base_config
from tests.guard.test_incidents import Clock

KEY = b"s" * 32


def test_the_difference_interval_is_newcombes():
    # Newcombe (1998), Table II, examples (a) and (b): 95% hybrid score intervals
    d, lo, hi = difference_interval(56, 70, 48, 80, confidence=0.975)
    assert (round(d, 4), round(lo, 4), round(hi, 4)) == (0.2, 0.0524, 0.3339)
    _, lo, hi = difference_interval(9, 10, 3, 10, confidence=0.975)
    assert (round(lo, 4), round(hi, 4)) == (0.1705, 0.8090)
    with pytest.raises(ValueError, match="both samples need at least one trial"):
        difference_interval(0, 0, 1, 2)


def make(tmp_path, clock, registry=None, key=KEY, history=None, **over):
    cfg = CanaryConfig.model_validate(
        {
            "version": "v2",
            "weight": 0.5,
            "path": "unused.pt",
            "window_seconds": 600,
            "check_seconds": 60,
            "min_rows": 100,
            "min_requests": 100,
            "min_clients": 3,
            **over,
        }
    )
    return Canary(
        cfg,
        model_name="digits",
        stable_version="v1",
        stable_model="stable-model",
        canary_model="canary-model",
        key=key,
        store=CanaryStateStore(tmp_path / "incidents.db", clock=clock),
        history=history,
        registry=registry if registry is not None else CollectorRegistry(),
        clock=clock,
    )


def test_the_split_is_deterministic_keyed_and_near_its_weight(tmp_path):
    clock = Clock()
    c = make(tmp_path, clock, weight=0.05)
    ids = [f"client-{i}" for i in range(20_000)]
    first = [c.choose(i).canary for i in ids]
    assert [c.choose(i).canary for i in ids] == first  # one client, one version
    share = sum(first) / len(ids)
    band = 4 * math.sqrt(0.05 * 0.95 / len(ids))  # 4 binomial standard deviations
    assert abs(share - 0.05) < band, share
    # another worker (or a restart) with the same secret routes every client the same way
    again = make(tmp_path / "other", clock, weight=0.05)
    assert [again.choose(i).canary for i in ids] == first
    # without the secret the split is not predictable: another key picks other clients
    other = make(tmp_path / "k2", clock, weight=0.05, key=b"t" * 32)
    picked = {i for i, f in zip(ids, first, strict=True) if f}
    overlap = sum(other.choose(i).canary for i in picked) / len(picked)
    assert overlap < 0.15  # independent draws share about 5%
    assert c.choose("client-1").model in ("stable-model", "canary-model")
    assert [c.version_of(i) == "v2" for i in ids[:500]] == first[:500]


def _clients(c, want_canary, n):
    out, i = [], 0
    while len(out) < n:
        cid = f"c{i}"
        if c.in_canary(cid) == want_canary:
            out.append(cid)
        i += 1
    return out


def _split(total, n):
    return [total // n + (i < total % n) for i in range(n)]


def feed(c, clients, rows, confident, observed=0, detected=0):
    """``rows`` scored rows (``confident`` of them high-confidence) and ``observed`` requests
    (``detected`` flagged) spread evenly over ``clients`` (each client at the same rates)."""
    arms = [c.choose(x) for x in clients]
    assert all(a is arms[0] for a in arms)
    n = len(clients)
    for a, x, r, k, o, d in zip(
        arms,
        clients,
        _split(rows, n),
        _split(confident, n),
        _split(observed, n),
        _split(detected, n),
        strict=True,
    ):
        c.served(a, x, r, k)
        for j in range(o):
            c.observed(a, x, j < d)


async def _collect(c, incidents, records):
    async def append(rec):
        records.append(rec)

    await c.tick(incidents, append)


def test_a_more_confident_canary_is_rolled_back_with_an_incident_an_audit_record_and_a_metric(tmp_path):
    clock, reg, records = Clock(), CollectorRegistry(), []
    c = make(tmp_path, clock, reg)
    incidents = IncidentStore(tmp_path / "incidents.db", clock=clock)
    stable, canary = _clients(c, False, 10), _clients(c, True, 10)

    async def go():
        await _collect(c, incidents, records)
        for _ in range(5):
            clock.t += 60
            feed(c, stable, 100, 5)  # 5% of the stable version's rows are high-confidence
            feed(c, canary, 100, 40)  # 40% of the canary's
            await _collect(c, incidents, records)

    asyncio.run(go())
    assert not c.active
    assert all(not c.choose(x).canary for x in canary)  # later requests go to stable
    st = c.store.require("digits")
    assert st.state == "rolled_back" and st.actor == "guard"
    (inc,) = incidents.find(state=None)
    assert inc.source == "canary" and inc.detector == "canary:high_confidence_rate"
    assert inc.model_version == "v2" and inc.severity == "page"
    assert (
        "canary v2 of digits rolled back to v1: M2 high-confidence rate 0.400 on v2 (40/100 rows, 10 clients)"
        in inc.title
    )
    assert "vs 0.050 on v1 (5/100, 10 clients)" in inc.title and "exceeds the margin 0.02" in inc.title
    m2 = inc.evidence["canary"]["slis"]["high_confidence_rate"]
    assert m2["decided"] and m2["lower"] > 0.02 and m2["canary"]["clients"] == 10
    # the rollback is in the audit log (the journal's record), with the incident and the numbers
    trail = [r for r in records if r["route"] == "canary"]
    assert [r["decision"] for r in trail] == ["canary_started", "canary_rolled_back"]
    rb = trail[1]
    assert (
        rb["incident"] == inc.id and rb["model_version"] == "v2" and rb["breach"] == ["high_confidence_rate"]
    )
    assert rb["slis"]["high_confidence_rate"]["canary"]["bad"] == 40
    v = {"model_version": "v2"}
    assert (
        reg.get_sample_value("invguard_canary_rollbacks_total", v | {"reason": "high_confidence_rate"}) == 1
    )
    assert reg.get_sample_value("invguard_canary_active", v) == 0
    assert reg.get_sample_value("invguard_canary_weight", v) == 0
    # a restart keeps a rolled-back canary rolled back
    assert not make(tmp_path, clock).active


def test_more_detections_on_the_canary_roll_it_back(tmp_path):
    clock, records = Clock(), []
    c = make(tmp_path, clock, min_requests=200, detection_margin=0.01)
    incidents = IncidentStore(tmp_path / "incidents.db", clock=clock)
    stable, canary = _clients(c, False, 10), _clients(c, True, 10)

    async def go():
        for _ in range(3):
            clock.t += 60
            feed(c, stable, 0, 0, observed=200, detected=2)
            feed(c, canary, 0, 0, observed=200, detected=40)
            await _collect(c, incidents, records)

    asyncio.run(go())
    assert not c.active
    (inc,) = incidents.find(state=None)
    assert inc.detector == "canary:detection_rate"
    ev = inc.evidence["canary"]
    assert ev["slis"]["high_confidence_rate"]["decided"] is False  # no scored rows: M2 not compared
    assert ev["slis"]["detection_rate"]["canary"]["bad"] >= 40


def test_equal_behaviour_never_rolls_back(tmp_path):
    """Both versions answer high-confidence rows with the same probability 0.1: three hours of
    checks (one a minute over a 10-minute window) never roll the canary back."""
    clock, records = Clock(), []
    c = make(tmp_path, clock)
    incidents = IncidentStore(tmp_path / "incidents.db", clock=clock)
    stable, canary = _clients(c, False, 8), _clients(c, True, 8)
    rng = np.random.default_rng(7)
    decided = []

    async def go():
        for _ in range(200):
            clock.t += 60
            feed(c, stable, 60, int(rng.binomial(60, 0.1)), observed=20, detected=int(rng.binomial(20, 0.01)))
            feed(c, canary, 60, int(rng.binomial(60, 0.1)), observed=20, detected=int(rng.binomial(20, 0.01)))
            await _collect(c, incidents, records)
            decided.append(c.last["slis"]["high_confidence_rate"]["decided"])

    asyncio.run(go())
    assert c.active and incidents.find(state=None) == []
    assert sum(decided) > 190  # the comparisons were made, and none breached
    assert all(r["decision"] != "canary_rolled_back" for r in records)


def test_no_decision_below_the_minimum_sample(tmp_path):
    clock, records = Clock(), []
    c = make(tmp_path, clock, min_rows=300)
    incidents = IncidentStore(tmp_path / "incidents.db", clock=clock)
    stable, canary = _clients(c, False, 5), _clients(c, True, 5)

    async def go():
        clock.t += 60
        feed(c, stable, 400, 0)
        feed(c, canary, 250, 250)  # every canary row confident, but only 250 of the 300 rows needed
        await _collect(c, incidents, records)
        assert c.active
        m2 = c.last["slis"]["high_confidence_rate"]
        assert m2 == m2 | {"decided": False, "why": "insufficient data: canary has 250 of 300 rows"}
        clock.t += 60
        feed(c, canary[:2], 100, 100)  # enough rows now, from 5 clients: decided
        await _collect(c, incidents, records)

    asyncio.run(go())
    assert not c.active


def test_two_heavy_clients_do_not_make_a_version_worse(tmp_path):
    """The canary's rate is 0.25 against 0.10, but only because three of its ten clients send
    confident queries (0.83) and the rest none: independent rows would call that a breach (the
    Newcombe bound alone is above the margin); the clients' design effect does not."""
    clock, records = Clock(), []
    c = make(tmp_path, clock)
    incidents = IncidentStore(tmp_path / "incidents.db", clock=clock)
    stable, canary = _clients(c, False, 10), _clients(c, True, 10)

    async def go():
        clock.t += 60
        feed(c, stable, 1000, 100)
        for i, cid in enumerate(canary):
            c.served(c.choose(cid), cid, 100, (84, 83, 83)[i] if i < 3 else 0)
        await _collect(c, incidents, records)

    asyncio.run(go())
    assert c.active and incidents.find(state=None) == []
    m2 = c.last["slis"]["high_confidence_rate"]
    _, newcombe_lower, _ = difference_interval(250, 1000, 100, 1000, confidence=0.999)
    assert newcombe_lower > 0.02  # rows taken as independent: a breach
    assert m2["canary"]["design_effect"] > 50 and m2["stable"]["design_effect"] == 1.0
    assert m2["lower"] == m2["lower_clustered"] < 0 and not m2["breach"]
    # the same excess spread over all ten clients is a breach
    c2 = make(tmp_path / "b", clock)
    inc2 = IncidentStore(tmp_path / "b" / "incidents.db", clock=clock)

    async def spread():
        clock.t += 60
        feed(c2, _clients(c2, False, 10), 1000, 100)
        feed(c2, _clients(c2, True, 10), 1000, 250)
        await _collect(c2, inc2, records)

    asyncio.run(spread())
    assert not c2.active


def test_too_few_clients_decide_nothing(tmp_path):
    clock, records = Clock(), []
    c = make(tmp_path, clock, min_clients=5)
    incidents = IncidentStore(tmp_path / "incidents.db", clock=clock)

    async def go():
        clock.t += 60
        feed(c, _clients(c, False, 5), 500, 0)
        feed(c, _clients(c, True, 2), 500, 500)  # one confident client alone decides nothing
        await _collect(c, incidents, records)

    asyncio.run(go())
    assert c.active
    assert c.last["slis"]["high_confidence_rate"]["why"] == "insufficient data: canary has 2 of 5 clients"


def _history(path, model, passed, summary):
    from invguard.audit.history import connect

    with connect(path) as con:
        con.execute(
            "INSERT INTO runs (model, started_at, finished_at, config_hash, passed, summary, attacks) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (model, 1.0, 2.0, "h", int(passed), summary, "[]"),
        )


def test_a_failed_gate_in_the_canarys_latest_audit_rolls_it_back(tmp_path):
    clock, records = Clock(), []
    hist = tmp_path / "history.db"
    _history(hist, "digits@v2", False, "1 gate failed: membership.lira.auc <= 0.6")
    _history(hist, "digits", False, "the stable model's own run: not the canary's")
    c = make(tmp_path, clock, history=str(hist))
    incidents = IncidentStore(tmp_path / "incidents.db", clock=clock)

    async def go():
        await _collect(c, incidents, records)  # no traffic needed: a gate verdict is not a sample

    asyncio.run(go())
    assert not c.active
    (inc,) = incidents.find(state=None)
    assert inc.detector == "canary:audit"
    assert "its latest audit (digits@v2, run 1 at" in inc.title
    assert "failed a gate: 1 gate failed: membership.lira.auc <= 0.6" in inc.title


def test_a_passed_latest_audit_does_not(tmp_path):
    clock, records = Clock(), []
    hist = tmp_path / "history.db"
    _history(hist, "digits@v2", False, "an old failure")
    _history(hist, "digits@v2", True, "all gates passed")  # the latest run of the canary passed
    c = make(tmp_path, clock, history=str(hist))
    asyncio.run(_collect(c, IncidentStore(tmp_path / "incidents.db", clock=clock), records))
    assert c.active and c.last["audit"]["passed"] is True


def test_re_enabled_by_hand_it_serves_again_over_a_fresh_window(tmp_path):
    clock, records = Clock(), []
    c = make(tmp_path, clock)
    incidents = IncidentStore(tmp_path / "incidents.db", clock=clock)
    stable, canary = _clients(c, False, 5), _clients(c, True, 5)

    async def go():
        clock.t += 60
        feed(c, stable, 200, 0)
        feed(c, canary, 200, 200)
        await _collect(c, incidents, records)
        assert not c.active
        with pytest.raises(Exception, match="needs who"):
            CanaryStateStore(tmp_path / "incidents.db").enable("digits", "alice", " ")
        # the CLI in another process
        CanaryStateStore(tmp_path / "incidents.db").enable("digits", "alice", "v2 retrained with DP")
        clock.t += 1
        await _collect(c, incidents, records)
        assert c.active and c.choose(canary[0]).canary
        # the old comparison is gone with the old window: the fresh one has no data yet
        assert c.last["slis"]["high_confidence_rate"]["why"].startswith("insufficient data: stable has 0 of")
        clock.t += 60
        feed(c, stable, 200, 0)
        feed(c, canary, 200, 0)  # behaves now
        await _collect(c, incidents, records)
        assert c.active and c.last["breach"] == []

    asyncio.run(go())
    trail = [(r["decision"], r["actor"]) for r in records if r["route"] == "canary"]
    assert trail == [
        ("canary_started", "guard"),
        ("canary_rolled_back", "guard"),
        ("canary_enabled", "alice"),
    ]


def test_two_workers_roll_back_once(tmp_path):
    clock, records = Clock(), []
    a, b = make(tmp_path, clock), make(tmp_path, clock)
    incidents = IncidentStore(tmp_path / "incidents.db", clock=clock)

    async def go():
        clock.t += 60
        for w in (a, b):
            feed(w, _clients(w, False, 5), 200, 0)
            feed(w, _clients(w, True, 5), 200, 200)
        await _collect(a, incidents, records)
        await _collect(b, incidents, records)

    asyncio.run(go())
    assert not a.active and not b.active
    assert len(incidents.find(state=None)) == 1
    assert [r["decision"] for r in records].count("canary_rolled_back") == 1


# ------------------------------------------------------------------------------------------ config


def _write(tmp_path, canary, **over):
    doc = base_config(tmp_path, **over)
    doc["model"]["version"] = "v1"
    doc["incidents"] = {"store": str(tmp_path / "incidents.db")}
    doc["canary"] = canary
    p = tmp_path / "guard.yaml"
    p.write_text(yaml.safe_dump(doc, sort_keys=False))
    return p, doc


def _line(p, key):
    """The line of ``key`` in the canary section (or of ``canary:`` itself)."""
    lines = p.read_text().splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("canary:"))
    if key == "canary":
        return start + 1
    return next(i for i, ln in enumerate(lines[start:], start + 1) if ln.strip().startswith(key + ":"))


@pytest.mark.parametrize(
    ("canary", "field", "message"),
    [
        ({"version": "v2", "weight": 1.5, "path": "m.pt"}, "weight", "Input should be less than 1"),
        ({"version": "v2", "weight": 0, "path": "m.pt"}, "weight", "Input should be greater than 0"),
        ({"version": "v 2", "weight": 0.1, "path": "m.pt"}, "version", "String should match pattern"),
        ({"version": "v2", "weight": 0.1, "path": "m.pt", "wieght": 1}, "wieght", "unknown field"),
        (
            {"version": "v2", "weight": 0.1, "path": "m.pt", "min_rows": 0},
            "min_rows",
            "greater than or equal",
        ),
    ],
)
def test_a_bad_canary_field_is_named_with_its_path_and_line(tmp_path, canary, field, message):
    p, _ = _write(tmp_path, canary)
    with pytest.raises(ConfigError) as e:
        load(p)
    text = str(e.value)
    assert text.startswith(
        f"{p}: 1 problem in the guard config\n  - canary.{field} (line {_line(p, field)}): "
    )
    assert message in text


def test_canary_problems_that_need_the_rest_of_the_config(tmp_path):
    p, doc = _write(tmp_path, {"version": "v2", "weight": 0.1})
    with pytest.raises(ConfigError) as e:
        load(p)
    assert str(e.value) == (
        f"{p}: 1 problem in the guard config\n  - canary (line {_line(p, 'canary')}): "
        "a canary needs its own model: path (a model file) or upstream: {url}"
    )
    p, doc = _write(tmp_path, {"version": "v1", "weight": 0.1, "path": "m.pt"})
    with pytest.raises(ConfigError) as e:
        load(p)
    assert str(e.value) == (
        f"{p}: canary.version: 'v1' is the stable version (model.version); "
        "the canary must serve another version"
    )
    del doc["incidents"]
    doc["canary"]["version"] = "v2"
    with pytest.raises(ConfigError) as e:
        from_dict(doc, "guard.yaml")
    assert str(e.value) == (
        "guard.yaml: canary: needs an incident store to report a rollback in "
        "(incidents: {store: incidents.db})"
    )
    doc["incidents"] = {"store": "x.db"}
    doc["canary"] = {"version": "v2", "weight": 0.1, "kind": "proxy", "path": "m.pt"}
    with pytest.raises(ConfigError) as e:
        from_dict(doc, "guard.yaml")
    assert str(e.value) == "guard.yaml: canary.upstream: a proxy canary needs its own upstream: {url}"


def test_a_canary_model_of_another_shape_is_refused(tmp_path, torch_model):
    from invguard.guard.app import Guard

    _, doc = _write(tmp_path, {"version": "v2", "weight": 0.1, "path": "m.pt"})

    class Wrong:
        input_shape, num_classes = (1, 4, 4), 10

    with pytest.raises(ConfigError) as e:
        Guard(from_dict(doc), model=torch_model, canary_model=Wrong())
    assert str(e.value) == (
        "canary: the canary model takes inputs [1, 4, 4] with 10 classes; the stable model takes "
        "[1, 8, 8] with 10: both versions must fit one API"
    )


def test_the_canary_model_is_loaded_from_its_own_path(tmp_path, sklearn_model_file, digits):
    """A config file's canary path is relative to the file, and the canary is a model of its own."""
    import shutil

    from invguard.guard.app import Guard
    from tests.guard.conftest import write_sklearn_config

    (tmp_path / "models").mkdir()
    shutil.copy(sklearn_model_file, tmp_path / "models" / "digits-v2.pkl")
    over = {"incidents": {"store": "incidents.db"}}
    p = write_sklearn_config(tmp_path, sklearn_model_file, **over)
    doc = yaml.safe_load(p.read_text())
    doc["model"]["version"] = "v1"
    doc["canary"] = {"version": "v2", "weight": 0.05, "path": "models/digits-v2.pkl"}
    p.write_text(yaml.safe_dump(doc))
    cfg = load(p)
    assert cfg.canary is not None and cfg.canary.path == str(tmp_path / "models" / "digits-v2.pkl")
    guard = Guard(cfg)
    arm = guard.canary.canary
    assert arm.version == "v2" and arm.model is not guard.model and arm.model.input_shape == (1, 8, 8)
    x = np.asarray(digits.members.X[:4], dtype=np.float32)
    got = asyncio.run(arm.model.predict(x))
    want = asyncio.run(guard.model.predict(x))
    assert got.labels.tolist() == want.labels.tolist()  # the same weights, loaded twice


def test_detection_records_about_a_canary_client_carry_the_canary_version(tmp_path, torch_model):
    from invguard.guard.app import Guard

    _, doc = _write(tmp_path, {"version": "v2", "weight": 0.5, "path": "m.pt"})
    guard = Guard(from_dict(doc), model=torch_model, canary_model=torch_model)
    on = next(f"c{i}" for i in range(100) if guard.canary.in_canary(f"c{i}"))
    off = next(f"c{i}" for i in range(100) if not guard.canary.in_canary(f"c{i}"))

    async def go():
        await guard.audit.start()
        for cid in (on, off):
            await guard.append({"route": "detection", "decision": "detection", "client": cid})
        await guard.append({"route": "/admin/api/canary", "decision": "served", "client": on})
        await guard.audit.close()

    asyncio.run(go())
    recs = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    got = [(r["route"], r["client"], r["model_version"]) for r in recs if r.get("client")]
    assert got == [
        ("detection", on, "v2"),
        ("detection", off, "v1"),
        ("/admin/api/canary", on, "v1"),  # an admin's own records are the guard's, not a version's
    ]


# ------------------------------------------------------------------------------------ through HTTP


class Sharper:
    """The stable model with its logits multiplied by 20: the same labels, far more confident."""

    def __init__(self, base):
        self.base = base
        self.input_shape, self.num_classes = base.input_shape, base.num_classes

    async def predict(self, x):
        from invguard.core.access import Access
        from invguard.core.target import Prediction

        p = await self.base.predict(x)
        return Prediction.from_logits(p.logits * 20, Access.LOGITS)

    async def start(self):
        return None

    async def close(self):
        return None

    async def ready(self):
        return True


def _post(url, key, path, body):
    req = urllib.request.Request(
        url + path,
        data=json.dumps(body).encode(),
        headers={"X-API-Key": key, "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _get(url, key, path):
    req = urllib.request.Request(url + path, headers={"X-API-Key": key})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.read().decode()


def test_through_the_guard_a_confident_canary_is_rolled_back(make_guard, tmp_path, torch_model, digits):
    from invguard.guard.auth import hash_key

    clock = Clock()
    doc = base_config(tmp_path)
    doc["model"]["version"] = "v1"
    keys = {f"user-{i}": f"k-user-{i:04d}-0123456789" for i in range(24)}
    doc["auth"]["keys"] += [{"id": cid, "sha256": hash_key(k), "role": "internal"} for cid, k in keys.items()]
    doc["incidents"] = {"store": str(tmp_path / "incidents.db"), "admin_roles": ["default"]}
    doc["canary"] = {
        "version": "v2",
        "weight": 0.5,
        "path": "unused-v2.pt",
        "window_seconds": 600,
        "check_seconds": 60,
        "min_rows": 60,
        "min_clients": 4,
    }
    url, guard = make_guard(doc, canary_model=Sharper(torch_model), clock=clock)
    on_canary = {cid for cid in keys if guard.canary.in_canary(cid)}
    assert 4 <= len(on_canary) <= 20
    x = np.asarray(digits.members.X[:8], dtype=float).tolist()
    for k in keys.values():
        status, _ = _post(url, k, "/v1/models/digits/predict", {"inputs": x})
        assert status == 200
    clock.t += 60
    asyncio.run_coroutine_threadsafe(guard.oncall.tick(), guard.loop).result(timeout=60)
    assert not guard.canary.active
    recs = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    served = [
        r for r in recs if r.get("decision") == "served" and r.get("route") == "/v1/models/{name}/predict"
    ]
    assert {r["client"] for r in served if r["model_version"] == "v2"} == on_canary
    assert {r["client"] for r in served if r["model_version"] == "v1"} == set(keys) - on_canary
    (rb,) = [r for r in recs if r.get("decision") == "canary_rolled_back"]
    assert rb["model_version"] == "v2" and rb["breach"] == ["high_confidence_rate"]
    (inc,) = IncidentStore(tmp_path / "incidents.db").find(state=None)
    assert inc.source == "canary" and rb["incident"] == inc.id
    assert [r for r in recs if r.get("route") == "incident" and r["incident"] == inc.id]
    # after the rollback a canary client gets the stable version
    cid = sorted(on_canary)[0]
    _post(url, keys[cid], "/v1/models/digits/predict", {"inputs": x[:1]})
    last = json.loads((tmp_path / "audit.jsonl").read_text().splitlines()[-1])
    assert last["client"] == cid and last["model_version"] == "v1"
    metrics = _get(url, KEYS["default"], "/metrics")
    assert 'invguard_canary_rollbacks_total{model_version="v2",reason="high_confidence_rate"} 1.0' in metrics
    assert 'invguard_canary_weight{model_version="v2"} 0.0' in metrics
    assert 'invguard_guard_version_high_confidence_rows_total{model_version="v2"}' in metrics
    # the admin API sees it and re-enables it by hand
    st = json.loads(_get(url, KEYS["default"], "/admin/api/canary"))
    assert st["state"] == "rolled_back" and st["serving"] == 0.0 and st["stored_state"] == "rolled_back"
    assert "M2 high-confidence rate" in st["reason"]
    status, body = _post(url, KEYS["partner"], "/admin/api/canary/enable", {"note": "x"})
    assert status == 403  # not an admin role
    status, body = _post(url, KEYS["default"], "/admin/api/canary/enable", {})
    assert (status, body["error"]) == (400, 'the body must be JSON: {"note": "..."}')
    # the page shows it and re-enables it (a signed-in session, the form's CSRF token)
    page = _Page(url, KEYS["default"])
    html = page.get("/admin")
    assert 'id="canary-state" class="rolled_back"' in html and "Re-enable" in html
    m2 = rb["slis"]["high_confidence_rate"]
    assert f"{m2['canary']['bad']}/{m2['canary']['total']} ({m2['canary']['clients']} clients)" in html
    assert page.post("/admin/canary/enable", {"note": ""}) == 409  # a note is required
    assert page.post("/admin/canary/enable", {"note": "retrained"}, csrf="forged") == 403
    assert not guard.canary.active
    assert page.post("/admin/canary/enable", {"note": "retrained"}) == 303
    assert guard.canary.active and guard.canary.state.actor == "default-client"
    assert 'class="active"' in page.get("/admin")
    status, body = _post(url, KEYS["default"], "/admin/api/canary/enable", {"note": "again"})
    assert status == 409 and "already active" in body["error"]
    status, body = _post(url, KEYS["default"], "/admin/api/canary/rollback", {"note": "pause"})
    assert status == 200 and body["state"] == "rolled_back" and body["reason"] == "by hand: pause"
    assert not guard.canary.active and guard.canary.version_of(cid) == "v1"


class _Page:
    """A browser's session on the admin page, over plain HTTP (same origin, cookie, CSRF token)."""

    def __init__(self, url, key):
        import http.client
        import re
        from urllib.parse import urlencode, urlsplit

        self.host = urlsplit(url).netloc
        self.http = lambda: http.client.HTTPConnection(self.host, timeout=30)
        self.urlencode, self.re = urlencode, re
        c = self.http()
        c.request("POST", "/admin/login", urlencode({"key": key}), self._headers(form=True))
        r = c.getresponse()
        r.read()
        assert r.status == 303, r.status
        self.cookie = r.getheader("Set-Cookie").split(";")[0]

    def _headers(self, form=False):
        h = {"Origin": f"http://{self.host}", "Host": self.host}
        if form:
            h["Content-Type"] = "application/x-www-form-urlencoded"
        if getattr(self, "cookie", None):
            h["Cookie"] = self.cookie
        return h

    def get(self, path):
        c = self.http()
        c.request("GET", path, headers=self._headers())
        r = c.getresponse()
        body = r.read().decode()
        assert r.status == 200, (r.status, body[:300])
        return body

    def post(self, path, fields, csrf=None):
        if csrf is None:
            csrf = self.re.search(r'name="csrf" value="([0-9a-f]+)"', self.get("/admin")).group(1)
        c = self.http()
        c.request("POST", path, self.urlencode({**fields, "csrf": csrf}), self._headers(form=True))
        r = c.getresponse()
        r.read()
        return r.status


def test_the_cli_shows_and_changes_the_canary(tmp_path):
    from typer.testing import CliRunner

    from invguard.cli import app

    p, _ = _write(tmp_path, {"version": "v2", "weight": 0.1, "path": "m.pt"})
    runner = CliRunner()
    r = runner.invoke(app, ["canary", "status", "--config", str(p)])
    assert r.exit_code == 2 and "no canary of model 'digits' has been served yet" in r.output
    clock = Clock()
    c = make(tmp_path, clock)
    stable, canary = _clients(c, False, 5), _clients(c, True, 5)
    clock.t += 60
    feed(c, stable, 200, 0)
    feed(c, canary, 200, 200)
    asyncio.run(_collect(c, IncidentStore(tmp_path / "incidents.db", clock=clock), []))
    r = runner.invoke(app, ["canary", "status", "--config", str(p)])
    assert r.exit_code == 0, r.output
    assert "rolled_back" in r.output and "high_confidence_rate: 200/200 on v2 vs 0/200 on v1" in r.output
    r = runner.invoke(app, ["canary", "enable", "--config", str(p), "--by", "alice", "--note", "fixed"])
    assert r.exit_code == 0 and "canary v2 of digits: active" in r.output
    r = runner.invoke(app, ["canary", "enable", "--config", str(p), "--by", "alice", "--note", "fixed"])
    assert r.exit_code == 2 and "already active" in r.output
    r = runner.invoke(app, ["canary", "rollback", "--config", str(p), "--by", "bob", "--note", "pause"])
    assert r.exit_code == 0 and "rolled_back" in r.output
    con = sqlite3.connect(tmp_path / "incidents.db")
    acts = [a for (a,) in con.execute("SELECT action FROM canary_journal ORDER BY id")]
    assert acts == ["started", "rolled_back", "enabled", "rolled_back"]


_WORKER = """
import sys
from prometheus_client import CollectorRegistry, Counter

reg = CollectorRegistry()
rows = Counter("invguard_guard_version_scored_rows", "", ["model_version"], registry=reg)
conf = Counter("invguard_guard_version_high_confidence_rows", "", ["model_version"], registry=reg)
v, n, k = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rows.labels(v).inc(n)
conf.labels(v).inc(k)
"""


def test_under_several_workers_each_compares_the_traffic_of_all(tmp_path, monkeypatch):
    """``serve --workers N``: two other worker processes served the rows (their counters are in
    the multiprocess files); this worker alone served none, yet it compares them all."""
    import os
    import subprocess
    import sys

    mp = tmp_path / "metrics"
    mp.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(mp))
    clock, records = Clock(), []
    c = make(tmp_path, clock)
    incidents = IncidentStore(tmp_path / "incidents.db", clock=clock)
    for arm in (False, True):  # this worker served 8 clients of each version a row each
        for cid in _clients(c, arm, 8):
            c.served(c.choose(cid), cid, 1, 0)
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(mp)}
    for args in (("v1", "300", "6"), ("v2", "300", "150")):
        subprocess.run([sys.executable, "-c", _WORKER, *args], env=env, check=True)
    clock.t += 60
    asyncio.run(_collect(c, incidents, records))
    assert not c.active
    m2 = c.last["slis"]["high_confidence_rate"]
    assert (m2["stable"]["bad"], m2["stable"]["total"]) == (6, 300)
    assert (m2["canary"]["bad"], m2["canary"]["total"]) == (150, 300)
    assert c.stable.counts.rows == c.canary.counts.rows == 8  # what this worker served itself
