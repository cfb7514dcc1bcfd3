"""``invguard serve --workers N``: a supervisor and N guard worker processes on one port.

The supervisor checks that what must be shared is shared (below), opens every worker's chain of
the audit log (recovering it as a single guard does at start) and signs the worker manifest
(:mod:`invguard.guard.auditlog.workers`), holds the port, and starts each worker as
``python -m invguard.guard.workers CONFIG INDEX N HOST PORT``: a fresh interpreter (no fork of a
process holding threads or a model) with ``PROMETHEUS_MULTIPROC_DIR`` (``metrics.multiprocess_dir``,
by default ``<log>.metrics/`` beside the audit log, emptied at each start and removed at a clean
exit; recreated by a worker if it vanishes: see :mod:`invguard.guard.metrics`). Each worker
listens on its own ``SO_REUSEPORT`` socket, so the kernel spreads new connections over the live
workers by their addresses (one shared listening socket would let the first worker to wake take
every connection of a burst, kept alive). The
supervisor first binds the port without ``SO_REUSEPORT`` (any other server on it, another guard
included, is refused), then keeps it bound with ``SO_REUSEPORT`` but not listening: nothing else
can take it, and connections go to the workers only. Connections still queued at a worker that
dies are reset (never answered, so never acknowledged); the next go to the others.

When a worker exits the supervisor calls prometheus-client's ``mark_process_dead`` for it and
starts it again with the same index (its chain recovers: a torn last write is cut, as after any
crash); the others keep serving meanwhile. A worker exiting with code 2 (a configuration error)
stops the guard, and so does one that keeps dying within a second of its start. SIGTERM or
SIGINT stops the workers gracefully (each seals its chain with a checkpoint) and then the
supervisor. The workers share the supervisor's process group (and a service manager's cgroup): a
SIGKILL meant for the whole guard goes to the group, not to the supervisor alone.

**What is shared.** Rate limits and budgets, the keyless limit per address and detection state
live in Redis (``ratelimit.backend: redis``, ``detection.backend: redis``); in memory they would
be per worker (a client would get N times its rate and budget, and detection would see a share of
its queries), so the supervisor refuses N > 1 with them, naming the field. The incident store and
the key store are SQLite files in WAL mode (shared as they are), admin sessions are signed cookies
(any worker checks them), and the secrets are created race-free. The per-address connection cap
(``server.max_connections_per_address``) and the header timeout are per worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from invguard.core.errors import ConfigError
from invguard.guard.config import GuardConfig

GIVE_UP_AFTER = 5  # consecutive worker deaths within FAST_DEATH seconds of their start
FAST_DEATH = 1.0


def check_shared(cfg: GuardConfig, workers: int, where: str) -> None:
    """Refuse several workers when limits or detection state would be per worker."""
    if workers <= 1:
        return
    if cfg.ratelimit.backend == "memory":
        raise ConfigError(
            f"{where}: ratelimit.backend: 'memory' keeps each worker's rate limits and budgets apart: "
            f"with --workers {workers} a client would get {workers} times its limits; set "
            "ratelimit.backend: redis (and ratelimit.redis_url) to share them, or serve with one worker"
        )
    if cfg.detection.enabled and cfg.detection.backend == "memory":
        raise ConfigError(
            f"{where}: detection.backend: 'memory' keeps each worker's detector state apart: with "
            f"--workers {workers} each would see only its share of a client's queries; set "
            "detection.backend: redis (and detection.redis_url), or serve with one worker"
        )


def prepare_chains(cfg: GuardConfig, workers: int, log: Any = print) -> dict[str, Any]:
    """Check the set on disk against the manifest in force (refusing to start on a rollback, a chain
    deleted, swapped or added outside the guard: :func:`~invguard.guard.auditlog.workers.set_problem`),
    open (and so recover, or create) every worker's chain, sign the next manifest revision, and seal
    each chain with a ``worker_start`` record naming it, before any worker starts. Returns the
    manifest."""
    from invguard.guard.auditlog import AuditLog, witness_from_spec
    from invguard.guard.auditlog.signing import public_hex
    from invguard.guard.auditlog.workers import (
        manifest_path,
        publish_manifest,
        read_manifest,
        set_problem,
        single_chain_problem,
        worker_path,
        worker_start_record,
        worker_witness,
        write_manifest,
    )
    from invguard.guard.keys import open_keys

    a = cfg.audit
    keys = open_keys(a.path, a.signing_key, a.hash_key, a.chain_key)
    pk = public_hex(keys.signing_key)
    previous = None
    if manifest_path(a.path).exists():
        previous = read_manifest(a.path, pk)
        problem = set_problem(
            a.path, previous, public_key=pk, witnesses=a.witnesses, at_start=True, starting=workers
        )
    else:
        problem = single_chain_problem(a.path)
    if problem is not None:
        raise ConfigError(
            f"refusing to start: {problem}; investigate (keep the files as evidence) before starting "
            "the guard"
        )
    chains = [
        AuditLog(
            worker_path(a.path, i),
            signing_key=keys.signing_key,
            chain_key=keys.chain_key,
            witnesses=[witness_from_spec(worker_witness(w, i)) for w in a.witnesses],
            checkpoint_every=a.checkpoint_every,
            rotate_bytes=a.rotate_bytes,
            fsync=a.fsync,
        )
        for i in range(workers)
    ]
    manifest = write_manifest(a.path, workers, keys.signing_key, previous)
    for i, chain in enumerate(chains):
        asyncio.run(_seal(chain, worker_start_record(i, workers, manifest)))
    for problem in publish_manifest(manifest, a.witnesses, keys.signing_key):
        log(f"warning: the worker manifest's witness: {problem}")
    return manifest


async def _seal(chain: Any, start: dict[str, Any]) -> None:
    """Start a chain, write its ``worker_start`` record (so every chain names the manifest in
    force whatever becomes of its worker) and close it: the record and a tail recovered after a
    crash are sealed by a checkpoint, which reaches the chain's witnesses before its worker starts."""
    await chain.start()
    await chain.append(start)
    await chain.close()


