"""A tamper-evident, append-only JSONL audit log with group commit and signed Merkle checkpoints.

Format (one JSON object per line, canonical JSON: ``json.dumps(sort_keys=True,
separators=(",", ":"), ensure_ascii=False)``):

- a **record** (``"kind": "record"``): ``seq`` (1, 2, ...), ``time``, ``client``, ``role``, ``route``,
  ``status``, ``decision``, ``policy``, ``input_hmac``, ``labels``, ``entropy``, ``rows``,
  optionally ``input``, ``prev`` (the previous record's hash, 64 zeros for the first) and
  ``hash = SHA-256(bytes.fromhex(prev) || canonical(record without "hash"))``, written as the
  canonical JSON of the record without ``hash`` with ``"hash"`` appended as its last member.
  Deleting, inserting, reordering or modifying a record breaks the chain at the first record
  affected.
- a **checkpoint** (``"kind": "checkpoint"``) every ``checkpoint_every`` records: ``size`` (records
  so far, across rotated files), ``last_hash``, ``root`` (the Merkle tree hash of all records so far
  per RFC 6962 section 2.1: leaf hash ``SHA-256(0x00 || record line)``, interior node
  ``SHA-256(0x01 || left || right)``, split at the largest power of two smaller than the size),
  the signer's ``public_key`` and an Ed25519 signature ``sig`` (RFC 8032) over the canonical JSON of
  the checkpoint without ``sig``. The latest checkpoint is also written atomically to
  ``<log>.head``: keep a copy elsewhere (or pass it to ``invguard log verify --head``) and any
  truncation of records it covers is detected.

**Group commit**: requests hand their record to one writer task and wait; the writer takes every
record pending, writes them, and calls ``fsync`` once for the batch, then wakes the waiters. A
response is sent only after its record is on disk; an acknowledged request is always in the log.
The encoding (chain hashes, Merkle leaves, checkpoints) runs on the event loop. The write and the
fsync run on the loop's thread while the disk is fast (a moving average of the fsync time below
``io_thread_ms``, 0.5 ms by default): a hop to another thread costs about as much as such an fsync.
On a slower disk they move to one dedicated I/O thread (the fsync releases the GIL), so while the
disk works the loop goes on parsing, authenticating and predicting the next requests, which form the
next batch. Either way one batch is in flight at a time, so the file is written in chain order.

**Rotation**: when the live file passes ``rotate_bytes`` it is hard-linked to ``<log>.N`` (N = the
highest existing number + 1; a link never overwrites, so a file moved away or compressed by an
operator is never clobbered) and unlinked, and a new live file is started with an **opening
checkpoint**: a signed checkpoint that also carries ``frontier``, the roots of the perfect subtrees
of the Merkle tree so far. The chain (``prev``, ``seq``, the Merkle tree) continues across files,
and a file's opening checkpoint lets recovery (the live file only) and ``verify`` (the files still
present, e.g. after older ones were archived) start from a signed state instead of the whole
history. Checkpoints are also written every ``checkpoint_seconds`` when records are pending and on
a clean shutdown, so the tail not covered by the signed head stays short.

Every line must be exactly the canonical serialisation of its content (byte for byte): duplicate
keys, added whitespace or reordered members are tampering. A complete last record that only lacks
its final newline is kept (recovery adds the newline); only an unparseable fragment is a torn write.

Files are created with mode 0600 and the directory is fsynced when a file is created or renamed.
With ``fsync: false`` none of this is durable: an acknowledged record can be lost in a crash.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from invguard.core.errors import ConfigError

GENESIS = "0" * 64


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def canonical(obj: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8, no NaN/Infinity: the bytes every hash is taken over."""
    return _CANONICAL.encode(obj).encode("utf-8")


def record_hash(prev: str, body: dict[str, Any]) -> str:
    """``SHA-256(prev || canonical(body))`` where ``body`` is the record without its ``hash``."""
    return hashlib.sha256(bytes.fromhex(prev) + canonical(body)).hexdigest()


# ------------------------------------------------------------------------------------- RFC 6962 Merkle


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def merkle_root(leaves: list[bytes]) -> bytes:
    """MTH(D[n]) exactly as RFC 6962 section 2.1 defines it (recursive; the reference for tests)."""
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return leaf_hash(leaves[0])
    k = 1 << ((n - 1).bit_length() - 1)  # largest power of two < n
    return node_hash(merkle_root(leaves[:k]), merkle_root(leaves[k:]))


