"""Verification: every line of a log checked against its neighbours, its key and its anchors.

The scan starts at the log's **genesis** (the signed opening checkpoint of size 0 on the first line
of its first file) or, when the older files were archived, at a starting point the verifier is told
to trust (``trusted``: a signed checkpoint kept when they were archived). A log whose first file
starts mid-chain without that is a failure naming the gap, and so is a file whose first line is not
an opening checkpoint (its first lines were cut).

Records are checked for canonical bytes, ``seq``, ``prev`` and, with the chain key, their keyed
``hash``; checkpoints for their size, last hash, Merkle root, frontier and signature (by the pinned
key). **Anchors** are signed checkpoints from outside the files: the head (``<log>.head`` or a saved
copy), witnessed heads (:mod:`.witness`) and the trusted start; the log must hold at least as many
records as each anchor and its first ``size`` records must hash to the anchor's root. Without the
chain key, records after the last signed checkpoint cannot be checked, and the report says so.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from invguard.core.errors import ConfigError
from invguard.guard.auditlog.format import (
    CHAIN,
    GENESIS,
    ChainKey,
    canonical,
    head_path,
    read_file,
    record_line,
    segments,
)
from invguard.guard.auditlog.merkle import MerkleAccumulator
from invguard.guard.auditlog.report import Anchor, VerifyReport
from invguard.guard.auditlog.signing import check_sig
from invguard.guard.auditlog.witness import Witness, WitnessError

_MISSING_HEAD = (
    "head checkpoint {hp} not found: without it a truncated log cannot be detected; "
    "pass --head with a saved copy, or --allow-missing-head to accept this"
)


def _first_line_problem(doc: dict[str, Any], first_file: bool) -> str:
    if doc.get("kind") == "record":
        what = f"record seq {doc.get('seq')}"
    elif doc.get("kind") == "checkpoint":
        what = f"a checkpoint of {doc.get('size')} records that opens no file"
    else:
        what = "not an opening checkpoint"
    if first_file:
        return (
            f"the log does not start at its genesis: the first line is {what}; the lines before it were "
            "deleted"
        )
    return (
        f"the file does not open with a checkpoint: its first line is {what}; lines were cut from its start"
    )


def scan(
    files: Sequence[Path],
    *,
    public_key: str | None,
    chain_key: ChainKey | None = None,
    anchors: Sequence[Anchor] = (),
    trust_opening: bool = False,
    merkle: MerkleAccumulator | None = None,
) -> VerifyReport:
    """Check ``files`` in order (see the module docstring). ``trust_opening`` accepts a first file
    that opens mid-chain (the writer, restarting on its own live file, does); ``merkle`` receives
    the tree state at the end."""
    rep = VerifyReport(files=[str(f) for f in files])
    rep.chain_checked = chain_key is not None
    if not files:
        return rep.fail(Path("log"), 0, None, "log file not found")
    acc = MerkleAccumulator()
    prev = GENESIS
    key_id: str | None = None
    trusted = next((a for a in anchors if a.kind == "trusted"), None)
    waiting = sorted(anchors, key=lambda a: a.size)

    def check_anchors(where: Path, line: int) -> VerifyReport | None:
        while waiting and waiting[0].size <= rep.records:
            a = waiting.pop(0)
            if a.size < rep.start_size:
                if a.kind == "head":
                    return rep.fail(
                        files[0], 1, None, "the head checkpoint is older than the first file present"
                    )
                rep.warnings.append(
                    f"{a.name} holds a head of {a.size} records, older than the first file present "
                    f"(it starts after record {rep.start_size}): not compared"
                )
                continue
            if a.doc.get("root") != acc.root().hex() or a.doc.get("last_hash") != prev:
                if a.kind == "head":
                    msg = "the records do not match the Merkle root of the signed head checkpoint"
                elif a.kind == "witness":
                    msg = (
                        f"inconsistent with the {a.name}: the log's first {a.size} records do not "
                        "hash to the Merkle root it holds (the log was rewritten)"
                    )
                else:
                    msg = f"the log's first {a.size} records do not match the trusted checkpoint {a.name}"
                return rep.fail(where, line, None, msg)
            rep.anchors.append(f"{a.name}: size {a.size}")
            rep.anchor_sizes.append(a.size)
        return None

    for fi, f in enumerate(files):
        try:
            data = read_file(f)
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            return rep.fail(f, 0, None, f"the archived file cannot be decompressed ({e}): it was modified")
        offset = 0
        lineno = 0
        while offset < len(data):
            start = offset
            nl = data.find(b"\n", offset)
            lineno += 1
            last_no_nl = False
            if nl < 0:
                if fi != len(files) - 1:
                    return rep.fail(
                        f, lineno, None, "incomplete line in a rotated file: the file was truncated", start
                    )
                try:
                    tail_doc = json.loads(data[offset:])
                except ValueError:
                    tail_doc = None
                if not isinstance(tail_doc, dict):
                    rep.torn_tail = (f, offset)
                    rep.warnings.append(
                        f"{f}:{lineno}: incomplete last line ignored (a write cut short by a crash; "
                        "never acknowledged)"
                    )
                    break
                last_no_nl = True  # a complete line without its newline: it is checked like any other
                nl = len(data)
            raw = data[offset:nl]
            offset = nl + 1

            def bad(msg: str, seq: int | None = None) -> VerifyReport:
                return rep.fail(f, lineno, seq, msg, start)  # noqa: B023

            try:
                doc = json.loads(raw)
            except ValueError:
                return bad("not valid JSON: the line was modified or corrupted")
            except RecursionError:
                return bad("nested too deeply: the line was modified")
            if not isinstance(doc, dict):
                return bad("not a JSON object: the line was modified")
            kind = doc.get("kind")
            opening = doc.get("opening") is True and kind == "checkpoint"
            if lineno == 1 and not opening:
                return bad(_first_line_problem(doc, fi == 0), doc.get("seq") if kind == "record" else None)
            if opening and lineno != 1:
                return bad("an opening checkpoint in the middle of a file: lines were inserted")
            if kind == "record":
                seq = doc.get("seq")
                body = {k: v for k, v in doc.items() if k != "hash"}
                digest = doc.get("hash")
                try:
                    cbody = canonical(body)
                    bytes.fromhex(str(body.get("prev", "")))
                    if not (isinstance(digest, str) and len(bytes.fromhex(digest)) == 32):
                        raise ValueError
                except ValueError:
                    return bad("prev or hash is not a hex hash: the record was modified", seq)
                if chain_key is not None and digest != chain_key.digest(str(body["prev"]), cbody):
                    return bad(
                        "hash does not match the record's content: the record was modified (or written "
                        "without the chain key)",
                        seq,
                    )
                if raw != record_line(cbody, digest):
                    return bad(
                        "the line is not the canonical serialisation of its content (duplicate keys, "
                        "extra whitespace or reordered members): the record was modified",
                        seq,
                    )
                if doc.get("prev") != prev:
                    return bad(
                        f"chain broken: prev does not match the hash of the preceding record "
                        f"(seq {rep.records}); a record was deleted, inserted or reordered here",
                        seq,
                    )
                if seq != rep.records + 1:
                    return bad(f"expected seq {rep.records + 1}: records deleted or reordered", seq)
                prev = digest
                acc.add(raw)
                rep.records += 1
                failed = check_anchors(f, lineno)
                if failed is not None:
                    return failed
            elif kind == "checkpoint":
                try:
                    canonical_ok = raw == canonical(doc)
                except ValueError:
                    canonical_ok = False
                if not canonical_ok:
                    return bad(
                        "the checkpoint is not in canonical form (duplicate keys, extra whitespace or "
                        "reordered members): the line was modified"
                    )
                size = doc.get("size")
                if fi == 0 and lineno == 1 and isinstance(size, int) and size > 0:
                    if trusted is None and not trust_opening:
                        return bad(
                            f"the log starts mid-chain: its first file opens after record {size}, and "
                            f"records 1-{size} are not here; give the archived files, or pass --from <a "
                            "saved signed checkpoint> to trust a starting point"
                        )
                    if trusted is not None and trusted.size < size:
                        return bad(
                            f"the trusted checkpoint {trusted.name} covers {trusted.size} records, fewer "
                            f"than the {size} before the first file present: give the archived files or a "
                            "newer trusted checkpoint"
                        )
                    problem = check_sig(doc, public_key)
                    if problem is not None:
                        return bad(f"checkpoint {problem}")
                    try:
                        acc = MerkleAccumulator.from_frontier(doc.get("frontier"), size)
                    except ValueError as e:
                        return bad(f"opening checkpoint is malformed ({e})")
                    rep.records = rep.start_size = size
                    prev = str(doc.get("last_hash"))
                    rep.start = (
                        f"the trusted checkpoint {trusted.name} (records 1-{size} are not here)"
                        if trusted is not None
                        else f"the opening checkpoint of {f} (records 1-{size} are not here)"
                    )
                    failed = check_anchors(f, lineno)
                    if failed is not None:
                        return failed
                if size != rep.records:
                    return bad(f"checkpoint says {size} records, the log has {rep.records} here")
                if doc.get("last_hash") != prev:
                    return bad("checkpoint last_hash does not match the chain")
                if doc.get("root") != acc.root().hex():
                    return bad("checkpoint Merkle root does not match the records before it")
                if doc.get("frontier") != acc.frontier():
                    return bad("checkpoint frontier does not match the records")
                problem = check_sig(doc, public_key)
                if problem is not None:
                    return bad(f"checkpoint {problem}")
                if doc.get("chain") != CHAIN:
                    return bad(f"checkpoint names the chain {doc.get('chain')!r}, expected {CHAIN!r}")
                if key_id is None:
                    key_id = str(doc.get("chain_key_id"))
                    if chain_key is not None and chain_key.key_id != key_id:
                        return bad(
                            f"the chain key given is not this log's (the log's key id is {key_id}, the key "
                            f"given has {chain_key.key_id})"
                        )
                elif doc.get("chain_key_id") != key_id:
                    return bad("checkpoint names another chain key than the log's first checkpoint")
                rep.checkpoints += 1
                rep.last_checkpoint_size = rep.records
                rep.last_checkpoint_end = (str(f), offset)
                failed = check_anchors(f, lineno)
                if failed is not None:
                    return failed
            else:
                return bad(f"unknown line kind {kind!r}: the line was modified or inserted")
            if last_no_nl:
                rep.missing_newline = f
                rep.warnings.append(
                    f"{f}:{lineno}: the last line lacks its final newline (the record is complete and "
                    "counted; a restart of the guard adds the newline)"
                )
        if lineno == 0 and not (fi == len(files) - 1 and rep.torn_tail is not None):
            return rep.fail(f, 1, None, _first_line_problem({}, fi == 0) if fi == 0 else "the file is empty")
    rep.last_hash = prev
    for a in waiting:
        if a.kind == "head":
            msg = (
                f"log truncated: the signed head checkpoint covers {a.size} records, the log holds only "
                f"{rep.records}"
            )
        elif a.kind == "witness":
            msg = (
                f"rolled back: the {a.name} holds a signed head of {a.size} records, the log holds "
                f"only {rep.records}"
            )
        else:
            msg = f"the trusted checkpoint {a.name} covers {a.size} records, the log holds only {rep.records}"
        return rep.fail(files[-1], 0, None, msg)
    if merkle is not None:
        merkle._stack, merkle.size = acc._stack, acc.size
    return rep


def read_checkpoint(path: str | Path, what: str = "head checkpoint") -> dict[str, Any]:
    p = Path(path)
    try:
        doc = json.loads(p.read_bytes())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{p}: cannot read the {what} ({e})") from None
    if not isinstance(doc, dict) or doc.get("kind") != "checkpoint":
        raise ConfigError(f"{p}: not a checkpoint (expected a JSON object with kind 'checkpoint')")
    return doc


read_head = read_checkpoint


def verify(
    path: str | Path,
    *,
    public_key: str | None = None,
    chain_key: ChainKey | None = None,
    head: str | Path | None = None,
    use_default_head: bool = True,
    trust_embedded_key: bool = False,
    allow_missing_head: bool = False,
    trusted: str | Path | None = None,
    witnesses: Sequence[Witness] = (),
) -> VerifyReport:
    """Check a log (with its rotated files) against its keys and anchors (see the module docstring).

    Signatures prove nothing against the key written in the log itself (a forger re-signs with
    their own key), so a pinned ``public_key`` is required unless ``trust_embedded_key`` is set.
    A missing head is a failure unless ``allow_missing_head`` (it is what detects truncation when
    no witness is given). ``trusted`` is a saved signed checkpoint to start from when the log's
    older files were archived; ``witnesses`` are read and their heads compared with the log.
    """
    files = segments(path, archived=True)
    if not files:
        raise ConfigError(f"{path}: audit log not found")
    if public_key is None and not trust_embedded_key:
        raise ConfigError(
            f"{path}: no public key pinned: the checkpoints would be checked against the key written in "
            "the log, which a forger replaces; pass --public-key <the guard's signing key .pub>, or "
            "--trust-embedded-key to accept that"
        )
    anchors: list[Anchor] = []
    warnings: list[str] = []
    hp: Path | None = Path(head) if head is not None else None
    if hp is None and use_default_head and head_path(path).exists():
        hp = head_path(path)
    if hp is not None:
        anchors.append(Anchor("head", f"head {hp}", read_checkpoint(hp)))
    if trusted is not None:
        anchors.append(Anchor("trusted", str(trusted), read_checkpoint(trusted, "trusted checkpoint")))
    for w in witnesses:
        try:
            doc = w.read()
        except WitnessError as e:
            raise ConfigError(f"witness: {e}") from None
        if doc is None:
            warnings.append(f"the witness {w.name} holds no head yet: nothing to compare")
        else:
            anchors.append(Anchor("witness", f"witness {w.name}", doc))
    for a in anchors:
        problem = check_sig(a.doc, public_key)
        if problem is not None:
            where = hp if a.kind == "head" and hp is not None else Path(a.name)
            rep = VerifyReport(files=[str(f) for f in files])
            return rep.fail(where, 1 if a.kind == "head" else 0, None, f"{a.kind} checkpoint {problem}")
    rep = scan(files, public_key=public_key, chain_key=chain_key, anchors=anchors)
    rep.warnings[:0] = warnings
    if rep.ok and hp is None and not witnesses and not allow_missing_head:
        return rep.fail(head_path(path), 0, None, _MISSING_HEAD.format(hp=head_path(path)))
    if rep.ok and public_key is None and rep.checkpoints:
        rep.warnings.append(
            "signatures were checked against the key named in the log (--trust-embedded-key): a re-signed "
            "log passes this check; pin the expected key with --public-key"
        )
    return rep
