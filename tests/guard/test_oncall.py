"""The guard's on-call loop: detections and SLO breaches become incidents, every transition (also
one made from another process) lands in the verified audit log, and the webhook is posted."""

from __future__ import annotations

import asyncio
import json

from prometheus_client import CollectorRegistry

from invguard.guard import from_dict
from invguard.guard.app import key_paths
from invguard.guard.auditlog import AuditLog, ChainKey, load_public_key_hex, load_signing_key, verify
from invguard.guard.incidents import Detection, IncidentStore
from invguard.guard.metrics import GuardMetrics
from invguard.guard.oncall import OnCall
from tests.guard.conftest import base_config
from tests.guard.test_incidents import Clock, probe
from tests.guard.test_webhook import SECRET, Receiver


def test_transitions_reach_the_audit_log_and_the_webhook(tmp_path, monkeypatch):
    monkeypatch.setenv("HOOK_SECRET", SECRET.decode())
    doc = base_config(tmp_path)
    doc["incidents"] = {
        "store": str(tmp_path / "incidents.db"),
        "webhook": {"url": "https://pager.example/hook", "secret_env": "HOOK_SECRET"},
    }
    doc["slos"] = [{"name": "m2", "sli": "high_confidence_rate", "objective": 0.95}]
    cfg = from_dict(doc)
    clock, rx, reg = Clock(), Receiver([]), CollectorRegistry()
    metrics = GuardMetrics(reg)
    oc = OnCall(cfg, reg, model_version="v1", clock=clock, transport=rx)
    kp, _ = key_paths(cfg.audit.path, None, None)
    kp.parent.mkdir(parents=True, exist_ok=True)
    log_path = tmp_path / "audit.jsonl"
    chain = ChainKey(b"k" * 32)

    async def go():
        audit = AuditLog(log_path, signing_key=load_signing_key(kp), chain_key=chain, checkpoint_every=10)
        await audit.start()
        await oc.start(audit.append, background=False)
        oc.report(probe())
        await oc.tick()
        # an operator acknowledges from another process (the CLI): its own store handle
        other = IncidentStore(tmp_path / "incidents.db", clock=clock)
        other.acknowledge(1, "alice", "on it")
        # a probe: 50 minutes of confident answers (burn 20) spend 2% of the budget within the hour
        # the guard has run (20 * 50/60 > 14.4): the M2 SLO pages
        for _ in range(60):
            clock.t += 60
            for _ in range(50):
                metrics.entropy.labels("partner").observe(0.01)
            metrics.high_confidence.labels("partner").inc(50 if clock.t - 1_800_000_000 > 600 else 0)
            await oc.tick()
        await oc.close()
        await audit.close()

    asyncio.run(go())
    incs = {i.source: i for i in IncidentStore(tmp_path / "incidents.db").find(state=None)}
    assert incs["detection"].state == "acknowledged" and incs["detection"].acked_by == "alice"
    slo = incs["slo"]
    assert slo.severity == "page" and slo.detector == "slo:m2" and slo.model_version == "v1"
    assert slo.detections > 1 and "SLO m2 (high_confidence_rate)" in slo.title  # grouped while burning

    rep = verify(log_path, public_key=load_public_key_hex(kp), chain_key=chain)
    assert rep.ok, rep.summary()
    recs = [json.loads(line) for line in log_path.read_text().splitlines()]
    trail = [(r["decision"], r["incident"], r["actor"]) for r in recs if r.get("route") == "incident"]
    assert trail == [
        ("incident_opened", 1, "guard"),
        ("incident_acknowledged", 1, "alice"),
        ("incident_opened", 2, "guard"),
    ]
    types = [json.loads(b)["type"] for _, _, b in rx.got]
    assert [t.rsplit(".", 1)[1] for t in types] == ["opened", "acknowledged", "opened"]
    assert reg.get_sample_value("invguard_webhook_deliveries_total", {"outcome": "delivered"}) == 3
    assert (
        reg.get_sample_value("invguard_incidents_opened_total", {"model": "digits", "model_version": "v1"})
        == 2
    )


def test_a_guard_without_an_incidents_section_runs_no_loop(tmp_path):
    oc = OnCall(from_dict(base_config(tmp_path)), CollectorRegistry())

    async def go():
        await oc.start(lambda rec: asyncio.sleep(0))
        assert oc._task is None
        oc.report(Detection("manual", "x", "y", "digits"))  # ignored: no store
        await oc.close()

    asyncio.run(go())


