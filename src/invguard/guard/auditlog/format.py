"""The audit log's line format: canonical JSON, the keyed record chain, file names and file I/O.

Every line is one JSON object in canonical form (``json.dumps(sort_keys=True, separators=(",",
":"), ensure_ascii=False)``, no NaN), byte for byte: duplicate keys, added whitespace or
reordered members are tampering.

- A **record** (``"kind": "record"``) carries the guard's fields plus ``seq`` (1, 2, ...), ``time``,
  ``prev`` (the previous record's ``hash``; 64 zeros before the first) and
  ``hash = HMAC-SHA-256(chain_key, bytes.fromhex(prev) || canonical(record without "hash"))``
  (RFC 2104). The line is the canonical JSON of the record without ``hash`` with ``"hash"``
  appended as its last member. The chain key is a secret kept outside the log's directory: without
  it nobody can write a record that verifies, so a tail after the last signed checkpoint cannot be
  forged either.
- A **checkpoint** (``"kind": "checkpoint"``): ``size`` (records so far, across files),
  ``last_hash``, ``root`` (the RFC 6962 Merkle tree hash of every record line so far, see
  :mod:`.merkle`), ``frontier`` (the roots of its perfect subtrees), ``chain`` (``"hmac-sha256"``),
  ``chain_key_id`` (an HMAC of a fixed label under the chain key: names the key, reveals nothing),
  ``time``, the signer's ``public_key`` and an Ed25519 signature ``sig`` (RFC 8032) over the
  canonical JSON of the checkpoint without ``sig``. The first line of every file is an **opening**
  checkpoint (``"opening": true``): of size 0 in the log's first file (the **genesis**, where
  verification starts), of the size so far in a file started by rotation. No other checkpoint
  carries ``opening``, and a signature cannot be moved to another line, so a file whose first lines
  were cut no longer starts with an opening checkpoint.

Files: the live log ``<log>``, rotated files ``<log>.1``, ``<log>.2``, ... (oldest first; one
compressed in place, ``<log>.N.gz``, is read by the verifier), the
signed head ``<log>.head`` (the latest checkpoint, written atomically), and quarantined tails
``<log>.rejected.N``. Files are created with mode 0600.
"""

from __future__ import annotations

import gzip
import hashlib
import hmac
import json
import os
import re
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

GENESIS = "0" * 64
CHAIN = "hmac-sha256"

_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def canonical(obj: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8, no NaN/Infinity: the bytes every hash is taken over."""
    return _CANONICAL.encode(obj).encode("utf-8")


class ChainKey:
    """The secret of the record chain. ``digest(prev, body)`` is the record's ``hash``."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the chain key must be at least 16 bytes")
        self._base = hmac.new(secret, digestmod=hashlib.sha256)
        self.key_id = hmac.new(secret, b"invguard audit chain key id", hashlib.sha256).hexdigest()[:32]

    def digest(self, prev: str, body: bytes) -> str:
        h = self._base.copy()
        h.update(bytes.fromhex(prev))
        h.update(body)
        return h.hexdigest()


def record_line(body: bytes, digest: str) -> bytes:
    """The line of a record: its canonical body with ``"hash"`` appended as the last member."""
    return body[:-1] + b',"hash":"' + digest.encode() + b'"}'


def segments(path: str | Path, *, archived: bool = False) -> list[Path]:
    """The files of a log, oldest first: rotated ``<log>.1``, ``<log>.2``, ... then ``<log>``;
    with ``archived``, a rotated file compressed in place (``<log>.N.gz``) too, where ``<log>.N``
    itself is gone."""
    p = Path(path)
    pat = re.compile(re.escape(p.name) + (r"\.(\d+)(\.gz)?$" if archived else r"\.(\d+)$"))
    rotated: dict[int, Path] = {}
    if p.parent.exists():
        for q in p.parent.iterdir():
            m = pat.match(q.name)
            if m and (int(m.group(1)) not in rotated or not q.name.endswith(".gz")):
                rotated[int(m.group(1))] = q
    files = [q for _, q in sorted(rotated.items())]
    if p.exists():
        files.append(p)
    return files


def read_file(f: Path) -> bytes:
    """A log file's bytes (an archived ``.gz`` one decompressed)."""
    data = f.read_bytes()
    return gzip.decompress(data) if f.name.endswith(".gz") else data


def head_path(path: str | Path) -> Path:
    p = Path(path)
    return p.with_name(p.name + ".head")


def max_index(path: Path) -> int:
    """The highest N of ``<log>.N`` (compressed ``<log>.N.gz`` included), 0 if none."""
    pat = re.compile(re.escape(path.name) + r"\.(\d+)(?:\..*)?$")
    best = 0
    if path.parent.exists():
        for q in path.parent.iterdir():
            m = pat.match(q.name)
            if m:
                best = max(best, int(m.group(1)))
    return best


def fsync_dir(d: Path) -> None:
    dfd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def open_append(p: Path) -> Any:
    fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    return os.fdopen(fd, "ab")


def write_atomic(p: Path, data: bytes, *, fsync: bool = True) -> None:
    """Write ``p`` whole or not at all (a private temp file in the same directory, then rename)."""
    tmp = p.with_name(f"{p.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        if fsync:
            os.fsync(f.fileno())
    os.replace(tmp, p)
    if fsync:
        fsync_dir(p.parent)


def create_new(directory: Path, stem: str, data: bytes) -> Path:
    """Write ``data`` to ``<directory>/<stem>.N`` for the first N not taken (never overwrites)."""
    n = 1
    while True:
        p = directory / f"{stem}.{n}"
        try:
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            n += 1
            continue
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(directory)
        return p


class UtcClock:
    """ISO 8601 UTC timestamps with microseconds and ``Z`` from an injected ``time()`` (seconds);
    the ``YYYY-MM-DDTHH:MM:SS`` prefix is cached per second."""

    def __init__(self, time_fn: Callable[[], float] = time.time) -> None:
        self._time = time_fn
        self._second: tuple[int, str] = (-1, "")

    def __call__(self) -> str:
        t = self._time()
        sec = int(t)
        cached, prefix = self._second
        if cached != sec:
            prefix = datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self._second = (sec, prefix)
        return f"{prefix}.{int((t - sec) * 1e6):06d}Z"