class MerkleAccumulator:
    """Incremental RFC 6962 tree hash: keeps one root per perfect subtree (O(log n) state).

    A tree of size n splits into perfect subtrees of the sizes of n's binary digits, largest
    first; the RFC's recursive split makes the root the right fold of those subtree roots.
    """

    def __init__(self) -> None:
        self._stack: list[tuple[int, bytes]] = []
        self.size = 0

    def add(self, data: bytes) -> None:
        h, height = leaf_hash(data), 0
        while self._stack and self._stack[-1][0] == height:
            _, left = self._stack.pop()
            h, height = node_hash(left, h), height + 1
        self._stack.append((height, h))
        self.size += 1

    def frontier(self) -> list[list[Any]]:
        return [[h, r.hex()] for h, r in self._stack]

    @classmethod
    def from_frontier(cls, frontier: Any, size: int) -> MerkleAccumulator:
        """Rebuild the state from a checkpoint's ``frontier`` (raises ValueError if malformed)."""
        acc = cls()
        if not isinstance(frontier, list):
            raise ValueError("frontier is not a list")
        for item in frontier:
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], int)):
                raise ValueError("frontier entries must be [height, hash]")
            acc._stack.append((int(item[0]), bytes.fromhex(str(item[1]))))
        if sum(1 << h for h, _ in acc._stack) != size:
            raise ValueError("frontier does not describe a tree of the checkpoint's size")
        acc.size = size
        return acc

    def copy(self) -> MerkleAccumulator:
        acc = MerkleAccumulator()
        acc._stack = list(self._stack)
        acc.size = self.size
        return acc

    def root(self) -> bytes:
        if not self._stack:
            return hashlib.sha256(b"").digest()
        r = self._stack[-1][1]
        for _, h in reversed(self._stack[:-1]):
            r = node_hash(h, r)
        return r


# ------------------------------------------------------------------------------------- keys


def load_signing_key(path: str | Path, *, create: bool = True) -> Any:
    """Load an Ed25519 private key (PKCS#8 PEM); create it (mode 0600, plus ``.pub``) if missing."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    p = Path(path)
    if not p.exists():
        if not create:
            raise ConfigError(f"{p}: signing key not found")
        p.parent.mkdir(parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        pub = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        p.with_name(p.name + ".pub").write_bytes(pub)
        return key
    try:
        loaded: Any = serialization.load_pem_private_key(p.read_bytes(), password=None)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{p}: not an unencrypted PEM private key ({e})") from None
    if not isinstance(loaded, Ed25519PrivateKey):
        raise ConfigError(f"{p}: expected an Ed25519 private key, got {type(loaded).__name__}")
    return loaded


def public_hex(key: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    return str(
        key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()
    )


def load_public_key_hex(path: str | Path) -> str:
    """Raw public key (hex) from a PEM public key file or a PEM private key file."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: public key file not found")
    data = p.read_bytes()
    try:
        pub: Any = serialization.load_pem_public_key(data)
    except ValueError:
        try:
            priv = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{p}: not a PEM Ed25519 key ({e})") from None
        if not isinstance(priv, Ed25519PrivateKey):
            raise ConfigError(f"{p}: not an Ed25519 key") from None
        pub = priv.public_key()
    if not isinstance(pub, Ed25519PublicKey):
        raise ConfigError(f"{p}: expected an Ed25519 public key, got {type(pub).__name__}")
    return str(pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex())


def _check_sig(cp: dict[str, Any]) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        pub = Ed25519PublicKey.from_public_bytes(bytes.fromhex(str(cp["public_key"])))
        body = {k: v for k, v in cp.items() if k != "sig"}
        pub.verify(bytes.fromhex(str(cp["sig"])), canonical(body))
        return True
    except (InvalidSignature, ValueError, KeyError, TypeError):
        return False


# ------------------------------------------------------------------------------------- files


def segments(path: str | Path) -> list[Path]:
    """The files of a log, oldest first: rotated ``<log>.1``, ``<log>.2``, ... then ``<log>``."""
    p = Path(path)
    pat = re.compile(re.escape(p.name) + r"\.(\d+)$")
    rotated = []
    if p.parent.exists():
        for q in p.parent.iterdir():
            m = pat.match(q.name)
            if m:
                rotated.append((int(m.group(1)), q))
    files = [q for _, q in sorted(rotated)]
    if p.exists():
        files.append(p)
    return files


