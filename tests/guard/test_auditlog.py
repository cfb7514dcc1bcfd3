"""The audit log: RFC 6962 Merkle hashing, group commit, verification and every kind of tampering."""

from __future__ import annotations

import asyncio
import hashlib
import json

import pytest
from typer.testing import CliRunner

from invguard.cli import app as cli
from invguard.core.errors import ConfigError
from invguard.guard.auditlog import (
    AuditLog,
    MerkleAccumulator,
    head_path,
    leaf_hash,
    load_signing_key,
    merkle_root,
    public_hex,
    segments,
    verify,
)


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


def write_log(path, n, *, every=4, rotate=None, key=None, concurrent=True):
    key = key or load_signing_key(path.parent / "k.pem")
    batches = []

    async def main():
        log = AuditLog(path, signing_key=key, checkpoint_every=every, rotate_bytes=rotate)
        orig = log._write_sync

        def counted(blob, head):
            batches.append(blob.count(b'"kind":"record"'))
            orig(blob, head)

        log._write_sync = counted
        await log.start()
        recs = [
            {"client": f"c{i}", "role": "partner", "decision": "served", "labels": [i % 10]} for i in range(n)
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
    rep = verify(log, public_key=public_hex(key))
    assert rep.ok, rep.problem
    assert (rep.records, rep.checkpoints) == (50, 12)
    assert rep.warnings == []
    lines = log.read_text().splitlines()
    first = json.loads(lines[0])
    assert first["prev"] == "0" * 64 and first["seq"] == 1
    assert json.loads(head_path(log).read_text())["size"] == 48


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
    log, _ = good_log
    lines = _lines(log)
    # lines: records 1-4, checkpoint, records 5-8, checkpoint, ...: line 6 holds record seq 5
    assert b'"client":"c4"' in lines[5]
    lines[5] = lines[5].replace(b'"client":"c4"', b'"client":"c9"')
    _put(log, lines)
    rep = verify(log)
    assert not rep.ok
    assert rep.bad_seq == 5 and rep.bad_line == 6
    assert "hash does not match the record's content: the record was modified" in rep.problem


def test_deleted_line_is_detected(good_log):
    log, _ = good_log
    lines = _lines(log)
    del lines[2]  # record seq 3
    _put(log, lines)
    rep = verify(log)
    assert not rep.ok and rep.bad_seq == 4 and rep.bad_line == 3
    assert rep.records == 2
    assert "chain broken" in rep.problem


def test_swapped_lines_are_detected(good_log):
    log, _ = good_log
    lines = _lines(log)
    lines[1], lines[2] = lines[2], lines[1]
    _put(log, lines)
    rep = verify(log)
    assert not rep.ok and rep.bad_line == 2 and rep.bad_seq == 3
    assert "deleted, inserted or reordered" in rep.problem


def test_inserted_record_is_detected(good_log):
    log, _ = good_log
    lines = _lines(log)
    forged = json.loads(lines[1])
    forged["client"] = "mallory"
    lines.insert(2, json.dumps(forged, sort_keys=True, separators=(",", ":")).encode())
    _put(log, lines)
    rep = verify(log)
    assert not rep.ok and rep.bad_line == 3
    assert "modified" in rep.problem


def test_truncation_after_a_checkpoint_is_detected_by_the_signed_head(good_log):
    log, key = good_log
    lines = _lines(log)
    # 12 records, checkpoints after 4, 8 and 12: the head covers 12; keep only the first 9 lines
    _put(log, lines[:9])
    rep = verify(log, public_key=public_hex(key))
    assert not rep.ok
    assert "log truncated: the signed head checkpoint covers 12 records, the log holds only 8" in rep.problem
    # truncation in the middle of a line (not at a line end) is caught the same way
    log.write_bytes(b"\n".join(lines[:-1])[:-40])  # record 12 cut in the middle
    rep = verify(log)
    assert not rep.ok and "log truncated" in rep.problem


def test_forged_checkpoint_and_wrong_key_are_detected(good_log, tmp_path):
    log, _ = good_log
    other = public_hex(load_signing_key(tmp_path / "other.pem"))
    rep = verify(log, public_key=other)
    assert not rep.ok and "different key than the pinned one" in rep.problem
    lines = _lines(log)
    cp = json.loads(lines[4])
    assert cp["kind"] == "checkpoint"
    cp["root"] = "00" * 32
    lines[4] = json.dumps(cp, sort_keys=True, separators=(",", ":")).encode()
    _put(log, lines)
    rep = verify(log)
    assert not rep.ok and rep.bad_line == 5 and "Merkle root does not match" in rep.problem


def test_rotation_keeps_the_chain_across_files(tmp_path):
    log = tmp_path / "r.jsonl"
    _, _, key = write_log(log, 60, every=7, rotate=4096, concurrent=False)
    files = segments(log)
    assert len(files) >= 3
    rep = verify(log, public_key=public_hex(key))
    assert rep.ok, rep.problem
    assert rep.records == 60 and len(rep.files) == len(files)
    files[1].unlink()  # a whole rotated file goes missing
    rep = verify(log)
    assert not rep.ok and "chain broken" in rep.problem


def test_restart_continues_the_chain_and_drops_a_torn_tail(tmp_path):
    log = tmp_path / "a.jsonl"
    _, _, key = write_log(log, 5, every=3)
    with open(log, "ab") as f:
        f.write(b'{"kind":"record","seq":6,"cli')  # a write cut by a crash, never acknowledged
    rep = verify(log)
    assert rep.ok and rep.records == 5
    assert "incomplete last line ignored" in rep.warnings[0]
    seqs, _, _ = write_log(log, 4, every=3, key=key)
    assert sorted(seqs) == [6, 7, 8, 9]
    rep = verify(log, public_key=public_hex(key))
    assert rep.ok and rep.records == 9 and rep.warnings == []


def test_guard_refuses_to_extend_a_tampered_log(good_log):
    log, key = good_log
    lines = _lines(log)
    del lines[3]
    _put(log, lines)
    with pytest.raises(ConfigError, match="does not verify"):
        AuditLog(log, signing_key=key)


def test_log_verify_cli(good_log, tmp_path):
    log, _ = good_log
    runner = CliRunner()
    pub = tmp_path / "k.pem.pub"
    res = runner.invoke(cli, ["log", "verify", str(log), "--public-key", str(pub)])
    assert res.exit_code == 0, res.output
    assert "OK: 12 records, 3 signed checkpoints verified" in res.output
    lines = _lines(log)
    lines[6], lines[7] = lines[7], lines[6]
    _put(log, lines)
    res = runner.invoke(cli, ["log", "verify", str(log)])
    assert res.exit_code == 1
    assert "a.jsonl:7 (record seq 7): chain broken" in " ".join(res.output.split())
    res = runner.invoke(cli, ["log", "verify", str(tmp_path / "missing.jsonl")])
    assert res.exit_code == 2 and "audit log not found" in " ".join(res.output.split())
