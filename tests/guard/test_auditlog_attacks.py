"""The audit log against the attacker it exists for: someone who can write to the log's directory
(but not to the key directory, nor to a witness). Each test performs the attack on a real log and
asserts the exact message a user sees."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess

import pytest
from typer.testing import CliRunner

from invguard.cli import app as cli
from invguard.core.errors import ConfigError
from invguard.guard.auditlog import (
    AuditLog,
    ChainKey,
    FileWitness,
    HttpWitness,
    RedisWitness,
    WitnessError,
    canonical,
    head_path,
    load_signing_key,
    public_hex,
    verify,
    witness_app,
)
from tests.guard.test_auditlog import CK, write_log
from tests.servers import serve


def _lines(log):
    return log.read_bytes().split(b"\n")[:-1]


def _flat(res):
    return " ".join(res.output.split())


def _cli(*args):
    return CliRunner().invoke(cli, ["log", "verify", *map(str, args)])


@pytest.fixture()
def chain_file(tmp_path):
    p = tmp_path / "keys" / "chain.key"
    p.parent.mkdir(exist_ok=True)
    p.write_text("6b" * 32)  # CK's secret, as the guard stores it
    return p


def test_deleting_the_oldest_records_up_to_each_checkpoint_is_named(tmp_path, chain_file):
    log = tmp_path / "guard.jsonl"
    _, _, key = write_log(log, 12, concurrent=False)  # genesis, 1-4, cp, 5-8, cp, 9-12, cp
    pub, pem = public_hex(key), tmp_path / "k.pem.pub"
    original = log.read_bytes()
    checkpoints = [i for i, x in enumerate(_lines(log)) if b'"kind":"checkpoint"' in x]
    assert checkpoints == [0, 5, 10, 15]
    for i in checkpoints[1:]:
        log.write_bytes(original)
        g = tmp_path / "g"
        subprocess.run(["sh", "-c", f"tail -n +{i + 1} {log} > {g} && mv {g} {log}"], check=True)
        size = json.loads(_lines(log)[0])["size"]
        expected = (
            f"{log}:1: the log does not start at its genesis: the first line is a checkpoint of {size} "
            "records that opens no file; the lines before it were deleted"
        )
        rep = verify(log, public_key=pub, chain_key=CK)
        assert not rep.ok and rep.problem == expected
        res = _cli(log, "--public-key", pem, "--chain-key", chain_file)
        assert res.exit_code == 1 and f"FAILED after 0 good records: {expected}" in _flat(res)
        with pytest.raises(ConfigError) as e:  # the guard refuses to continue the sequence
            AuditLog(log, signing_key=key, chain_key=CK)
        assert expected in str(e.value)
    log.write_bytes(original)
    subprocess.run(
        ["sh", "-c", f"tail -n +4 {log} > {tmp_path / 'g'} && mv {tmp_path / 'g'} {log}"], check=True
    )
    rep = verify(log, public_key=pub, chain_key=CK)
    assert rep.problem == (
        f"{log}:1 (record seq 3): the log does not start at its genesis: the first line is record seq 3; the "
        "lines before it were deleted"
    )


def test_deleting_the_oldest_rotated_files_is_named_and_a_kept_checkpoint_is_trusted_explicitly(
    tmp_path, chain_file
):
    log = tmp_path / "r.jsonl"
    write_log(log, 60, every=7, rotate=4096, concurrent=False)
    (tmp_path / "saved.head").write_bytes(head_path(log).read_bytes())
    first = tmp_path / "r.jsonl.1"
    opened = json.loads((tmp_path / "r.jsonl.2").read_text().splitlines()[0])["size"]
    first.unlink()  # the whole oldest file deleted
    res = _cli(log, "--public-key", tmp_path / "k.pem.pub", "--chain-key", chain_file)
    assert res.exit_code == 1
    assert (
        f"{tmp_path / 'r.jsonl.2'}:1: the log starts mid-chain: its first file opens after record {opened}, "
        f"and records 1-{opened} are not here; give the archived files, or pass --from <a saved signed "
        "checkpoint> to trust a starting point"
    ) in _flat(res)
    res = _cli(
        log,
        "--public-key",
        tmp_path / "k.pem.pub",
        "--chain-key",
        chain_file,
        "--from",
        tmp_path / "saved.head",
    )
    assert res.exit_code == 0, res.output
    assert _flat(res).startswith(f"OK: records seq {opened + 1}-60 verified ({60 - opened} records,")
    assert (
        f"starting from the trusted checkpoint {tmp_path / 'saved.head'} (records 1-{opened} are not here)"
        in _flat(res)
    )


def _cut_to(log, size):
    """The rollback: keep the log up to its checkpoint of ``size`` and put that checkpoint in the head."""
    lines = _lines(log)
    i = next(i for i, x in enumerate(lines) if b'"kind":"checkpoint"' in x and json.loads(x)["size"] == size)
    log.write_bytes(b"\n".join(lines[: i + 1]) + b"\n")
    head_path(log).write_bytes(lines[i])
    return lines[i]


def test_a_rollback_with_a_rewritten_head_is_caught_by_a_witness(tmp_path, chain_file):
    log = tmp_path / "logs" / "guard.jsonl"
    log.parent.mkdir()
    wpath = tmp_path / "other-mount" / "guard.head"
    key = load_signing_key(tmp_path / "k.pem")
    _, _, _ = write_log(log, 12, key=key, concurrent=False, witnesses=[FileWitness(wpath)])
    assert json.loads(wpath.read_text())["size"] == 12  # every signed head was published
    pub = tmp_path / "k.pem.pub"
    cp8 = _cut_to(log, 8)
    # without a witness the rollback is invisible: the log and its head agree (README: threat model)
    res = _cli(log, "--public-key", pub, "--chain-key", chain_file)
    assert res.exit_code == 0 and _flat(res).startswith("OK: records seq 1-8 verified (8 records,")
    res = _cli(log, "--public-key", pub, "--chain-key", chain_file, "--witness", f"file:{wpath}")
    expected = (
        f"{log}:0: rolled back: the witness file:{wpath} holds a signed head of 12 records, the log holds "
        "only 8"
    )
    assert res.exit_code == 1 and f"FAILED after 8 good records: {expected}" in _flat(res)
    # the guard refuses to restart on it (it would sign the shorter history)
    with pytest.raises(ConfigError) as e:
        AuditLog(log, signing_key=key, chain_key=CK, witnesses=[FileWitness(wpath)])
    assert expected in str(e.value)
    # and the witness never goes backwards
    with pytest.raises(WitnessError) as e:
        FileWitness(wpath).publish(json.loads(cp8))
    assert str(e.value) == (
        f"file:{wpath} refused a head of 8 records: it holds a signed head of 12 (never backwards)"
    )


def test_a_witness_older_than_the_log_is_fine_and_a_forked_one_is_caught(tmp_path, chain_file):
    log = tmp_path / "a.jsonl"
    key = load_signing_key(tmp_path / "k.pem")
    write_log(log, 12, key=key, concurrent=False)
    cp8 = next(json.loads(x) for x in _lines(log) if b'"size":8' in x and b'"kind":"checkpoint"' in x)
    old = tmp_path / "w-old.head"
    old.write_bytes(canonical(cp8))
    rep = verify(log, public_key=public_hex(key), chain_key=CK, witnesses=[FileWitness(old)])
    assert rep.ok and f"witness file:{old}: size 8" in rep.summary()
    # another history of the same size, signed with the same key: the witness holds its root
    other = tmp_path / "b.jsonl"
    write_log(other, 12, key=key, concurrent=False, fields=lambda i: {"client": f"other{i}"})
    fork = tmp_path / "w-fork.head"
    fork.write_bytes(head_path(other).read_bytes())
    rep = verify(log, public_key=public_hex(key), chain_key=CK, witnesses=[FileWitness(fork)])
    assert not rep.ok and rep.problem == (
        f"{log}:15: inconsistent with the witness file:{fork}: the log's first 12 records do not hash to the "
        "Merkle root it holds (the log was rewritten)"
    )
    # a witnessed head not signed by the pinned key is refused outright
    forged = {**cp8, "size": 99}
    (tmp_path / "w-bad.head").write_bytes(canonical(forged))
    rep = verify(
        log, public_key=public_hex(key), chain_key=CK, witnesses=[FileWitness(tmp_path / "w-bad.head")]
    )
    assert not rep.ok and rep.problem.endswith("witness checkpoint signature is invalid")


def _crash(w: AuditLog) -> None:
    """What a SIGKILL leaves: the records on disk, no closing checkpoint."""
    w._file.close()
    w._file = None
    for t in (w._task, w._publisher):
        if t is not None:
            t.cancel()
    if w._timer is not None:
        w._timer.cancel()
    w._io.shutdown(wait=True)


def test_a_forged_tail_after_a_crash_is_quarantined_reported_and_never_signed(tmp_path, chain_file):
    log = tmp_path / "a.jsonl"
    key = load_signing_key(tmp_path / "k.pem")

    async def run():
        w = AuditLog(log, signing_key=key, chain_key=CK, checkpoint_every=1000)
        await w.start()
        for i in range(10):
            await w.append({"client": f"c{i}", "decision": "served"})
        _crash(w)

    asyncio.run(run())
    lines = _lines(log)
    assert len(lines) == 11  # the genesis and ten unsigned records
    # the attacker rewrites records 7-10 (another client) and re-chains them: without our chain key
    attacker = ChainKey(os.urandom(32))
    prev = json.loads(lines[6])["hash"]
    forged = []
    for x in lines[7:]:
        doc = {k: v for k, v in json.loads(x).items() if k != "hash"}
        doc["client"], doc["prev"] = "mallory", prev
        body = canonical(doc)
        prev = attacker.digest(prev, body)
        forged.append(body[:-1] + b',"hash":"' + prev.encode() + b'"}')
    log.write_bytes(b"\n".join(lines[:7] + forged) + b"\n")
    rep = verify(log, public_key=public_hex(key), chain_key=CK)
    assert not rep.ok and rep.problem == (
        f"{log}:8 (record seq 7): hash does not match the record's content: the record was modified (or "
        "written without the chain key)"
    )
    counted = []
    w = AuditLog(log, signing_key=key, chain_key=CK, on_tail_rejected=counted.append)
    assert counted == [4]
    quarantine = tmp_path / "a.jsonl.rejected.1"
    assert w.rejected_tail == quarantine and quarantine.read_bytes() == b"\n".join(forged) + b"\n"
    assert b"mallory" not in log.read_bytes()
    after = [json.loads(x) for x in _lines(log)]
    assert [d["kind"] for d in after[-2:]] == ["record", "checkpoint"]
    assert after[-2]["event"] == "tail_rejected" and after[-2]["seq"] == 7
    assert after[-2]["quarantine"] == "a.jsonl.rejected.1" and after[-2]["quarantined_lines"] == 4
    assert after[-2]["problem"] == rep.problem and after[-1]["size"] == 7
    rep = verify(log, public_key=public_hex(key), chain_key=CK)
    assert rep.ok and rep.records == 7 and rep.verified_through == 7, rep.problem
    asyncio.run(w.close())


def test_witnesses_never_go_backwards_file_redis_and_http(tmp_path, redis_url):
    key = load_signing_key(tmp_path / "k.pem")
    log = tmp_path / "a.jsonl"
    store = tmp_path / "http-witness.head"
    app = witness_app(store, public_hex(key))
    with serve(app) as url:
        witnesses = [
            FileWitness(tmp_path / "w.head"),
            RedisWitness(redis_url, "test:witness"),
            HttpWitness(url),
        ]
        write_log(log, 12, key=key, concurrent=False, witnesses=witnesses)
        heads = [json.loads(x) for x in _lines(log) if b'"kind":"checkpoint"' in x]
        other = load_signing_key(tmp_path / "other.pem")
        write_log(tmp_path / "b.jsonl", 12, key=key, concurrent=False, fields=lambda i: {"x": i})
        fork = json.loads(head_path(tmp_path / "b.jsonl").read_text())
        for w in witnesses:
            assert w.read() == heads[-1], w.name
            with pytest.raises(WitnessError) as e:
                w.publish(heads[2])
            assert "refused a head of 8 records: it holds a signed head of 12 (never backwards)" in str(
                e.value
            )
            with pytest.raises(WitnessError) as e:
                w.publish(fork)
            assert "refused a head of 12 records with another root than the one it holds" in str(e.value)
        # the HTTP witness also checks the signature against its pinned key
        write_log(tmp_path / "c.jsonl", 20, key=other, concurrent=False)
        with pytest.raises(WitnessError) as e:
            HttpWitness(url).publish(json.loads(head_path(tmp_path / "c.jsonl").read_text()))
        assert str(e.value) == f"{url} answered 400 the head's signed by a different key than the pinned one"
        res = _cli(
            log,
            "--public-key",
            tmp_path / "k.pem.pub",
            "--witness",
            url,
            "--witness",
            f"{redis_url}#test:witness",
        )
        assert res.exit_code == 0 and f"witness {url}: size 12" in _flat(res), res.output


def test_a_restarted_guard_quarantines_a_forged_tail_and_counts_it(tmp_path, torch_model):
    """The guard's own start-up: its log (written with its keys) crashed with an unsigned tail, the
    tail rewritten as another client's; constructing the guard quarantines it and meters it."""
    from prometheus_client import generate_latest

    from invguard.guard import from_dict
    from invguard.guard.app import Guard
    from invguard.guard.keys import open_keys
    from tests.guard.conftest import base_config

    cfg = base_config(tmp_path, audit={"checkpoint_every": 1000})
    log = tmp_path / "audit.jsonl"
    keys = open_keys(str(log), None, None)

    async def run():
        w = AuditLog(log, signing_key=keys.signing_key, chain_key=keys.chain_key, checkpoint_every=1000)
        await w.start()
        for i in range(5):
            await w.append({"client": "partner-client", "decision": "served", "i": i})
        _crash(w)

    asyncio.run(run())
    lines = _lines(log)
    attacker = ChainKey(os.urandom(32))
    prev = json.loads(lines[3])["hash"]
    for i in (4, 5):
        doc = {k: v for k, v in json.loads(lines[i]).items() if k != "hash"}
        doc["client"], doc["prev"] = "someone-else", prev
        prev = attacker.digest(prev, canonical(doc))
        lines[i] = canonical({**doc, "hash": prev})
    log.write_bytes(b"\n".join(lines) + b"\n")
    guard = Guard(from_dict(cfg), model=torch_model)
    assert "invguard_guard_audit_tail_rejected_lines_total 2.0" in generate_latest(guard.registry).decode()
    assert (tmp_path / "audit.jsonl.rejected.1").read_bytes().count(b"someone-else") == 2
    assert b"someone-else" not in log.read_bytes()
    rep = verify(log, public_key=public_hex(keys.signing_key), chain_key=keys.chain_key)
    assert rep.ok and rep.records == 4 and rep.verified_through == 4, rep.problem
    asyncio.run(guard.audit.close())


