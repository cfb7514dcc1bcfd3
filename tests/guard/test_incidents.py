"""The incident store: lifecycle with timestamps, MTTA/MTTR, grouping, outboxes, history gates, metrics."""

from __future__ import annotations

import sqlite3
import threading

import pytest
from prometheus_client import CollectorRegistry

from invguard.guard.incidents import Detection, IncidentCollector, IncidentError, IncidentStore


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def probe(client: str = "acme", seqs=(1, 2), **kw) -> Detection:
    d = {
        "source": "detection",
        "detector": "knn",
        "title": f"query-based inversion probe from {client}",
        "model": "digits",
        "model_version": "v1",
        "clients": [client],
        "keys": [f"{client}-key"],
        "evidence": {"seqs": list(seqs), "fingerprints": ["f" + client]},
    }
    d.update(kw)
    return Detection(**d)


@pytest.fixture()
def store(tmp_path):
    clock = Clock()
    return IncidentStore(tmp_path / "incidents.db", clock=clock, group_window=600), clock


def test_lifecycle_timestamps_and_mttr(store):
    s, clock = store
    inc, created = s.open(probe())
    assert created and inc.state == "open" and inc.opened_at == clock.t
    assert inc.model_version == "v1" and inc.clients == ("acme",) and inc.evidence["seqs"] == [1, 2]
    clock.t += 120
    inc = s.acknowledge(inc.id, "alice", "looking")
    assert inc.state == "acknowledged" and inc.acked_by == "alice" and inc.time_to_acknowledge == 120
    clock.t += 3480
    inc = s.resolve(inc.id, "alice", "false positive: a load test")
    assert inc.state == "resolved" and inc.time_to_resolve == 3600 and inc.resolution.startswith("false")
    assert [t.action for t in s.transitions(inc.id)] == ["opened", "acknowledged", "resolved"]
    assert [t.actor for t in s.transitions(inc.id)] == ["guard", "alice", "alice"]

    # a second incident resolved without an ack: its first response is the resolution
    other, _ = s.open(probe("zeta"))
    clock.t += 7200
    other = s.resolve(other.id, "bob", "key revoked")
    assert other.time_to_acknowledge == other.time_to_resolve == 7200
    st = s.stats()
    assert (st.opened, st.acknowledged, st.resolved, st.open_now) == (2, 2, 2, 0)
    assert st.mttr_seconds == pytest.approx((3600 + 7200) / 2)
    assert st.mtta_seconds == pytest.approx((120 + 7200) / 2)
    assert st.ttr_max_seconds == 7200
    # a period holding only the second resolution
    assert s.stats(since=clock.t - 10).mttr_seconds == 7200


def test_forbidden_transitions_name_the_state(store):
    s, _ = store
    inc, _ = s.open(probe())
    s.acknowledge(inc.id, "alice")
    with pytest.raises(IncidentError, match=r"incident #1 is acknowledged; only an open incident can be"):
        s.acknowledge(inc.id, "bob")
    with pytest.raises(IncidentError, match=r"resolving incident #1 needs a note"):
        s.resolve(inc.id, "alice", " ")
    s.resolve(inc.id, "alice", "done")
    with pytest.raises(IncidentError, match=r"incident #1 was already resolved by alice at 2027-"):
        s.resolve(inc.id, "alice", "again")
    with pytest.raises(IncidentError, match=r"no incident #9 in .*incidents.db"):
        s.get(9)
    with pytest.raises(IncidentError, match=r"incident source must be one of detection, slo"):
        s.open(probe(source="rumour"))


def test_related_detections_group_into_one_incident(store):
    s, clock = store
    a, _ = s.open(probe("acme", seqs=(1, 2)))
    clock.t += 300
    b, created_b = s.open(probe("acme", seqs=(2, 7), clients=["acme", "acme-2"]))
    assert not created_b and b.id == a.id
    assert b.detections == 2 and b.clients == ("acme", "acme-2") and b.evidence["seqs"] == [1, 2, 7]
    assert b.first_seen == a.first_seen and b.last_seen == clock.t
    # the cluster now includes acme-2: its next hit joins too
    c, created_c = s.open(probe("acme-2", seqs=(9,)))
    assert not created_c and c.id == a.id
    # another client, another detector, or past the window: new incidents
    assert s.open(probe("zeta"))[1]
    assert s.open(probe("acme", detector="prada"))[1]
    clock.t += 601
    assert s.open(probe("acme"))[1]
    # a resolved incident never absorbs new hits
    s.resolve(a.id, "alice", "blocked")
    assert len(s.find(state="active")) == 3 and len(s.find()) == 4
    assert [i.id for i in s.find(client="acme-2")] == [a.id]


def test_grouping_is_atomic_across_threads(tmp_path):
    s = IncidentStore(tmp_path / "i.db", group_window=600)

    def hit(i):
        s.open(probe("acme", seqs=(i,)))

    ts = [threading.Thread(target=hit, args=(i,)) for i in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    (inc,) = s.find()
    assert inc.detections == 8 and sorted(inc.evidence["seqs"]) == list(range(8))


def test_store_is_sqlite_wal_and_refuses_another_file(tmp_path):
    IncidentStore(tmp_path / "i.db")
    assert sqlite3.connect(tmp_path / "i.db").execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"not a database at all" * 100)
    with pytest.raises(Exception, match=r"bad.db: not an incident store"):
        IncidentStore(bad)