def test_detection_events_become_grouped_incidents_with_their_mitigations(tmp_path):
    from invguard.guard.detect.events import DetectionEvent, EventBus, MitigationEvent

    doc = base_config(tmp_path)
    doc["incidents"] = {"store": str(tmp_path / "incidents.db"), "group_window_seconds": 600}
    clock = Clock()
    oc = OnCall(from_dict(doc), CollectorRegistry(), model_version="v2", clock=clock)
    bus = EventBus()
    bus.subscribe(oc)
    t = clock.t

    def det(i, client, linked=(), action="none"):
        return DetectionEvent(
            id=f"d{i}",
            time=t + i,
            detector="knn",
            model="digits",
            client=client,
            role="partner",
            score=0.9,
            threshold=0.5,
            queries=40 + i,
            linked=linked,
            action=action,
            evidence={"seqs": (10 + i, 11 + i), "fingerprints": [f"fp{i}"]},
        )

    async def go():
        await oc.start(lambda rec: asyncio.sleep(0), background=False)
        bus.emit(det(1, "acme"))
        bus.emit(det(2, "acme-2", linked=("acme",), action="block"))  # same cluster: grouped, escalated
        bus.emit(
            MitigationEvent(
                id="m1",
                time=t + 3,
                change="applied",
                client="acme-2",
                action="block",
                until=t + 600,
                detection="d2",
            )
        )
        bus.emit(det(3, "zeta"))  # another cluster
        await oc.tick()
        await oc.close()

    asyncio.run(go())
    assert bus.failures == 0
    acme, zeta = sorted(IncidentStore(tmp_path / "incidents.db").find(state=None), key=lambda i: i.id)
    assert acme.clients == ("acme", "acme-2") and acme.detections == 2 and acme.severity == "page"
    assert acme.evidence["detections"] == ["d1", "d2"] and acme.evidence["seqs"] == [11, 12, 13]
    assert acme.model_version == "v2" and acme.first_seen == t + 1 and acme.last_seen == t + 2
    assert [(m["action"], m.get("change")) for m in acme.mitigations] == [
        ("block", None),
        ("block", "applied"),
    ]
    assert zeta.clients == ("zeta",) and zeta.severity == "ticket"


def test_every_record_and_incident_carries_the_model_version(make_guard, tmp_path):
    import urllib.request

    from tests.guard.conftest import KEYS

    doc = base_config(tmp_path)
    doc["model"]["version"] = "2026-12-01.3"
    doc["incidents"] = {"store": str(tmp_path / "incidents.db")}
    url, guard = make_guard(doc)
    body = json.dumps({"inputs": [[[[0.0] * 8] * 8]]}).encode()
    req = urllib.request.Request(
        url + "/v1/models/digits/predict",
        data=body,
        headers={"X-API-Key": KEYS["partner"], "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        metrics = r.read().decode()
    assert 'invguard_guard_model_info{model="digits",model_version="2026-12-01.3"} 1.0' in metrics
    recs = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    served = [r for r in recs if r.get("kind") == "record" and r.get("decision") == "served"]
    assert served and all(r["model"] == "digits" and r["model_version"] == "2026-12-01.3" for r in served)
    # an incident reported without a version gets the guard's
    oc = OnCall(from_dict(doc), CollectorRegistry(), model_version=guard.model_version)

    async def go():
        await oc.start(lambda rec: asyncio.sleep(0), background=False)
        oc.report(Detection("manual", "on-call", "check", "digits"))
        await oc.tick()
        await oc.close()

    asyncio.run(go())
    (inc,) = IncidentStore(tmp_path / "incidents.db").find()
    assert inc.model_version == "2026-12-01.3"


def test_an_unset_webhook_secret_names_the_file_and_line_of_secret_env(tmp_path, monkeypatch):
    import pytest
    import yaml

    from invguard.core.errors import ConfigError
    from invguard.guard.config import load

    monkeypatch.delenv("INVGUARD_TEST_UNSET_SECRET", raising=False)
    doc = base_config(tmp_path)
    f = tmp_path / "guard.yaml"
    text = yaml.safe_dump(doc, sort_keys=False) + (
        "incidents:\n  store: incidents.db\n  webhook:\n    url: https://pager.example/hook\n"
        "    secret_env: INVGUARD_TEST_UNSET_SECRET\n"
    )
    f.write_text(text)
    line = text.splitlines().index("    secret_env: INVGUARD_TEST_UNSET_SECRET") + 1
    with pytest.raises(ConfigError) as e:
        OnCall(load(f), CollectorRegistry(), model_version="v1", clock=Clock(), transport=Receiver([]))
    assert str(e.value) == (
        f"{f}: incidents.webhook.secret_env (line {line}): environment variable "
        "INVGUARD_TEST_UNSET_SECRET is not set"
    )
