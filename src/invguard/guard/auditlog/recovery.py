"""Start-up recovery of a chain: verify the live file, cut a torn write, quarantine a forged tail.

The live file is verified from its opening checkpoint (the writer trusts its own signed opening
checkpoint; ``log verify`` does not), with the chain key, against the head beside the log (unless
``fsync`` is off) and the witnesses' heads. A torn last line (never acknowledged) is cut. Records after
the last signed checkpoint that fail the keyed chain (a tail rewritten while the guard was down) are
moved to ``<log>.rejected.N`` and described in the ``rejected`` fields the writer then appends as a
signed ``tail_rejected`` record; they are never signed. Anything wrong before the last checkpoint,
or a log behind its head or a witness, raises ConfigError: that is evidence to keep, not to extend.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from invguard.core.errors import ConfigError
from invguard.guard.auditlog.format import ChainKey, create_new, head_path, segments
from invguard.guard.auditlog.merkle import MerkleAccumulator
from invguard.guard.auditlog.report import Anchor, VerifyReport
from invguard.guard.auditlog.signing import check_sig
from invguard.guard.auditlog.verify import read_checkpoint, scan
from invguard.guard.auditlog.witness import Witness, WitnessError

log = logging.getLogger("invguard.guard.audit")


@dataclass
class Recovered:
    """The chain state to continue from, and the fields of a ``tail_rejected`` record if any."""

    seq: int
    prev: str
    since_checkpoint: int
    merkle: MerkleAccumulator
    rejected: dict[str, Any] | None = None


def recover(
    path: Path,
    *,
    public_key: str,
    chain_key: ChainKey,
    witnesses: Sequence[Witness] = (),
    check_head: bool = True,
) -> Recovered:
    files = segments(path)
    rotated = [f for f in files if f != path]
    if path.exists() and rotated and os.path.samefile(path, rotated[-1]):
        path.unlink()  # a crash between the link and the unlink of a rotation
        files = rotated
    if not files:
        _no_files(path, public_key, witnesses)
        return Recovered(0, VerifyReport().last_hash, 0, MerkleAccumulator())
    anchors = _anchors(path, public_key, witnesses, check_head)

    def check() -> tuple[VerifyReport, MerkleAccumulator]:
        acc = MerkleAccumulator()
        rep = scan(
            files[-1:],
            public_key=public_key,
            chain_key=chain_key,
            anchors=anchors,
            trust_opening=True,
            merkle=acc,
        )
        return rep, acc

    rep, acc = check()
    rejected = None
    if not rep.ok:
        rejected = _quarantine(rep, files[-1], public_key)
        if rejected is not None:
            rep, acc = check()
    if not rep.ok:
        raise ConfigError(
            f"audit log {path} does not verify ({rep.problem}); move it aside (keep it as evidence) and "
            "start a new log"
        )
    if rep.torn_tail is not None:
        f, off = rep.torn_tail
        with open(f, "r+b") as fh:
            fh.truncate(off)
            fh.flush()
            os.fsync(fh.fileno())
    if rep.missing_newline is not None:
        with open(rep.missing_newline, "ab") as fa:
            fa.write(b"\n")
            fa.flush()
            os.fsync(fa.fileno())
    return Recovered(rep.records, rep.last_hash, rep.records - rep.last_checkpoint_size, acc, rejected)


def _signed_heads(path: Path, public_key: str, witnesses: Sequence[Witness]) -> list[tuple[Witness, Any]]:
    """Each reachable witness with the validly signed head it holds (an unreachable one is warned of)."""
    out = []
    for w in witnesses:
        try:
            doc = w.read()
        except WitnessError as e:
            log.warning("audit log %s: cannot compare with its witness (%s)", path, e)
            continue
        if doc is not None and check_sig(doc, public_key) is None:
            out.append((w, doc))
    return out


def _no_files(path: Path, public_key: str, witnesses: Sequence[Witness]) -> None:
    """A log with no files is new only if no witness holds a head of it: else it was deleted."""
    for w, doc in _signed_heads(path, public_key, witnesses):
        raise ConfigError(
            f"audit log {path} has no files, but the witness {w.name} holds a signed head of "
            f"{doc.get('size')} records of it: the chain was deleted (rolled back); investigate (keep "
            "the witness's head as evidence); to start a new log on purpose, give it a new witness"
        )


def _anchors(path: Path, public_key: str, witnesses: Sequence[Witness], check_head: bool) -> list[Anchor]:
    """The head beside the log and every witness's head: the log must not be behind them."""
    anchors: list[Anchor] = []
    hp = head_path(path)
    if check_head and hp.exists():
        anchors.append(Anchor("head", f"head {hp}", read_checkpoint(hp)))
    for w, doc in _signed_heads(path, public_key, witnesses):
        anchors.append(Anchor("witness", f"witness {w.name}", doc))
    return anchors


def _quarantine(rep: VerifyReport, live: Path, public_key: str) -> dict[str, Any] | None:
    """Move a failing unsigned tail aside; None if the failure is not one (refuse to start)."""
    if rep.bad_offset is None or rep.bad_file != str(live) or rep.last_checkpoint_end is None:
        return None
    cp_file, cp_end = rep.last_checkpoint_end
    if cp_file != str(live) or rep.bad_offset < cp_end:
        return None
    tail = live.read_bytes()[rep.bad_offset :]
    for line in tail.split(b"\n"):
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict) and doc.get("kind") == "checkpoint" and check_sig(doc, public_key) is None:
            return None  # a signed checkpoint follows: the damage is in signed evidence
    moved = create_new(live.parent, f"{live.name}.rejected", tail)
    lines = tail.count(b"\n") + (0 if tail.endswith(b"\n") else 1)
    with open(live, "r+b") as fh:
        fh.truncate(rep.bad_offset)
        fh.flush()
        os.fsync(fh.fileno())
    log.error(
        "audit log %s: %d unsigned line(s) after the last checkpoint failed the keyed chain (%s); "
        "moved to %s",
        live, lines, rep.problem, moved,
    )  # fmt: skip
    return {
        "event": "tail_rejected",
        "decision": "tail_rejected",
        "quarantine": moved.name,
        "quarantined_lines": lines,
        "quarantined_bytes": len(tail),
        "quarantine_sha256": hashlib.sha256(tail).hexdigest(),
        "problem": rep.problem,
    }