def test_audit_outbox_claims_each_transition_once(store):
    s, _ = store
    inc, _ = s.open(probe())
    s.open(probe(seqs=(5,)))  # grouped: no state change, nothing to audit
    s.acknowledge(inc.id, "alice")
    first = s.claim_audit()
    assert [t.action for t in first] == ["opened", "acknowledged"]
    assert s.claim_audit() == []
    s.unmark_audited([first[1].id])  # the write failed: given back
    assert [t.action for t in s.claim_audit()] == ["acknowledged"]


def test_failed_gates_in_the_history_open_incidents_once(store, tmp_path):
    from invguard.audit.history import connect

    s, _ = store
    hist = tmp_path / "history.db"
    with connect(hist) as con:
        for i, passed in enumerate((1, 0, 0)):
            con.execute(
                "INSERT INTO runs (model, started_at, finished_at, config_hash, passed, summary, attacks) "
                "VALUES (?, ?, ?, ?, ?, ?, '[]')",
                ("digits", 1.0 + i, 2.0 + i, f"h{i}", passed, f"run {i}"),
            )
    opened = s.open_from_history(hist)
    assert [(i.source, i.severity, i.evidence["run_id"]) for i in opened] == [
        ("audit", "ticket", 2),
        ("audit", "ticket", 3),
    ]
    assert opened[0].title == "audit gate failed for digits: run 1" and opened[0].first_seen == 3.0
    assert s.open_from_history(hist) == []
    with pytest.raises(IncidentError, match=r"nothing.db: no audit history store"):
        s.open_from_history(tmp_path / "nothing.db")


def test_collector_exports_m8(store):
    s, clock = store
    a, _ = s.open(probe())
    s.open(probe("zeta"))
    clock.t += 100
    s.resolve(a.id, "alice", "done")
    reg = CollectorRegistry()
    reg.register(IncidentCollector(s))
    lbl = {"model": "digits", "model_version": "v1"}
    assert reg.get_sample_value("invguard_incident_time_to_resolve_seconds_sum", lbl) == 100
    assert reg.get_sample_value("invguard_incident_time_to_resolve_seconds_count", lbl) == 1
    assert reg.get_sample_value("invguard_incidents_opened_total", lbl) == 2
    act = {**lbl, "state": "open", "severity": "page", "source": "detection"}
    assert reg.get_sample_value("invguard_incidents_active", act) == 1
    assert reg.get_sample_value("invguard_incidents_oldest_active_age_seconds", act) == 100


def test_cli_lifecycle_and_mttr(tmp_path):
    import json

    from typer.testing import CliRunner

    from invguard.cli import app

    runner = CliRunner()
    db = str(tmp_path / "incidents.db")

    def cli(*args):
        return runner.invoke(app, ["incidents", *args, "--store", db])

    r = cli(
        "open",
        "--title",
        "partner exfiltrating scores",
        "--by",
        "alice",
        "--model",
        "digits",
        "--client",
        "acme",
    )
    assert r.exit_code == 0 and "incident #1 opened" in r.output, r.output
    r = cli("list", "--format", "json")
    (row,) = json.loads(r.output)
    assert row["state"] == "open" and row["clients"] == "acme" and row["source"] == "manual"
    assert cli("ack", "1", "--by", "bob", "--note", "looking").exit_code == 0
    r = cli("ack", "1", "--by", "bob")
    assert r.exit_code == 2 and "incident #1 is acknowledged; only an open incident" in r.output
    r = cli("resolve", "1", "--by", "bob", "--note", "key revoked")
    assert r.exit_code == 0 and "incident #1 resolved by bob after" in r.output
    r = cli("show", "1", "--format", "json")
    doc = json.loads(r.output)
    assert [t["action"] for t in doc["transitions"]] == ["opened", "acknowledged", "resolved"]
    assert doc["resolution"] == "key revoked" and doc["resolved_by"] == "bob"
    r = cli("show", "1")
    assert r.exit_code == 0 and "evidence" in r.output and "acknowledged" in r.output
    r = cli("stats", "--format", "json")
    (st,) = json.loads(r.output)
    assert st["resolved"] == 1 and st["mttr_hours"] is not None and st["open_now"] == 0
    r = cli("show", "7")
    assert r.exit_code == 2 and "no incident #7" in r.output and "Traceback" not in r.output
    assert cli("list", "--state", "nope").exit_code == 2


def test_cli_sync_history_with_config_reads_the_configs_history(tmp_path, monkeypatch):
    """`sync-history --config` reads incidents.history relative to the config file, not the CWD."""
    import yaml
    from typer.testing import CliRunner

    from invguard.audit.history import connect
    from invguard.cli import app
    from tests.guard.conftest import base_config

    etc = tmp_path / "etc"
    etc.mkdir()
    with connect(etc / "history.db") as con:
        con.execute(
            "INSERT INTO runs (model, started_at, finished_at, config_hash, passed, summary, attacks) "
            "VALUES ('digits', 1.0, 2.0, 'h', 0, 'run 0', '[]')"
        )
    doc = base_config(tmp_path)
    doc["incidents"] = {"store": "incidents.db", "history": "history.db"}
    cfg = etc / "guard.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    runner = CliRunner()
    r = runner.invoke(app, ["incidents", "sync-history", "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    assert f"1 incident(s) opened from {etc / 'history.db'}" in r.output
    assert not (elsewhere / ".invguard").exists()
    assert [i.source for i in IncidentStore(etc / "incidents.db").find(state=None)] == ["audit"]
    doc["incidents"] = {"store": "incidents.db"}
    cfg.write_text(yaml.safe_dump(doc))
    r = runner.invoke(app, ["incidents", "sync-history", "--config", str(cfg)])
    assert r.exit_code == 2
    assert f"{cfg}: incidents.history is not set" in " ".join(r.output.split())
