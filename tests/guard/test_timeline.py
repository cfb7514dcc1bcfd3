"""`invguard log timeline`: a client's records replayed from a verified log, across rotated files;
an unverifiable log or range is refused."""

from __future__ import annotations

import asyncio
import json

import pytest
from typer.testing import CliRunner

from invguard.cli import app
from invguard.core.errors import ConfigError
from invguard.guard import timeline as tl
from invguard.guard.auditlog import AuditLog, ChainKey, load_public_key_hex, load_signing_key
from invguard.guard.incidents import Detection, IncidentStore

T0 = 1_800_000_000.0
CHAIN = b"c" * 32


# an input two clients sent, and another whose HMAC shares its first 10 hex digits
SAME = "5f0c1a2b3c" + "d4" * 26 + "e1"
NEAR = SAME[:10] + "00" * 26 + "e1"


def req(client, i, *, hm=None, decision="served", ent=(0.5, 1.5), **kw):
    return {
        "client": client,
        "role": "partner",
        "route": "/v1/models/{name}/predict",
        "status": 200 if decision == "served" else 429,
        "decision": decision,
        "policy": "top_k=3, rounded to 2 decimals",
        "input_hmac": hm or f"{client}-{i:04d}",
        "rows": 2,
        "labels": [1, 2],
        "entropy": list(ent),
        **kw,
    }


@pytest.fixture()
def log(tmp_path):
    """A log of 3 clients over rotated files: acme probes (detected and blocked), zeta is normal,
    both send one identical input; the last records lie after the last signed checkpoint."""
    now = [T0]
    keyfile = tmp_path / "keys" / "log.pem"
    path = tmp_path / "audit" / "guard.jsonl"
    chain = tmp_path / "keys" / "chain"
    chain.parent.mkdir(parents=True)
    chain.write_text(CHAIN.hex() + "\n")
    expected: dict[str, list[int]] = {"acme": [], "zeta": []}

    async def go():
        a = AuditLog(
            path,
            signing_key=load_signing_key(keyfile),
            chain_key=ChainKey(CHAIN),
            checkpoint_every=5,
            rotate_bytes=4096,
            wall_clock=lambda: now[0],
        )
        await a.start()
        for i in range(40):
            now[0] += 60
            client = "acme" if i % 2 else "zeta"
            hm = SAME if i in (6, 7) else (NEAR if i == 8 else None)
            expected[client].append(
                await a.append(req(client, i, hm=hm, ent=(0.01, 0.02) if client == "acme" else (0.9, 1.1)))
            )
            if i == 21:
                det = {"detector": "knn", "client": "acme", "score": 0.9}
                await a.append(
                    {"route": "detection", "decision": "detection", "client": "acme", "detection": det}
                )
                m = {"change": "applied", "client": "acme", "action": "block", "until": now[0] + 600}
                await a.append(
                    {"route": "detection", "decision": "mitigation", "client": "acme", "mitigation": m}
                )
        await a.close()
        # two records after the last checkpoint (a crash before the next one): the chain key checks them
        a = AuditLog(
            path,
            signing_key=load_signing_key(keyfile),
            chain_key=ChainKey(CHAIN),
            checkpoint_every=1000,
            wall_clock=lambda: now[0],
        )
        await a.start()
        now[0] += 60
        expected["acme"].append(await a.append(req("acme", 99)))
        # no close(): the process dies here, before a checkpoint covers the record

    asyncio.run(go())
    return path, load_public_key_hex(keyfile), chain, expected


def test_timeline_equals_the_records_a_client_produced_across_rotated_files(log):
    path, pk, chain, expected = log
    from invguard.guard.auditlog import load_chain_key, segments

    assert len(segments(path)) > 2  # rotated
    t = tl.build(path, public_key=pk, chain_key=load_chain_key(chain, create=False), clients=["zeta"])
    assert [e.seq for e in t.entries] == expected["zeta"] and t.clients == ["zeta"]
    assert t.verified.startswith("OK: records seq 1-")
    raw = [json.loads(line) for f in segments(path) for line in f.read_text().splitlines()]
    zeta = [r for r in raw if r.get("kind") == "record" and r.get("client") == "zeta"]
    assert [(e.time, e.input_hmac, e.decision, e.rows) for e in t.entries] == [
        (r["time"], r["input_hmac"], r["decision"], r["rows"]) for r in zeta
    ]
    assert t.entries[0].entropy_min == 0.9 and t.entries[0].entropy_mean == 1.0
    assert all(e.mitigation == "" and e.detector_hits == "" for e in t.entries)

    # acme: the replayed detector hits and the block in force after the detection
    t = tl.build(path, public_key=pk, chain_key=load_chain_key(chain, create=False), clients=["acme"])
    assert [e.seq for e in t.entries] == [
        r["seq"] for r in raw if r.get("kind") == "record" and r.get("client") == "acme"
    ]
    assert [e.decision for e in t.entries if e.route == "detection"] == ["detection", "mitigation"]
    requests = [e for e in t.entries if e.route != "detection"]
    assert [e.seq for e in requests] == expected["acme"]
    before = [e for e in requests if not e.mitigation]
    after = [e for e in requests if e.mitigation]
    assert before and after and all(e.detector_hits == "knn" for e in after)
    assert (
        after[0].mitigation.startswith("block until 2027-") and len(after) == 4
    )  # its requests of the 10 minutes of block

    # the same input from two clients; a time window
    t = tl.build(path, public_key=pk, chain_key=load_chain_key(chain, create=False), input_hmac=SAME)
    assert t.clients == ["acme", "zeta"] and len(t.entries) == 2
    # a unique prefix (upper case too) finds the same rows and names the full HMAC in the query
    t = tl.build(
        path, public_key=pk, chain_key=load_chain_key(chain, create=False), input_hmac=SAME[:12].upper()
    )
    assert t.clients == ["acme", "zeta"] and len(t.entries) == 2 and t.query["input_hmac"] == SAME
    t = tl.build(
        path,
        public_key=pk,
        chain_key=load_chain_key(chain, create=False),
        clients=["zeta"],
        since=tl.parse_time("2027-01-15T08:10:00Z", "--from"),
        until=tl.parse_time("2027-01-15T08:20:00Z", "--to"),
    )
    assert t.entries and all("08:10:00" <= e.time[11:19] <= "08:20:00" for e in t.entries)