def test_a_witness_that_cannot_take_the_heads_is_counted_and_the_records_still_served(tmp_path):
    (tmp_path / "not-a-dir").write_text("a file where the witness's directory should be")
    witness = FileWitness(tmp_path / "not-a-dir" / "guard.head")
    failed: list[int] = []
    key = load_signing_key(tmp_path / "k.pem")

    async def run():
        w = AuditLog(
            tmp_path / "a.jsonl", signing_key=key, chain_key=CK, checkpoint_every=2, witnesses=[witness],
            on_witness_failed=failed.append,
        )  # fmt: skip
        await w.start()
        seqs = [await w.append({"i": i}) for i in range(4)]
        await w.close()
        return seqs, w.witness_problem

    seqs, problem = asyncio.run(run())
    assert seqs == [1, 2, 3, 4] and failed and set(failed) == {1}
    assert problem is not None and problem.startswith(
        f"file:{tmp_path / 'not-a-dir' / 'guard.head'} cannot be"
    )


def _heads(log):
    """Every signed checkpoint of the log's files, by size (the heads it published)."""
    from invguard.guard.auditlog import segments

    return {
        d["size"]: d
        for f in segments(log)
        for d in map(json.loads, f.read_text().splitlines())
        if d["kind"] == "checkpoint"
    }


