"""The guard's writer: group commit, checkpoints, rotation, recovery and witness publishing.

**Group commit**: requests hand their record to one writer task and wait; the writer takes every
record pending, writes them, and calls ``fsync`` once for the batch, then wakes the waiters. A
response is sent only after its record is on disk; an acknowledged request is always in the log.
The encoding (keyed chain, Merkle leaves, checkpoints) runs on the event loop. The write and the
fsync run on the loop's thread while the disk is fast (a moving average of the fsync time, measured
with the injected ``perf_clock``, below ``io_thread_ms``): a hop to another thread costs about as
much as such an fsync. On a slower disk they move to one dedicated I/O thread (the fsync releases
the GIL), so the loop goes on with the next requests meanwhile. Either way one batch is in flight at
a time, so the file is written in chain order.

**Checkpoints** are signed every ``checkpoint_every`` records, every ``checkpoint_seconds`` when
records are pending, and on a clean shutdown; each is also written to ``<log>.head`` and handed to
the **witnesses** (:mod:`.witness`) by a publisher task that always sends the newest head, off the
request path, once it has checked that the head the witness holds is a prefix of this log (the
log's RFC 6962 Merkle root at the witness's size equals the root it holds, section 2.1.2): a
witness holding another history is never overwritten (logged, counted). **Rotation**: when the
live file passes ``rotate_bytes`` it is hard-linked to
``<log>.N`` (a link never overwrites an operator's file) and unlinked, and a new live file opens
with a signed opening checkpoint carrying the Merkle frontier.

**Recovery** (at construction, :mod:`.recovery`): the live file is verified with the chain key
against its head and witnesses; a torn last write is cut, a forged unsigned tail is quarantined
and reported by a signed ``tail_rejected`` record, anything else wrong refuses to start.

**One chain per writer.** ``invguard serve --workers N`` gives each worker its own ``AuditLog`` (its
own path, ``guard.w0.jsonl``, ..., and its own witness keys); every chain verifies on its own with
:func:`.verify.verify`, and a manifest listing the chains, signed with the same key, lets a verifier
check the set as a whole (:mod:`.workers`).

With ``fsync: false`` none of this is durable: an acknowledged record can be lost in a crash.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from invguard.guard.auditlog.format import (
    CHAIN,
    ChainKey,
    UtcClock,
    canonical,
    fsync_dir,
    head_path,
    max_index,
    open_append,
    record_line,
    write_atomic,
)
from invguard.guard.auditlog.merkle import MerkleAccumulator
from invguard.guard.auditlog.recovery import recover
from invguard.guard.auditlog.signing import public_hex, sign
from invguard.guard.auditlog.witness import Witness, WitnessError

log = logging.getLogger("invguard.guard.audit")


class AuditLogError(Exception):
    """The audit log could not be written; the request must not be answered with a prediction."""


class AuditLog:
    """One chain. ``await log.append(fields)`` returns the record's ``seq`` once it is fsynced.

    A failed write (disk full, I/O error) is undone (the file is truncated back to the last good
    offset, the chain state restored) and its requests fail; the next batch tries again, so the
    log recovers by itself once space is freed. ``wall_clock`` (seconds since the epoch) stamps
    records and checkpoints; ``perf_clock`` times the fsyncs for the I/O-thread switch.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        signing_key: Any,
        chain_key: ChainKey,
        witnesses: Sequence[Witness] = (),
        checkpoint_every: int = 1000,
        checkpoint_seconds: float | None = None,
        rotate_bytes: int | None = None,
        fsync: bool = True,
        on_written: Callable[[int], None] | None = None,
        on_failed: Callable[[int], None] | None = None,
        on_tail_rejected: Callable[[int], None] | None = None,
        on_witness_failed: Callable[[int], None] | None = None,
        on_witness_inconsistent: Callable[[int], None] | None = None,
        io_thread_ms: float = 0.5,
        wall_clock: Callable[[], float] = time.time,
        perf_clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.path = Path(path)
        self.key = signing_key
        self.public_key = public_hex(signing_key)
        self.chain_key = chain_key
        self.witnesses = list(witnesses)
        self.checkpoint_every = int(checkpoint_every)
        self.checkpoint_seconds = checkpoint_seconds
        self.rotate_bytes = rotate_bytes
        self.do_fsync = fsync
        self.on_written, self.on_failed, self.on_tail_rejected = on_written, on_failed, on_tail_rejected
        self.on_witness_failed = on_witness_failed
        self.on_witness_inconsistent = on_witness_inconsistent
        self._held: dict[int, tuple[int, str]] = {}  # witness -> (size, root) known to be ours
        self.io_thread_s = io_thread_ms / 1000.0
        self._now = UtcClock(wall_clock)
        self._perf = perf_clock
        self._fsync_avg = 0.0  # moving average of the records' fsync time, seconds
        self._pending: list[tuple[dict[str, Any], asyncio.Future[int]]] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._publisher: asyncio.Task[None] | None = None
        self._publish_wake: asyncio.Event | None = None
        self._timer: Any = None
        self._cp_due = False
        self._file: Any = None
        self._io: concurrent.futures.ThreadPoolExecutor | None = None
        self._busy = False  # a batch is being written (the writer task is awaiting the I/O thread)
        self.broken: str | None = None
        self.degraded: str | None = None  # a checkpoint/rotation failed after the records were written
        self.witness_problem: str | None = (
            None  # the last witness publish failed (retried with the next head)
        )
        self.last_head: dict[str, Any] | None = None
        self._published: dict[str, Any] | None = None
        self.rejected_tail: Path | None = None
        self._recover()

    # ------------------------------------------------------------------ start-up
    def _recover(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        state = recover(
            self.path,
            public_key=self.public_key,
            chain_key=self.chain_key,
            witnesses=self.witnesses,
            check_head=self.do_fsync,
        )
        self._next_index = max_index(self.path) + 1
        self._acc = state.merkle
        self.seq, self.prev, self._since_checkpoint = state.seq, state.prev, state.since_checkpoint
        created = not self.path.exists()
        self._file = open_append(self.path)
        self._size = self._file.tell()
        if created:
            if self.do_fsync:
                fsync_dir(self.path.parent)
            self._write_opening()  # the genesis of a new log, or a rotation cut short by a crash
        if state.rejected is not None:
            self.rejected_tail = self.path.with_name(state.rejected["quarantine"])
            if self.on_tail_rejected is not None:
                self.on_tail_rejected(int(state.rejected["quarantined_lines"]))
            self._append_sealed(state.rejected)

    def _append_sealed(self, fields: dict[str, Any]) -> None:
        """Write one record and a checkpoint at once (outside the writer task: start-up only)."""
        self._since_checkpoint = self.checkpoint_every  # force the checkpoint after this record
        blob, _, head = self._encode([(fields, None)])
        self._write_sync(blob, head)

    async def start(self) -> None:
        self._io = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-io")
        self._wake = asyncio.Event()
        self._publish_wake = asyncio.Event()
        self._publish_lock = asyncio.Lock()
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._writer())
        if self.witnesses:
            self._publisher = loop.create_task(self._publish_loop())
            self._publish_wake.set()  # the head found at start-up
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
        if self._publisher is not None:
            async with self._publish_lock:  # a publish in flight finishes first (its thread would go on)
                self._publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._publisher
            self._publisher = None
            await self._publish_newest()  # the last head reaches the witnesses before the exit

    async def append(self, fields: dict[str, Any]) -> int:
        """Queue a record and wait until it is on disk; returns its ``seq``."""
        if self._wake is None:
            raise AuditLogError("audit log writer is not running")
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append((fields, fut))
        self._wake.set()
        return await fut

    # ------------------------------------------------------------------ encoding and writing
    def _checkpoint(self, *, opening: bool = False) -> dict[str, Any]:
        cp: dict[str, Any] = {
            "kind": "checkpoint",
            "size": self.seq,
            "last_hash": self.prev,
            "root": self._acc.root().hex(),
            "frontier": self._acc.frontier(),
            "chain": CHAIN,
            "chain_key_id": self.chain_key.key_id,
            "time": self._now(),
            "public_key": self.public_key,
        }
        if opening:
            cp["opening"] = True
        return sign(self.key, cp)

    def _encode(self, batch: list[tuple[dict[str, Any], Any]]) -> tuple[bytes, list[int], Any]:
        lines: list[bytes] = []
        seqs: list[int] = []
        head = None
        digest = self.chain_key.digest
        for fields, _ in batch:
            self.seq += 1
            body = canonical(
                {**fields, "kind": "record", "seq": self.seq, "time": self._now(), "prev": self.prev}
            )
            h = digest(self.prev, body)
            line = record_line(body, h)
            self.prev = h
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
            t0 = self._perf()
            os.fsync(self._file.fileno())
            self._fsync_avg = 0.8 * self._fsync_avg + 0.2 * (self._perf() - t0)
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
        write_atomic(head_path(self.path), canonical(head), fsync=self.do_fsync)
        self.last_head = head

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
        self._file = open_append(self.path)
        self._size = 0
        if self.do_fsync:
            fsync_dir(self.path.parent)
        self._write_opening()

    def _write_opening(self) -> None:
        head = self._checkpoint(opening=True)
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
            self._file = open_append(self.path)
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
                    self._file = open_append(self.path)
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
            if self._publish_wake is not None and self.last_head is not self._published:
                self._publish_wake.set()
            if not batch:
                continue
            if self.on_written is not None:
                self.on_written(len(batch))
            for (_, fut), seq in zip(batch, seqs, strict=True):
                if not fut.done():
                    fut.set_result(seq)

    # ------------------------------------------------------------------ witnesses
    async def _publish_loop(self) -> None:
        assert self._publish_wake is not None
        while True:
            await self._publish_wake.wait()
            self._publish_wake.clear()
            await self._publish_newest()

    async def _publish_newest(self) -> None:
        """Send the newest signed head to every witness (one at a time; a refusal is reported)."""
        async with self._publish_lock:
            await self._publish_locked()

    async def _publish_locked(self) -> None:
        head = self.last_head
        if head is None or head is self._published:
            return
        problems = []
        inconsistent = 0
        for i, w in enumerate(self.witnesses):
            try:
                problem = await asyncio.to_thread(self._consistency, i, w)
                if problem is not None:
                    inconsistent += 1
                    problems.append(problem)
                    log.error("audit log %s: %s", self.path, problem)
                    continue
                await asyncio.to_thread(w.publish, head)
                self._held[i] = (int(head["size"]), str(head["root"]))
            except WitnessError as e:
                problems.append(str(e))
        if problems:
            self.witness_problem = "; ".join(problems)
            log.warning("audit log %s: witness: %s", self.path, self.witness_problem)
            if self.on_witness_failed is not None:
                self.on_witness_failed(len(problems))
            if inconsistent and self.on_witness_inconsistent is not None:
                self.on_witness_inconsistent(inconsistent)
        else:
            self.witness_problem = None
        self._published = head

    def _consistency(self, i: int, w: Witness) -> str | None:
        """Why the head ``w`` holds is not a prefix of this log (RFC 6962 section 2.1.2: the log's
        Merkle root at the witness's size must equal the root it holds), or None. A head the
        witness took from this writer, or one it holds of a larger size (it refuses to go back by
        itself), is not recomputed."""
        held = w.read()
        if held is None:
            return None
        size, root = int(held.get("size", -1)), str(held.get("root"))
        if self._held.get(i) == (size, root) or size > self.seq:
            return None
        try:
            mine = root_at(self.path, size)
        except (OSError, ValueError) as e:
            return (
                f"the witness {w.name} holds a head of {size} records that cannot be compared with this "
                f"log ({e}): not overwritten"
            )
        if mine != root:
            return (
                f"the witness {w.name} holds a head of {size} records whose Merkle root is not this log's "
                f"at {size} records: it holds another history (the chain was swapped or rewritten); not "
                "overwritten"
            )
        self._held[i] = (size, root)
        return None


def root_at(path: Path, size: int) -> str:
    """The RFC 6962 Merkle root (hex) of the log's first ``size`` records, read from its files;
    ValueError if they are not all on disk (older files archived)."""
    from invguard.guard.auditlog.format import segments

    for _attempt in range(3):  # a rotation between listing and reading renames the live file
        acc = MerkleAccumulator()
        try:
            for fi, f in enumerate(segments(path)):
                with open(f, "rb") as fh:
                    for n, raw in enumerate(fh):
                        if acc.size >= size:
                            break
                        if n == 0:
                            first = json.loads(raw)
                            if fi == 0 and int(first.get("size", 0)) > 0:
                                n0 = first["size"]
                                raise ValueError(f"records 1-{n0} are not on disk: older files were archived")
                            continue
                        if json.loads(raw).get("kind") == "record":
                            acc.add(raw.rstrip(b"\n"))
                if acc.size >= size:
                    break
        except FileNotFoundError:
            continue
        if acc.size < size:
            raise ValueError(f"the log holds only {acc.size} records")
        return acc.root().hex()
    raise ValueError("the log's files kept moving while they were read")