def test_an_unverifiable_log_or_range_is_refused(log):
    path, pk, _, expected = log
    # without the chain key the last records are not covered by a signed checkpoint
    with pytest.raises(tl.TimelineError, match=r"lie after the last signed checkpoint .* pass --chain-key"):
        tl.build(path, public_key=pk, clients=["acme"])
    # a range that ends before them is fine
    t = tl.build(path, public_key=pk, clients=["zeta"])
    assert [e.seq for e in t.entries] == expected["zeta"]
    # a modified record: the whole log is refused, naming the record
    from invguard.guard.auditlog import segments

    f = segments(path)[1]
    lines = f.read_text().splitlines(keepends=True)
    i = next(k for k, line in enumerate(lines) if '"client":"zeta"' in line)
    lines[i] = lines[i].replace('"rows":2', '"rows":3')
    f.write_text("".join(lines))
    with pytest.raises(
        tl.TimelineError, match=r"refusing to build a timeline from a log that does not verify: FAILED"
    ):
        tl.build(path, public_key=pk, clients=["zeta"])
    with pytest.raises(Exception, match="say whose requests"):
        tl.build(path.with_name("guard.jsonl.1"), public_key=pk)


def test_cli_formats_and_the_incident_timeline(log, tmp_path):
    path, _, chain, expected = log
    pub = tmp_path / "keys" / "log.pem.pub"
    store = IncidentStore(tmp_path / "incidents.db", clock=lambda: T0 + 22 * 60)
    inc, _ = store.open(
        Detection(
            "detection",
            "knn",
            "probe",
            "digits",
            clients=["acme"],
            evidence={"seqs": expected["acme"][3:5]},
            first_seen=T0 + 20 * 60,
            last_seen=T0 + 22 * 60,
        )
    )
    store.clock = lambda: T0 + 30 * 60
    store.resolve(inc.id, "alice", "blocked")
    runner = CliRunner()
    base = ["log", "timeline", str(path), "--public-key", str(pub), "--chain-key", str(chain)]
    r = runner.invoke(app, [*base, "--client", "zeta", "--format", "csv"])
    assert r.exit_code == 0, r.output
    rows = [line.split(",") for line in r.stdout.strip().splitlines()]
    assert rows[0] == list(tl.COLUMNS) and len(rows) == 1 + len(expected["zeta"])
    r = runner.invoke(
        app,
        [*base, "--incident", str(inc.id), "--incidents", str(tmp_path / "incidents.db"), "--format", "json"],
    )
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout[r.stdout.index("{") :])
    seqs = [e["seq"] for e in doc["entries"] if e["route"] != "detection"]
    assert (
        set(seqs) <= set(expected["acme"]) and expected["acme"][3] in seqs
    )  # from 1 h before, to its resolution
    assert expected["acme"][-1] not in seqs  # after the resolution
    assert [e["seq"] for e in doc["entries"] if e["evidence"]] == expected["acme"][3:5]
    r = runner.invoke(app, [*base, "--client", "acme"])
    assert r.exit_code == 0 and "verified: OK" in r.output and "block" in r.output
    r = runner.invoke(app, ["log", "timeline", str(path), "--public-key", str(pub), "--client", "acme"])
    assert (
        r.exit_code == 1
        and "lie after the last signed checkpoint" in r.output
        and "Traceback" not in r.output
    )
    r = runner.invoke(app, [*base, "--client", "acme", "--from", "yesterday"])
    assert r.exit_code == 2 and "--from: 'yesterday' is not an ISO 8601 time" in r.output


def test_an_abbreviated_or_ambiguous_input_hmac_is_refused(log):
    path, pk, chain, _ = log
    from invguard.guard.auditlog import load_chain_key

    def build(h):
        return tl.build(path, public_key=pk, chain_key=load_chain_key(chain, create=False), input_hmac=h)

    for bad in ("5f0c...e1", "5f0c1a2", "not-hex!"):
        with pytest.raises(ConfigError) as e:
            build(bad)
        assert str(e.value) == (
            "--input-hmac: expected an input's HMAC-SHA256 in hex (all 64 digits, or a prefix of at "
            f"least 8 that only it starts with), got {bad!r}"
        )
    with pytest.raises(ConfigError) as e:
        build(SAME[:8])
    assert str(e.value) == (
        f"--input-hmac {SAME[:8]}: 2 different input HMACs in the log start with it ({NEAR}, {SAME}); "
        "give more digits"
    )