def head_path(path: str | Path) -> Path:
    p = Path(path)
    return p.with_name(p.name + ".head")


# ------------------------------------------------------------------------------------- verification


@dataclass
class VerifyReport:
    """What ``verify`` found. ``ok`` is False at the first bad record, which ``problem`` names."""

    ok: bool = True
    records: int = 0
    checkpoints: int = 0
    files: list[str] = field(default_factory=list)
    problem: str = ""
    bad_file: str | None = None
    bad_line: int | None = None
    bad_seq: int | None = None
    warnings: list[str] = field(default_factory=list)
    last_hash: str = GENESIS
    last_checkpoint_size: int = 0
    torn_tail: tuple[Path, int] | None = None  # (file, byte offset of the incomplete last line)
    missing_newline: Path | None = None  # a complete last record without its final newline
    start_size: int = 0  # records before the first file present (covered by its opening checkpoint)

    def fail(self, file: Path, line: int, seq: int | None, msg: str) -> VerifyReport:
        self.ok = False
        self.bad_file, self.bad_line, self.bad_seq = str(file), line, seq
        where = f"{file}:{line}" + (f" (record seq {seq})" if seq is not None else "")
        self.problem = f"{where}: {msg}"
        return self

    def summary(self) -> str:
        if not self.ok:
            return f"FAILED after {self.records} good records: {self.problem}"
        return (
            f"OK: {self.records} records, {self.checkpoints} signed checkpoints verified "
            f"across {len(self.files)} file(s)"
        )


_MISSING_HEAD = (
    "head checkpoint {hp} not found: without it a truncated log cannot be detected; "
    "pass --head with a saved copy, or --allow-missing-head to accept this"
)


def _expected_record_line(doc: dict[str, Any], body: dict[str, Any]) -> bytes:
    return canonical(body)[:-1] + b',"hash":"' + str(doc.get("hash")).encode() + b'"}'