def test_a_witness_holding_another_historys_head_is_never_overwritten(tmp_path):
    """Hole: a witness took any larger head, even of another history. Chain b's witness holds b's
    8-record head; chain a's files (24 records, rotated so that recovery cannot compare the
    witness's head with the live file) are put in b's place. The writer must see that the
    witness's root is not the log's root at 8 records, refuse to publish, log and count it."""
    key = load_signing_key(tmp_path / "k.pem")
    wb = FileWitness(tmp_path / "other-mount" / "b.head")
    write_log(tmp_path / "b.jsonl", 8, key=key, witnesses=[wb])
    held = wb.path.read_bytes()
    assert json.loads(held)["size"] == 8
    a = tmp_path / "a.jsonl"
    write_log(a, 24, key=key, rotate=1500)
    assert json.loads(a.read_text().splitlines()[0])["size"] > 8  # the live file opens after record 8
    counted: list[int] = []

    async def restart(witness):
        log = AuditLog(
            a, chain_key=CK, signing_key=key, witnesses=[witness], checkpoint_every=4, rotate_bytes=1500,
            on_witness_inconsistent=counted.append,
        )  # fmt: skip
        await log.start()
        await log.append({"decision": "served"})
        await log.close()
        return log

    log = asyncio.run(restart(wb))
    assert wb.path.read_bytes() == held  # not overwritten
    assert counted and set(counted) == {1}  # every head it would have published (one witness each)
    assert log.witness_problem == (
        f"the witness {wb.name} holds a head of 8 records whose Merkle root is not this log's at 8 "
        "records: it holds another history (the chain was swapped or rewritten); not overwritten"
    )
    # a witness of a's own history that lags behind (its head of 8 records, in a rotated file)
    # is consistent: it advances
    wa = FileWitness(tmp_path / "other-mount" / "a.head")
    wa.path.write_bytes(canonical(_heads(a)[8]))
    counted.clear()
    log = asyncio.run(restart(wa))
    assert counted == [] and log.witness_problem is None
    assert json.loads(wa.path.read_bytes())["size"] == 26


def test_a_deleted_chain_whose_witness_holds_a_head_does_not_start_afresh(tmp_path):
    """Hole: recover() returned a new, empty chain without consulting the witnesses when no file
    was left: deleting a whole chain (head included) was a rollback the next start laundered."""
    key = load_signing_key(tmp_path / "k.pem")
    w = FileWitness(tmp_path / "other-mount" / "g.head")
    log = tmp_path / "g.jsonl"
    write_log(log, 6, key=key, witnesses=[w])
    for f in tmp_path.glob("g.jsonl*"):
        f.unlink()
    with pytest.raises(ConfigError) as e:
        AuditLog(log, chain_key=CK, signing_key=key, witnesses=[w])
    assert str(e.value) == (
        f"audit log {log} has no files, but the witness {w.name} holds a signed head of 6 records of it: "
        "the chain was deleted (rolled back); investigate (keep the witness's head as evidence); to start "
        "a new log on purpose, give it a new witness"
    )
    assert not log.exists()
