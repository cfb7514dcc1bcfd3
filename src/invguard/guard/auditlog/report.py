"""What a verification found (:class:`VerifyReport`) and the anchors it compared the log with."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from invguard.guard.auditlog.format import GENESIS


@dataclass(frozen=True)
class Anchor:
    """A signed checkpoint from outside the log's files that the log must agree with."""

    kind: str  # "head", "witness" or "trusted"
    name: str
    doc: dict[str, Any]

    @property
    def size(self) -> int:
        return int(self.doc.get("size", -1))


@dataclass
class VerifyReport:
    """What a scan found. ``ok`` is False at the first problem, which ``problem`` names."""

    ok: bool = True
    records: int = 0  # the seq of the last record (records before the first file present included)
    checkpoints: int = 0
    files: list[str] = field(default_factory=list)
    problem: str = ""
    bad_file: str | None = None
    bad_line: int | None = None
    bad_seq: int | None = None
    bad_offset: int | None = None  # byte offset of the bad line in bad_file
    warnings: list[str] = field(default_factory=list)
    last_hash: str = GENESIS
    last_checkpoint_size: int = 0
    last_checkpoint_end: tuple[str, int] | None = None  # (file, byte offset after the last checkpoint)
    torn_tail: tuple[Path, int] | None = None  # (file, byte offset of the incomplete last line)
    missing_newline: Path | None = None  # a complete last record without its final newline
    start_size: int = 0  # records before the first file present (vouched for by the trusted start)
    start: str = "the log's genesis"
    chain_checked: bool = False  # record hashes were checked with the chain key
    anchors: list[str] = field(default_factory=list)  # "what: size N" of every anchor that agreed
    anchor_sizes: list[int] = field(default_factory=list)

    def fail(
        self, file: Path | str, line: int, seq: int | None, msg: str, offset: int | None = None
    ) -> VerifyReport:
        self.ok = False
        self.bad_file, self.bad_line, self.bad_seq, self.bad_offset = str(file), line, seq, offset
        where = f"{file}:{line}" + (f" (record seq {seq})" if seq is not None else "")
        self.problem = f"{where}: {msg}"
        return self

    @property
    def verified_through(self) -> int:
        """The last seq with evidence: every record with the chain key, else the last signed one."""
        if self.chain_checked:
            return self.records
        return max([self.last_checkpoint_size, *self.anchor_sizes])

    def summary(self) -> str:
        if not self.ok:
            return f"FAILED after {self.records - self.start_size} good records: {self.problem}"
        first, last, through = self.start_size + 1, self.records, self.verified_through
        parts = []
        if last < first:
            parts.append(f"OK: no records; {self.checkpoints} signed checkpoint(s) verified")
        elif through < first:
            parts.append(f"OK: no record verified; {self.checkpoints} signed checkpoint(s) verified")
        else:
            parts.append(
                f"OK: records seq {first}-{through} verified ({through - first + 1} records, "
                f"{self.checkpoints} signed checkpoints, {len(self.files)} file(s))"
            )
        parts.append(f"starting from {self.start}")
        parts.extend(self.anchors)
        if through < last:
            parts.append(
                f"records seq {max(first, through + 1)}-{last} after the last signed checkpoint are NOT "
                "verified (pass --chain-key to check them)"
            )
        return "; ".join(parts)