def _scan(
    path: str | Path,
    *,
    public_key: str | None = None,
    head: dict[str, Any] | None = None,
    on_record: Callable[[dict[str, Any], bytes], None] | None = None,
    merkle: MerkleAccumulator | None = None,
    head_file: Path | None = None,
    files: list[Path] | None = None,
) -> VerifyReport:
    """Check ``files`` (default: every segment of the log) in order. The first file may begin with
    an opening checkpoint of size > 0 (older files archived): its signed state is adopted."""
    rep = VerifyReport()
    files = segments(path) if files is None else files
    if not files:
        return rep.fail(Path(path), 0, None, "log file not found")
    rep.files = [str(f) for f in files]
    acc = merkle if merkle is not None else MerkleAccumulator()
    prev = GENESIS
    head_root: str | None = None
    head_size = int(head["size"]) if head is not None else -1
    for fi, f in enumerate(files):
        data = f.read_bytes()
        offset = 0
        lineno = 0
        while offset < len(data):
            nl = data.find(b"\n", offset)
            lineno += 1
            last_no_nl = False
            if nl < 0:
                if fi != len(files) - 1:
                    return rep.fail(
                        f, lineno, None, "incomplete line in a rotated file: the file was truncated"
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
            try:
                doc = json.loads(raw)
            except ValueError:
                return rep.fail(f, lineno, None, "not valid JSON: the line was modified or corrupted")
            except RecursionError:
                return rep.fail(f, lineno, None, "nested too deeply: the line was modified")
            if not isinstance(doc, dict):
                return rep.fail(f, lineno, None, "not a JSON object: the line was modified")
            kind = doc.get("kind")
            if kind == "record":
                seq = doc.get("seq")
                body = {k: v for k, v in doc.items() if k != "hash"}
                try:
                    expect_hash = record_hash(str(doc.get("prev", "")), body)
                    expect_line = _expected_record_line(doc, body)
                except ValueError:
                    return rep.fail(f, lineno, seq, "prev is not a hex hash: the record was modified")
                if doc.get("hash") != expect_hash:
                    return rep.fail(
                        f, lineno, seq, "hash does not match the record's content: the record was modified"
                    )
                if raw != expect_line:
                    return rep.fail(
                        f,
                        lineno,
                        seq,
                        "the line is not the canonical serialisation of its content (duplicate keys, "
                        "extra whitespace or reordered members): the record was modified",
                    )
                if doc.get("prev") != prev:
                    return rep.fail(
                        f,
                        lineno,
                        seq,
                        f"chain broken: prev does not match the hash of the preceding record "
                        f"(seq {rep.records}); "
                        "a record was deleted, inserted or reordered here",
                    )
                if seq != rep.records + 1:
                    return rep.fail(
                        f, lineno, seq, f"expected seq {rep.records + 1}: records deleted or reordered"
                    )
                prev = str(doc["hash"])
                acc.add(raw)
                rep.records += 1
                if on_record is not None:
                    on_record(doc, raw)
                if rep.records == head_size:
                    head_root = acc.root().hex()
            elif kind == "checkpoint":
                try:
                    canonical_ok = raw == canonical(doc)
                except ValueError:
                    canonical_ok = False
                if not canonical_ok:
                    return rep.fail(
                        f,
                        lineno,
                        None,
                        "the checkpoint is not in canonical form (duplicate keys, extra whitespace or "
                        "reordered members): the line was modified",
                    )
                size = doc.get("size")
                if fi == 0 and lineno == 1 and rep.records == 0 and isinstance(size, int) and size > 0:
                    if not _check_sig(doc):
                        return rep.fail(f, lineno, None, "checkpoint signature is invalid")
                    if public_key is not None and doc.get("public_key") != public_key:
                        return rep.fail(
                            f, lineno, None, "checkpoint is signed by a different key than the pinned one"
                        )
                    # an opening checkpoint: the files before this one were archived; start from it
                    try:
                        acc = MerkleAccumulator.from_frontier(doc.get("frontier"), size)
                    except ValueError as e:
                        return rep.fail(f, lineno, None, f"opening checkpoint is malformed ({e})")
                    if merkle is not None:
                        merkle._stack, merkle.size = acc._stack, acc.size
                        acc = merkle
                    rep.records = rep.start_size = size
                    prev = str(doc.get("last_hash"))
                    if rep.records == head_size:
                        head_root = acc.root().hex()
                    if f != Path(path) or len(files) > 1:
                        rep.warnings.append(
                            f"{f} starts at a signed checkpoint covering {size} earlier records whose "
                            "files are not here (archived?); they were not checked"
                        )
                if size != rep.records:
                    return rep.fail(
                        f,
                        lineno,
                        None,
                        f"checkpoint says {size} records, the log has {rep.records} here",
                    )
                if doc.get("last_hash") != prev:
                    return rep.fail(f, lineno, None, "checkpoint last_hash does not match the chain")
                if doc.get("root") != acc.root().hex():
                    return rep.fail(
                        f, lineno, None, "checkpoint Merkle root does not match the records before it"
                    )
                if "frontier" in doc and doc["frontier"] != acc.frontier():
                    return rep.fail(f, lineno, None, "checkpoint frontier does not match the records")
                if not _check_sig(doc):
                    return rep.fail(f, lineno, None, "checkpoint signature is invalid")
                if public_key is not None and doc.get("public_key") != public_key:
                    return rep.fail(
                        f, lineno, None, "checkpoint is signed by a different key than the pinned one"
                    )
                rep.checkpoints += 1
                rep.last_checkpoint_size = rep.records
            else:
                return rep.fail(
                    f, lineno, None, f"unknown line kind {kind!r}: the line was modified or inserted"
                )
            if last_no_nl:
                rep.missing_newline = f
                rep.warnings.append(
                    f"{f}:{lineno}: the last line lacks its final newline (the record is complete and "
                    "counted; a restart of the guard adds the newline)"
                )
    rep.last_hash = prev
    if head is not None:
        if not _check_sig(head):
            return rep.fail(head_file or Path("head"), 1, None, "head checkpoint signature is invalid")
        if public_key is not None and head.get("public_key") != public_key:
            return rep.fail(head_file or Path("head"), 1, None, "head checkpoint signed by another key")
        if rep.records < head_size:
            return rep.fail(
                files[-1],
                0,
                None,
                f"log truncated: the signed head checkpoint covers {head_size} records, the log holds only "
                f"{rep.records}",
            )
        if head_size < rep.start_size:
            return rep.fail(files[0], 1, None, "the head checkpoint is older than the first file present")
        if head_root != head.get("root"):
            return rep.fail(
                files[-1], 0, None, "the records do not match the Merkle root of the signed head checkpoint"
            )
    return rep


def read_head(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        doc = json.loads(p.read_bytes())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{p}: cannot read the head checkpoint ({e})") from None
    if not isinstance(doc, dict) or doc.get("kind") != "checkpoint":
        raise ConfigError(f"{p}: not a checkpoint (expected a JSON object with kind 'checkpoint')")
    return doc


def verify(
    path: str | Path,
    *,
    public_key: str | None = None,
    head: str | Path | None = None,
    use_default_head: bool = True,
    trust_embedded_key: bool = False,
    allow_missing_head: bool = False,
) -> VerifyReport:
    """Check the chain and every checkpoint of a log (with its rotated files) and the signed head
    checkpoint (``head``, or ``<log>.head`` next to it).

    Signatures prove nothing against the key written in the log itself (a forger re-signs with
    their own key), so a pinned ``public_key`` is required unless ``trust_embedded_key`` is set.
    A missing head is a failure unless ``allow_missing_head`` (it is what detects truncation).
    """
    if not segments(path):
        raise ConfigError(f"{path}: audit log not found")
    if public_key is None and not trust_embedded_key:
        raise ConfigError(
            f"{path}: no public key pinned: the checkpoints would be checked against the key written in "
            "the log, which a forger replaces; pass --public-key <the guard's signing key .pub>, or "
            "--trust-embedded-key to accept that"
        )
    hp: Path | None = None
    if head is not None:
        hp = Path(head)
    elif use_default_head and head_path(path).exists():
        hp = head_path(path)
    head_doc = read_head(hp) if hp is not None else None
    rep = _scan(path, public_key=public_key, head=head_doc, head_file=hp)
    if rep.ok and head_doc is None and not allow_missing_head:
        return rep.fail(head_path(path), 0, None, _MISSING_HEAD.format(hp=head_path(path)))
    if rep.ok and public_key is None and rep.checkpoints:
        rep.warnings.append(
            "signatures were checked against the key named in the log (--trust-embedded-key): a re-signed "
            "log passes this check; pin the expected key with --public-key"
        )
    return rep


# ------------------------------------------------------------------------------------- writer


_second: tuple[int, str] = (-1, "")  # (whole second, its "YYYY-MM-DDTHH:MM:SS" prefix), replaced whole


def _now() -> str:
    """The current UTC time as ISO 8601 with microseconds and ``Z`` (the prefix is cached per second)."""
    global _second
    t = time.time()
    sec = int(t)
    cached, prefix = _second
    if cached != sec:
        prefix = datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _second = (sec, prefix)
    return f"{prefix}.{int((t - sec) * 1e6):06d}Z"


def _fsync_dir(d: Path) -> None:
    dfd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _open_append(p: Path) -> Any:
    fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    return os.fdopen(fd, "ab")


class AuditLogError(Exception):
    """The audit log could not be written; the request must not be answered with a prediction."""


class AuditLog:
    """The guard's writer. ``await log.append(fields)`` returns once the record is fsynced.

    A failed write (disk full, I/O error) is undone (the file is truncated back to the last good
    offset, the chain state restored) and its requests fail; the next batch tries again, so the
    log recovers by itself once space is freed.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        signing_key: Any,
        checkpoint_every: int = 1000,
        checkpoint_seconds: float | None = None,
        rotate_bytes: int | None = None,
        fsync: bool = True,
        on_written: Callable[[int], None] | None = None,
        on_failed: Callable[[int], None] | None = None,
        io_thread_ms: float = 0.5,
    ) -> None:
        self.path = Path(path)
        self.io_thread_s = io_thread_ms / 1000.0
        self._fsync_avg = 0.0  # moving average of the records' fsync time, seconds
        self.key = signing_key
        self.public_key = public_hex(signing_key)
        self.checkpoint_every = int(checkpoint_every)
        self.checkpoint_seconds = checkpoint_seconds
        self.rotate_bytes = rotate_bytes
        self.do_fsync = fsync
        self.on_written = on_written
        self.on_failed = on_failed
        self._pending: list[tuple[dict[str, Any], asyncio.Future[int]]] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._timer: Any = None
        self._cp_due = False
        self._file: Any = None
        self._io: concurrent.futures.ThreadPoolExecutor | None = None
        self._busy = False  # a batch is being written (the writer task is awaiting the I/O thread)
        self.broken: str | None = None
        self.degraded: str | None = None  # a checkpoint/rotation failed after the records were written
        self._recover()

    # -- start-up: rebuild the chain state from the live file (it opens with a signed checkpoint)
    def _recover(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        files = segments(self.path)
        rotated = [f for f in files if f != self.path]
        if self.path.exists() and rotated and os.path.samefile(self.path, rotated[-1]):
            self.path.unlink()  # a crash between the link and the unlink of a rotation
            files = rotated
        self._next_index = self._max_index() + 1
        start = 0
        for i in range(len(files) - 1, -1, -1):
            if self._opens_with_checkpoint(files[i]):
                start = i
                break
        self._acc = MerkleAccumulator()
        rep = (
            _scan(self.path, merkle=self._acc, files=files[start:], public_key=self.public_key)
            if files
            else VerifyReport()
        )
        if not rep.ok:
            raise ConfigError(
                f"audit log {self.path} does not verify ({rep.problem}); move it aside (keep it as evidence) "
                "and start a new log"
            )
        if rep.torn_tail is not None:
            f, off = rep.torn_tail
            with open(f, "r+b") as fh:
                fh.truncate(off)
                fh.flush()
                os.fsync(fh.fileno())
        if rep.missing_newline is not None:
            with open(rep.missing_newline, "ab") as fh:
                fh.write(b"\n")
                fh.flush()
                os.fsync(fh.fileno())
        self.seq = rep.records
        self.prev = rep.last_hash
        self._since_checkpoint = rep.records - rep.last_checkpoint_size
        created = not self.path.exists()
        self._file = _open_append(self.path)
        self._size = self._file.tell()
        if created:
            if self.do_fsync:
                _fsync_dir(self.path.parent)
            if self.seq > 0:  # the live file was rotated away before a crash
                self._write_opening()

    def _max_index(self) -> int:
        pat = re.compile(re.escape(self.path.name) + r"\.(\d+)(?:\..*)?$")
        best = 0
        for q in self.path.parent.iterdir():
            m = pat.match(q.name)
            if m:
                best = max(best, int(m.group(1)))
        return best

    @staticmethod
    def _opens_with_checkpoint(f: Path) -> bool:
        with open(f, "rb") as fh:
            first = fh.readline(65536)
        return first.startswith(b'{"frontier":') and b'"kind":"checkpoint"' in first

    async def start(self) -> None:
        self._io = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-io")
        self._wake = asyncio.Event()
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._writer())
        if self.checkpoint_seconds:
            self._timer = loop.call_later(self.checkpoint_seconds, self._tick)

    def _tick(self) -> None:
        if self._since_checkpoint > 0:
            self._cp_due = True
            if self._wake is not None:
                self._wake.set()
        if self.checkpoint_seconds:
            self._timer = asyncio.get_running_loop().call_later(self.checkpoint_seconds, self._tick)

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None:
            while self._pending or self._busy:
                await asyncio.sleep(0.001)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._io is not None:
            self._io.shutdown(wait=True)
            self._io = None
        if self._file is not None:
            if self._since_checkpoint > 0 and self.broken is None:
                with contextlib.suppress(Exception):  # best effort: a clean shutdown seals the tail
                    head = self._checkpoint()
                    self._write_sync(canonical(head) + b"\n", head)
                    self._since_checkpoint = 0
            self._file.close()
            self._file = None

    async def append(self, fields: dict[str, Any]) -> int:
        """Queue a record and wait until it is on disk; returns its ``seq``."""
        if self._wake is None:
            raise AuditLogError("audit log writer is not running")
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append((fields, fut))
        self._wake.set()
        return await fut

    def _checkpoint(self) -> dict[str, Any]:
        cp: dict[str, Any] = {
            "kind": "checkpoint",
            "size": self.seq,
            "last_hash": self.prev,
            "root": self._acc.root().hex(),
            "frontier": self._acc.frontier(),
            "time": _now(),
            "public_key": self.public_key,
        }
        cp["sig"] = self.key.sign(canonical(cp)).hex()
        return cp

    def _encode(
        self, batch: list[tuple[dict[str, Any], asyncio.Future[int]]]
    ) -> tuple[bytes, list[int], Any]:
        lines: list[bytes] = []
        seqs: list[int] = []
        head = None
        for fields, _ in batch:
            self.seq += 1
            rec = {**fields, "kind": "record", "seq": self.seq, "time": _now(), "prev": self.prev}
            body = canonical(rec)
            digest = hashlib.sha256(bytes.fromhex(self.prev) + body).hexdigest()
            # the line is the body with "hash" appended: one serialisation per record
            line = body[:-1] + b',"hash":"' + digest.encode() + b'"}'
            self.prev = digest
            self._acc.add(line)
            lines.append(line)
            seqs.append(self.seq)
            self._since_checkpoint += 1
            if self._since_checkpoint >= self.checkpoint_every:
                head = self._checkpoint()
                lines.append(canonical(head))
                self._since_checkpoint = 0
        if self._cp_due and self._since_checkpoint > 0:
            head = self._checkpoint()
            lines.append(canonical(head))
            self._since_checkpoint = 0
        self._cp_due = False
        return b"\n".join(lines) + b"\n", seqs, head

    def _write_sync(self, blob: bytes, head: Any) -> None:
        """Write and fsync the records; then (best effort, never failing the batch) the head and
        a rotation: the records are on disk and will be acknowledged whatever happens after."""
        self._file.write(blob)
        self._file.flush()
        if self.do_fsync:
            t0 = time.perf_counter()
            os.fsync(self._file.fileno())
            self._fsync_avg = 0.8 * self._fsync_avg + 0.2 * (time.perf_counter() - t0)
        self._size += len(blob)
        try:
            if head is not None:
                self._write_head(head)
            if self.rotate_bytes is not None and self._size >= self.rotate_bytes:
                self._rotate()
            self.degraded = None
        except OSError as e:
            self.degraded = f"audit log {self.path}: head checkpoint or rotation failed ({e}); will retry"
            if head is not None:
                self._cp_due = True

    def _write_head(self, head: dict[str, Any]) -> None:
        hp = head_path(self.path)
        tmp = hp.with_name(hp.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(canonical(head))
            f.flush()
            if self.do_fsync:
                os.fsync(f.fileno())
        os.replace(tmp, hp)
        if self.do_fsync:
            _fsync_dir(self.path.parent)

    def _rotate(self) -> None:
        self._file.flush()
        while True:
            target = self.path.with_name(f"{self.path.name}.{self._next_index}")
            self._next_index += 1
            try:
                os.link(self.path, target)  # never overwrites an existing file
                break
            except FileExistsError:
                continue
        self._file.close()
        os.unlink(self.path)
        self._file = _open_append(self.path)
        self._size = 0
        if self.do_fsync:
            _fsync_dir(self.path.parent)
        self._write_opening()

    def _write_opening(self) -> None:
        head = self._checkpoint()
        blob = canonical(head) + b"\n"
        self._file.write(blob)
        self._file.flush()
        if self.do_fsync:
            os.fsync(self._file.fileno())
        self._size += len(blob)
        self._since_checkpoint = 0
        self._write_head(head)

    def _undo(self, offset: int, state: tuple[int, str, MerkleAccumulator, int]) -> None:
        """Put the file and the chain back to the last good state after a failed write."""
        self.seq, self.prev, self._acc, self._since_checkpoint = state
        with contextlib.suppress(Exception):
            self._file.close()
        try:
            with open(self.path, "r+b") as fh:
                fh.truncate(offset)
                fh.flush()
                os.fsync(fh.fileno())
            self._file = _open_append(self.path)
            self._size = offset
        except OSError:
            self._file = None

    async def _writer(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, []
            if not batch and not self._cp_due:
                continue
            state = (self.seq, self.prev, self._acc.copy(), self._since_checkpoint)
            offset = self._size
            self._busy = True
            try:
                if self._file is None:
                    self._file = _open_append(self.path)
                    self._size = offset = self._file.tell()
                blob, seqs, head = self._encode(batch)
                if self._fsync_avg >= self.io_thread_s:  # a slow disk: let the loop work meanwhile
                    await asyncio.shield(loop.run_in_executor(self._io, self._write_sync, blob, head))
                else:
                    self._write_sync(blob, head)
            except Exception as e:  # disk full, I/O error, unserialisable record
                self.broken = f"audit log {self.path} could not be written ({type(e).__name__}: {e})"
                self._undo(offset, state)
                if self.on_failed is not None and batch:
                    self.on_failed(len(batch))
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(AuditLogError(self.broken))
                continue
            finally:
                self._busy = False
            self.broken = None
            if not batch:
                continue
            if self.on_written is not None:
                self.on_written(len(batch))
            for (_, fut), seq in zip(batch, seqs, strict=True):
                if not fut.done():
                    fut.set_result(seq)