def _bind(host: str, port: int, reuse_port: bool) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"port {port} is in use on {host}: stop the server holding it, or pass --port"
            ) from None
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    return sock


def reserve(host: str, port: int) -> socket.socket:
    """Hold the port for the workers (see the module docstring); port 0 picks a free one."""
    with _bind(host, port, reuse_port=False) as probe:  # refuses a port anyone else holds
        port = int(probe.getsockname()[1])
    return _bind(host, port, reuse_port=True)


def worker_socket(host: str, port: int) -> socket.socket:
    """A worker's own listening socket on the shared port."""
    sock = _bind(host, port, reuse_port=True)
    sock.listen(2048)
    return sock


class Supervisor:
    """Starts, restarts and stops the workers (see the module docstring)."""

    def __init__(
        self, config: Path, workers: int, sock: socket.socket, metrics_dir: Path, log: Any = print
    ) -> None:
        self.config, self.n, self.sock, self.log = config.resolve(), workers, sock, log
        self.host, self.port = str(sock.getsockname()[0]), int(sock.getsockname()[1])
        # the workers' metric files: emptied at each start (a previous run's are stale)
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.metrics_dir = str(metrics_dir)
        self.env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": self.metrics_dir}
        self.procs: dict[int, tuple[int, subprocess.Popen[bytes], float]] = {}  # pid -> (index, proc, t0)
        self.stopping = False
        self.exit_code = 0

    def _start(self, index: int) -> None:
        cmd = [sys.executable, "-m", "invguard.guard.workers", str(self.config), str(index), str(self.n)]
        proc = subprocess.Popen([*cmd, self.host, str(self.port)], env=self.env)
        self.procs[proc.pid] = (index, proc, time.monotonic())
        if self.stopping:  # a stop signal arrived while it was being started
            proc.send_signal(signal.SIGTERM)

    def _stop(self, *_: Any) -> None:
        self.stopping = True
        for _index, proc, _t0 in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)

    def run(self) -> int:
        from prometheus_client import multiprocess

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop)
        fast = 0
        try:
            for i in range(self.n):
                self._start(i)
            while self.procs:
                try:
                    pid, status = os.wait()
                except ChildProcessError:
                    break
                if pid not in self.procs:
                    continue
                index, proc, t0 = self.procs.pop(pid)
                proc.returncode = code = os.waitstatus_to_exitcode(status)
                with contextlib.suppress(OSError):  # the directory may have vanished: metrics only
                    multiprocess.mark_process_dead(pid, self.metrics_dir)  # type: ignore[no-untyped-call]
                if self.stopping:
                    continue
                fast = fast + 1 if time.monotonic() - t0 < FAST_DEATH else 0
                if code == 2 or fast >= GIVE_UP_AFTER:
                    why = "a configuration error" if code == 2 else f"{fast} deaths within {FAST_DEATH:g} s"
                    self.log(f"worker {index} exited with code {code} ({why}): stopping the guard")
                    self.exit_code = code if code > 0 else 1
                    self._stop()
                    continue
                self.log(f"worker {index} (pid {pid}) exited with code {code}: restarting it")
                self._start(index)
        finally:
            self._stop()
            for _index, proc, _t0 in list(self.procs.values()):
                with contextlib.suppress(ChildProcessError, subprocess.TimeoutExpired):
                    proc.wait(timeout=30)
            self.sock.close()
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
        return self.exit_code


