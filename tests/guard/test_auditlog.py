"""The audit log: RFC 6962 Merkle hashing, group commit, verification and every kind of tampering."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import stat

import pytest
from typer.testing import CliRunner

from invguard.cli import app as cli
from invguard.core.errors import ConfigError
from invguard.guard.auditlog import (
    AuditLog,
    ChainKey,
    MerkleAccumulator,
    head_path,
    leaf_hash,
    load_signing_key,
    merkle_root,
    public_hex,
    segments,
    verify,
)

CK = ChainKey(b"k" * 32)  # the chain key of every log written here


def test_merkle_matches_rfc6962_definition_and_known_vectors():
    # RFC 6962 2.1: the empty tree hashes to SHA-256(""); a one-leaf tree to SHA-256(0x00 || leaf)
    assert merkle_root([]).hex() == hashlib.sha256(b"").hexdigest()
    assert leaf_hash(b"").hex() == "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    leaves = [f"leaf-{i}".encode() for i in range(40)]
    acc = MerkleAccumulator()
    assert acc.root() == merkle_root([])
    for n in range(1, 41):
        acc.add(leaves[n - 1])
        assert acc.root() == merkle_root(leaves[:n]), n
    # n = 3 by hand: split k = 2
    h = [leaf_hash(x) for x in leaves[:3]]
    node = lambda a, b: hashlib.sha256(b"\x01" + a + b).digest()  # noqa: E731
    assert merkle_root(leaves[:3]) == node(node(h[0], h[1]), h[2])


def write_log(path, n, *, every=4, rotate=None, key=None, concurrent=True, witnesses=(), fields=None):
    key = key or load_signing_key(path.parent / "k.pem")
    batches = []

    async def main():
        log = AuditLog(
            path,
            chain_key=CK,
            signing_key=key,
            checkpoint_every=every,
            rotate_bytes=rotate,
            witnesses=witnesses,
        )
        orig = log._write_sync

        def counted(blob, head):
            batches.append(blob.count(b'"kind":"record"'))
            orig(blob, head)

        log._write_sync = counted
        await log.start()
        recs = [
            fields(i)
            if fields
            else {"client": f"c{i}", "role": "partner", "decision": "served", "labels": [i % 10]}
            for i in range(n)
        ]
        if concurrent:
            seqs = await asyncio.gather(*(log.append(r) for r in recs))
        else:
            seqs = [await log.append(r) for r in recs]
        await log.close()
        return seqs

    return asyncio.run(main()), batches, key


def test_group_commit_batches_concurrent_records_and_log_verifies(tmp_path):
    log = tmp_path / "a.jsonl"
    seqs, batches, key = write_log(log, 50)
    assert sorted(seqs) == list(range(1, 51))
    assert sum(batches) == 50
    assert len(batches) < 50  # concurrent requests share an fsync
    rep = verify(log, chain_key=CK, public_key=public_hex(key))
    assert rep.ok, rep.problem
    assert (rep.records, rep.checkpoints) == (50, 14)  # the genesis, every 4 records, one at close
    assert rep.warnings == []
    lines = log.read_text().splitlines()
    genesis, first = json.loads(lines[0]), json.loads(lines[1])
    assert (genesis["kind"], genesis["size"], genesis["opening"]) == ("checkpoint", 0, True)
    assert first["prev"] == "0" * 64 and first["seq"] == 1
    assert first["hash"] == CK.digest(
        first["prev"],
        json.dumps(
            {k: v for k, v in first.items() if k != "hash"}, sort_keys=True, separators=(",", ":")
        ).encode(),
    )
    assert json.loads(head_path(log).read_text())["size"] == 50


@pytest.fixture()
def good_log(tmp_path):
    log = tmp_path / "a.jsonl"
    _, _, key = write_log(log, 12, concurrent=False)
    return log, key


def _lines(log):
    return log.read_bytes().split(b"\n")[:-1]


def _put(log, lines):
    log.write_bytes(b"\n".join(lines) + b"\n")


def test_modified_byte_is_named(good_log):
    log, key = good_log
    lines = _lines(log)
    # lines: genesis, records 1-4, checkpoint, records 5-8, checkpoint, ...: line 7 holds record 5
    assert b'"client":"c4"' in lines[6]
    lines[6] = lines[6].replace(b'"client":"c4"', b'"client":"c9"')
    _put(log, lines)
    rep = verify(log, chain_key=CK, public_key=public_hex(key))
    assert not rep.ok
    assert rep.bad_seq == 5 and rep.bad_line == 7
    assert "hash does not match the record's content: the record was modified" in rep.problem
    # without the chain key the record cannot be checked alone: the next signed checkpoint catches it
    rep = verify(log, chain_key=None, public_key=public_hex(key))
    assert not rep.ok and rep.bad_line == 11
    assert "checkpoint Merkle root does not match the records before it" in rep.problem


def test_deleted_line_is_detected(good_log):
    log, key = good_log
    lines = _lines(log)
    del lines[3]  # record seq 3
    _put(log, lines)
    rep = verify(log, chain_key=CK, public_key=public_hex(key))
    assert not rep.ok and rep.bad_seq == 4 and rep.bad_line == 4
    assert rep.records == 2
    assert "chain broken" in rep.problem


def test_swapped_lines_are_detected(good_log):
    log, key = good_log
    lines = _lines(log)
    lines[2], lines[3] = lines[3], lines[2]
    _put(log, lines)
    rep = verify(log, chain_key=CK, public_key=public_hex(key))
    assert not rep.ok and rep.bad_line == 3 and rep.bad_seq == 3
    assert "deleted, inserted or reordered" in rep.problem


def test_inserted_record_is_detected(good_log):
    log, key = good_log
    lines = _lines(log)
    forged = json.loads(lines[2])
    forged["client"] = "mallory"
    lines.insert(3, json.dumps(forged, sort_keys=True, separators=(",", ":")).encode())
    _put(log, lines)
    rep = verify(log, chain_key=CK, public_key=public_hex(key))
    assert not rep.ok and rep.bad_line == 4
    assert "modified" in rep.problem


def test_truncation_after_a_checkpoint_is_detected_by_the_signed_head(good_log):
    log, key = good_log
    lines = _lines(log)
    # 12 records, checkpoints after 4, 8 and 12: the head covers 12; keep the first 10 lines (to 8)
    _put(log, lines[:10])
    rep = verify(log, chain_key=CK, public_key=public_hex(key))
    assert not rep.ok
    assert "log truncated: the signed head checkpoint covers 12 records, the log holds only 8" in rep.problem
    # truncation in the middle of a line (not at a line end) is caught the same way
    log.write_bytes(b"\n".join(lines[:-1])[:-40])  # record 12 cut in the middle
    rep = verify(log, chain_key=CK, public_key=public_hex(key))
    assert not rep.ok and "log truncated" in rep.problem


def test_forged_checkpoint_and_wrong_key_are_detected(good_log, tmp_path):
    log, key = good_log
    other = public_hex(load_signing_key(tmp_path / "other.pem"))
    rep = verify(log, chain_key=CK, public_key=other)
    assert not rep.ok and "different key than the pinned one" in rep.problem
    lines = _lines(log)
    cp = json.loads(lines[5])
    assert cp["kind"] == "checkpoint"
    cp["root"] = "00" * 32
    lines[5] = json.dumps(cp, sort_keys=True, separators=(",", ":")).encode()
    _put(log, lines)
    rep = verify(log, chain_key=CK, public_key=public_hex(key))
    assert not rep.ok and rep.bad_line == 6 and "Merkle root does not match" in rep.problem


def test_rotation_keeps_the_chain_across_files(tmp_path):
    log = tmp_path / "r.jsonl"
    _, _, key = write_log(log, 60, every=7, rotate=4096, concurrent=False)
    files = segments(log)
    assert len(files) >= 3
    rep = verify(log, chain_key=CK, public_key=public_hex(key))
    assert rep.ok, rep.problem
    assert rep.records == 60 and len(rep.files) == len(files)
    files[1].unlink()  # a whole rotated file in the middle goes missing
    rep = verify(log, chain_key=CK, public_key=public_hex(key))
    assert not rep.ok and f"{files[2]}:1: checkpoint says" in rep.problem


def test_restart_continues_the_chain_and_drops_a_torn_tail(tmp_path):
    log = tmp_path / "a.jsonl"
    _, _, key = write_log(log, 5, every=3)
    with open(log, "ab") as f:
        f.write(b'{"kind":"record","seq":6,"cli')  # a write cut by a crash, never acknowledged
    rep = verify(log, chain_key=CK, public_key=public_hex(key))
    assert rep.ok and rep.records == 5
    assert "incomplete last line ignored" in rep.warnings[0]
    seqs, _, _ = write_log(log, 4, every=3, key=key)
    assert sorted(seqs) == [6, 7, 8, 9]
    rep = verify(log, chain_key=CK, public_key=public_hex(key))
    assert rep.ok and rep.records == 9 and rep.warnings == []


def test_guard_refuses_to_extend_a_tampered_log(good_log):
    log, key = good_log
    lines = _lines(log)
    del lines[4]  # a record covered by the checkpoint that follows it: signed evidence, not a tail
    _put(log, lines)
    with pytest.raises(ConfigError, match="does not verify"):
        AuditLog(log, chain_key=CK, signing_key=key)


def test_log_verify_cli(good_log, tmp_path):
    log, _ = good_log
    runner = CliRunner()
    pub = tmp_path / "k.pem.pub"
    res = runner.invoke(cli, ["log", "verify", str(log), "--public-key", str(pub)])
    assert res.exit_code == 0, res.output
    assert (
        f"OK: records seq 1-12 verified (12 records, 4 signed checkpoints, 1 file(s)); starting from the "
        f"log's genesis; head {head_path(log)}: size 12"
    ) in _flat(res)
    lines = _lines(log)
    lines[7], lines[8] = lines[8], lines[7]
    _put(log, lines)
    res = runner.invoke(cli, ["log", "verify", str(log), "--public-key", str(pub)])
    assert res.exit_code == 1
    assert "a.jsonl:8 (record seq 7): chain broken" in " ".join(res.output.split())
    res = runner.invoke(cli, ["log", "verify", str(tmp_path / "missing.jsonl")])
    assert res.exit_code == 2 and "audit log not found" in " ".join(res.output.split())


def _flat(res):
    return " ".join(res.output.split())


def test_archiving_a_rotated_file_mid_run_loses_no_record(tmp_path):
    """logrotate-style: <log>.1 is moved away while the guard runs; the next rotation must not
    overwrite anything, verify and a restart start from the signed opening checkpoints."""
    log = tmp_path / "r.jsonl"
    key = load_signing_key(tmp_path / "keys" / "k.pem")
    archive = tmp_path / "archive"
    archive.mkdir()
    kept = archive / "kept.head"  # the signed head, saved when .1 was archived

    async def run(first, n):
        w = AuditLog(log, chain_key=CK, signing_key=key, checkpoint_every=5, rotate_bytes=4096)
        await w.start()
        for i in range(first, first + n):
            await w.append({"i": i, "pad": "x" * 200})
            if i == 29:
                os.rename(f"{log}.1", archive / "r.jsonl.1")
                kept.write_bytes(head_path(log).read_bytes())
        await w.close()

    asyncio.run(run(0, 60))
    on_disk = [*segments(log), archive / "r.jsonl.1"]
    seqs = sorted(
        json.loads(line)["seq"] for f in on_disk for line in f.read_text().splitlines() if '"record"' in line
    )
    assert seqs == list(range(1, 61))  # every acknowledged record is still somewhere
    pub = public_hex(key)
    rep = verify(log, chain_key=CK, public_key=pub)  # without a trusted start: the gap is named
    start = json.loads(segments(log)[0].read_text().splitlines()[0])["size"]
    assert not rep.ok and rep.problem == (
        f"{segments(log)[0]}:1: the log starts mid-chain: its first file opens after record {start}, and "
        f"records 1-{start} are not here; give the archived files, or pass --from <a saved signed "
        "checkpoint> to trust a starting point"
    )
    rep = verify(log, chain_key=CK, public_key=pub, trusted=kept)
    assert rep.ok, rep.problem
    assert rep.records == 60 and rep.start_size == start
    assert (
        rep.summary().startswith(f"OK: records seq {start + 1}-60 verified ({60 - start} records, ")
        and f"starting from the trusted checkpoint {kept} (records 1-{start} are not here)" in rep.summary()
    )
    asyncio.run(run(60, 3))  # a restart reads only the live file, from its opening checkpoint
    assert verify(log, chain_key=CK, public_key=pub, trusted=kept).records == 63
    # the archived file, put back, verifies with the rest from the genesis
    os.rename(archive / "r.jsonl.1", f"{log}.1")
    rep = verify(log, chain_key=CK, public_key=pub)
    assert rep.ok and rep.records == 63 and rep.start_size == 0, rep.problem
    # a forged opening checkpoint (another key) is refused
    other = load_signing_key(tmp_path / "keys" / "other.pem")
    assert not verify(log, chain_key=CK, public_key=public_hex(other)).ok


def test_a_rotation_never_overwrites_an_existing_file(tmp_path):
    log = tmp_path / "r.jsonl"
    key = load_signing_key(tmp_path / "k.pem")

    async def main():
        w = await _append(log, key, 20, rotate=4096)
        first = (tmp_path / "r.jsonl.1").read_bytes()
        (tmp_path / "r.jsonl.2.gz").write_bytes(b"an operator's archive")
        w._next_index = 1  # a stale counter: the link refuses to overwrite .1 and moves on
        for i in range(20):
            await w.append({"i": i, "pad": "x" * 200})
        await w.close()
        return first

    first = asyncio.run(main())
    assert (tmp_path / "r.jsonl.1").read_bytes() == first
    assert (tmp_path / "r.jsonl.2.gz").read_bytes() == b"an operator's archive"
    rep = verify(log, chain_key=CK, public_key=public_hex(key))
    assert rep.ok and rep.records == 40, rep.problem
    # a restart numbers the next file after the highest existing one (compressed ones included)
    w = AuditLog(log, chain_key=CK, signing_key=key)
    assert w._next_index == max(int(f.name.split(".")[2]) for f in tmp_path.glob("r.jsonl.*[0-9]*")) + 1
    asyncio.run(w.close())


async def _append(log, key, n, **kw):
    w = AuditLog(
        log,
        chain_key=CK,
        signing_key=key,
        checkpoint_every=kw.pop("every", 5),
        rotate_bytes=kw.pop("rotate", None),
        **kw,
    )
    await w.start()
    for i in range(n):
        await w.append({"i": i, "pad": "x" * 200})
    return w


def test_verify_compares_the_raw_bytes_of_every_line(good_log):
    log, key = good_log
    pub = public_hex(key)
    lines = _lines(log)
    # a duplicate key before the real one: json.loads keeps the last, the bytes differ
    lines[-2] = lines[-2].replace(b'{"client"', b'{"decision":"rate_limited","client"', 1)
    _put(log, lines)
    rep = verify(log, chain_key=CK, public_key=pub)
    assert not rep.ok and rep.bad_seq == 12
    assert rep.problem.endswith(
        "the line is not the canonical serialisation of its content (duplicate keys, extra whitespace "
        "or reordered members): the record was modified"
    )
    lines = _lines(log)
    lines[-2] = lines[-2].replace(b'{"decision":"rate_limited","client"', b'{ "client"', 1)
    _put(log, lines)
    assert "not the canonical serialisation" in verify(log, chain_key=CK, public_key=pub).problem
    lines = _lines(log)
    lines[-2] = lines[-2].replace(b'{ "client"', b'{"client"', 1)
    lines[5] = lines[5].replace(b'{"chain"', b'{ "chain"', 1)  # a checkpoint with whitespace
    _put(log, lines)
    rep = verify(log, chain_key=CK, public_key=pub)
    assert not rep.ok and rep.bad_line == 6
    assert "the checkpoint is not in canonical form" in rep.problem


def test_a_record_missing_only_its_final_newline_is_kept(tmp_path):
    log = tmp_path / "a.jsonl"
    _, _, key = write_log(log, 6, every=4, concurrent=False)
    pub = public_hex(key)
    head_path(log).unlink()
    lines = _lines(log)
    assert b'"kind":"checkpoint"' in lines[-1]
    _put(log, lines[:-1])  # drop the close checkpoint: record 6 is the last line
    log.write_bytes(log.read_bytes()[:-1])  # ... and its newline
    rep = verify(log, chain_key=CK, public_key=pub, allow_missing_head=True)
    assert rep.ok and rep.records == 6 and rep.torn_tail is None
    assert "the last line lacks its final newline (the record is complete and counted" in rep.warnings[0]
    seqs, _, _ = write_log(log, 2, every=4, key=key, concurrent=False)  # a restart keeps record 6
    assert seqs == [7, 8]
    rep = verify(log, chain_key=CK, public_key=pub)
    assert rep.ok and rep.records == 8 and rep.warnings == []


def test_a_missing_head_fails_verify_unless_allowed(good_log, tmp_path):
    log, _ = good_log
    pub = tmp_path / "k.pem.pub"
    runner = CliRunner()
    lines = _lines(log)
    _put(log, lines[:8])  # truncated after the second record past a checkpoint, and the head deleted
    head_path(log).unlink()
    res = runner.invoke(cli, ["log", "verify", str(log), "--public-key", str(pub)])
    assert res.exit_code == 1
    assert (
        f"{head_path(log)}:0: head checkpoint {head_path(log)} not found: without it a truncated log "
        "cannot be detected; pass --head with a saved copy, or --allow-missing-head to accept this"
    ) in _flat(res)
    res = runner.invoke(cli, ["log", "verify", str(log), "--public-key", str(pub), "--allow-missing-head"])
    assert res.exit_code == 0 and _flat(res).startswith(
        "OK: records seq 1-4 verified (4 records, 2 signed checkpoints, 1 file(s)); starting from the log's "
        "genesis; records seq 5-6 after the last signed checkpoint are NOT verified (pass --chain-key to "
        "check them)"
    )
    ck = tmp_path / "chain.key"
    ck.write_text("6b" * 32)  # the tests' chain key, as the guard stores it
    res = runner.invoke(
        cli,
        ["log", "verify", str(log), "--public-key", str(pub), "--allow-missing-head", "--chain-key", str(ck)],
    )
    assert res.exit_code == 0 and _flat(res).startswith("OK: records seq 1-6 verified (6 records,")


def test_verify_needs_a_pinned_key_and_a_re_signed_log_fails_against_it(good_log, tmp_path):
    log, _ = good_log
    pub = tmp_path / "k.pem.pub"
    runner = CliRunner()
    res = runner.invoke(cli, ["log", "verify", str(log)])
    assert res.exit_code == 2
    assert (
        "no public key pinned: the checkpoints would be checked against the key written in the log, which "
        "a forger replaces; pass --public-key <the guard's signing key .pub>, or --trust-embedded-key"
    ) in _flat(res)
    # a forger rewrites record 2 and re-signs the whole log (and its head) with their own key
    forger = load_signing_key(tmp_path / "forger.pem")
    lines = _lines(log)
    forged = tmp_path / "f.jsonl"
    records = [json.loads(x) for x in lines if b'"kind":"record"' in x]
    records[1]["decision"] = "rate_limited"

    async def rewrite():
        w = AuditLog(forged, chain_key=ChainKey(os.urandom(32)), signing_key=forger, checkpoint_every=4)
        await w.start()
        for r in records:
            await w.append({k: v for k, v in r.items() if k not in ("kind", "seq", "time", "prev", "hash")})
        await w.close()

    asyncio.run(rewrite())
    res = runner.invoke(cli, ["log", "verify", str(forged), "--trust-embedded-key"])
    assert res.exit_code == 0 and "a re-signed log passes this check" in _flat(res)
    res = runner.invoke(cli, ["log", "verify", str(forged), "--public-key", str(pub)])
    assert res.exit_code == 1
    assert "f.jsonl.head:1: head checkpoint signed by a different key than the pinned one" in _flat(res)
    res = runner.invoke(
        cli, ["log", "verify", str(forged), "--public-key", str(pub), "--head", str(head_path(log))]
    )
    assert res.exit_code == 1
    assert "f.jsonl:1: checkpoint signed by a different key than the pinned one" in _flat(res)


def test_checkpoints_on_a_timer_and_private_file_modes(tmp_path):
    log = tmp_path / "a.jsonl"
    key = load_signing_key(tmp_path / "k.pem")

    async def main():
        w = await _append(log, key, 2, every=1000, checkpoint_seconds=3600)
        assert json.loads(head_path(log).read_text())["size"] == 0  # the genesis
        w._timer.cancel()
        w._tick()  # what the loop's timer calls every checkpoint_seconds
        for _ in range(1000):  # the writer task picks it up: yield to it, no clock involved
            await asyncio.sleep(0)
            if json.loads(head_path(log).read_text())["size"]:
                break
        size = json.loads(head_path(log).read_text())["size"]
        w._file.close()  # no close checkpoint: the timer alone wrote the head
        w._file = None
        w._timer.cancel()
        w._task.cancel()
        return size

    assert asyncio.run(main()) == 2
    for f in (log, head_path(log), tmp_path / "k.pem"):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    assert verify(log, chain_key=CK, public_key=public_hex(key)).ok


def test_a_failed_head_write_after_the_records_are_on_disk_does_not_fail_them(tmp_path):
    """The records are fsynced before the head: a head failure must not turn a logged "served"
    into an error answer; the head is retried with the next batch."""
    log = tmp_path / "a.jsonl"
    key = load_signing_key(tmp_path / "k.pem")

    async def main():
        w = AuditLog(log, chain_key=CK, signing_key=key, checkpoint_every=2)
        await w.start()
        real = w._write_head
        fails = {"n": 1}

        def flaky(head):
            if fails["n"]:
                fails["n"] -= 1
                raise OSError(28, "No space left on device")
            real(head)

        w._write_head = flaky
        seqs = [await w.append({"i": i}) for i in range(2)]
        assert w.degraded is not None and "head checkpoint or rotation failed" in w.degraded
        assert w.broken is None and json.loads(head_path(log).read_text())["size"] == 0
        seqs.append(await w.append({"i": 2}))
        assert w.degraded is None and json.loads(head_path(log).read_text())["size"] == 3
        await w.close()
        return seqs

    assert asyncio.run(main()) == [1, 2, 3]
    assert verify(log, chain_key=CK, public_key=public_hex(key)).ok


def test_records_arriving_during_a_write_form_the_next_batch_and_close_waits_for_it(tmp_path):
    """The write and fsync run on the I/O thread: the loop keeps queueing records meanwhile, they
    go out as the next batch in chain order, and close() seals the log only after both batches."""
    import threading

    log = tmp_path / "a.jsonl"
    key = load_signing_key(tmp_path / "k.pem")
    w = AuditLog(
        log, chain_key=CK, signing_key=key, checkpoint_every=1000, io_thread_ms=0.0
    )  # always the I/O thread
    threads: list[str] = []
    blobs: list[int] = []
    real = w._write_sync
    release = threading.Event()  # the first batch's write is held until the rest are queued

    def slow(blob, head):
        threads.append(threading.current_thread().name)
        blobs.append(blob.count(b'"kind":"record"'))
        if len(blobs) == 1:
            assert release.wait(30)
        real(blob, head)

    w._write_sync = slow

    async def main():
        await w.start()
        first = asyncio.ensure_future(w.append({"i": 0}))
        while not w._busy:
            await asyncio.sleep(0)
        rest = [asyncio.ensure_future(w.append({"i": i})) for i in range(1, 11)]
        await asyncio.sleep(0)
        assert not first.done()  # the first write is still on the I/O thread
        release.set()
        await w.close()
        assert all(f.done() for f in [first, *rest])
        return [first.result()] + [f.result() for f in rest]

    seqs = asyncio.run(main())
    assert seqs == list(range(1, 12))
    assert blobs == [1, 10, 0]  # the two batches, then the closing checkpoint
    assert threads[0].startswith("audit-io") and threads[1].startswith("audit-io")
    rep = verify(log, chain_key=CK, public_key=public_hex(key))
    assert rep.ok, rep.problem
    assert rep.records == 11
    assert [json.loads(ln)["i"] for ln in log.read_text().splitlines() if '"record"' in ln] == list(range(11))


def test_a_slow_fsync_moves_the_writes_to_the_io_thread(tmp_path, monkeypatch):
    """The switch reads the fsync time from the injected clock: each fsync "takes" 5 ms here, so
    the moving average passes the 0.5 ms threshold after the first batch, exactly."""
    import threading

    from invguard.guard.auditlog import writer

    real_fsync = os.fsync
    where: list[str] = []
    now = [0.0]

    def slow_fsync(fd):
        where.append(threading.current_thread().name)
        now[0] += 0.005
        real_fsync(fd)

    monkeypatch.setattr(writer.os, "fsync", slow_fsync)
    log = tmp_path / "a.jsonl"
    key = load_signing_key(tmp_path / "k.pem")

    async def main():
        w = AuditLog(log, chain_key=CK, signing_key=key, checkpoint_every=1000, perf_clock=lambda: now[0])
        await w.start()
        for i in range(8):
            where.append(f"record {i}")
            await w.append({"i": i})
        where.append("close")
        await w.close()

    asyncio.run(main())
    # the fsync after each "record i" marker is that record's batch
    batches = [where[where.index(f"record {i}") + 1] for i in range(8)]
    assert batches[0] == "MainThread"  # the average starts at 0: the first batch is written inline
    assert all(t.startswith("audit-io") for t in batches[1:])  # then 5 ms fsyncs move to the thread
    assert verify(log, chain_key=CK, public_key=public_hex(key)).ok


def test_a_fast_fsync_stays_on_the_loop(tmp_path, monkeypatch):
    import threading

    from invguard.guard.auditlog import writer

    real_fsync = os.fsync
    where: list[str] = []
    now = [0.0]

    def fast_fsync(fd):
        where.append(threading.current_thread().name)
        now[0] += 0.0004  # 0.4 ms: below the 0.5 ms switch, whatever the real disk does
        real_fsync(fd)

    monkeypatch.setattr(writer.os, "fsync", fast_fsync)
    key = load_signing_key(tmp_path / "k.pem")

    async def main():
        w = AuditLog(tmp_path / "a.jsonl", chain_key=CK, signing_key=key, perf_clock=lambda: now[0])
        await w.start()
        for i in range(8):
            await w.append({"i": i})
        await w.close()

    asyncio.run(main())
    assert set(where) == {"MainThread"}


def test_processes_creating_one_secret_at_once_agree_and_an_empty_secret_is_refused(tmp_path):
    """A secret (chain key, detection salt) shared by two guard processes that start together:
    both read the one value written whole, never an empty file or each its own."""
    import multiprocessing as mp

    from invguard.guard.auditlog.signing import read_secret

    ctx = mp.get_context("fork")
    with ctx.Pool(4) as pool:
        for i in range(5):
            path = tmp_path / f"s{i}" / "salt"
            got = pool.starmap(read_secret, [(path, "detection.salt_key")] * 8)
            assert len(set(got)) == 1 and len(got[0]) == 32
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match=rf"^detection.salt_key: {empty} does not hold a hex secret$"):
        read_secret(empty, "detection.salt_key")