def serve_workers(
    config: Path, cfg: GuardConfig, host: str, port: int, workers: int, log: Any = print
) -> int:
    """Check, prepare the chains, bind, and supervise ``workers`` workers until stopped."""
    check_shared(cfg, workers, str(config))
    prepare_chains(cfg, workers, log)
    sock = reserve(host, port)
    port = int(sock.getsockname()[1])
    log(
        f"guard serving model {cfg.model.name!r} on http://{host}:{port} with {workers} workers "
        f"(audit log chains {Path(cfg.audit.path).stem}.w0-w{workers - 1}, manifest "
        f"{Path(cfg.audit.path).stem}.workers.json)"
    )
    return Supervisor(config, workers, sock, metrics_dir(cfg), log).run()


def metrics_dir(cfg: GuardConfig) -> Path:
    """The workers' metrics directory: ``metrics.multiprocess_dir``, else ``<log>.metrics/``."""
    if cfg.metrics.multiprocess_dir:
        return Path(cfg.metrics.multiprocess_dir)
    p = Path(cfg.audit.path)
    return p.with_name(f"{p.stem}.metrics")


def run_worker(config: str, index: int, workers: int, host: str, port: int) -> None:
    """One worker: the guard for ``config`` as worker ``index`` of ``workers``, on its own socket."""
    import uvicorn

    from invguard.core.errors import InvguardError
    from invguard.guard import load
    from invguard.guard.app import Guard
    from invguard.guard.metrics import install_resilient_values

    install_resilient_values()  # before any metric exists: metrics never fail a request
    try:
        guard = Guard(load(config), worker=index, workers=workers)
    except InvguardError as e:
        print(f"error: worker {index}: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if index == 0:  # every worker has the same thresholds: one says them
        for line in guard.startup_report:
            print(line, flush=True)
    try:
        sock = worker_socket(host, port)
    except InvguardError as e:
        print(f"error: worker {index}: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    uc = uvicorn.Config(
        guard.app, log_level="warning", access_log=False, lifespan="on", http=guard.http_protocol
    )
    uvicorn.Server(uc).run(sockets=[sock])


if __name__ == "__main__":
    run_worker(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5]))
