"""Fixtures for the guard: configs, an in-process guard on a free port, a real redis-server."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from invguard.guard.auth import hash_key
from tests.programs import require
from tests.servers import free_port, serve

KEYS = {
    "internal": "k-internal-0123456789",
    "partner": "k-partner-0123456789",
    "default": "k-default-0123456789",
}
ROOT = Path(__file__).resolve().parents[2]


def base_config(tmp: Path, **over) -> dict:
    cfg = {
        "model": {
            "name": "digits",
            "kind": "torch",
            "path": "unused.pt",
            "input_range": [0, 1],
            "max_batch": 16,
        },
        "roles": {
            "internal": {"policy": "logits", "rate": {"burst": 1000, "per_second": 1000}},
            "partner": {"policy": "top_k=3 round=2", "rate": {"burst": 1000, "per_second": 1000}},
            "default": {"policy": "label_only", "rate": {"burst": 1000, "per_second": 1000}},
        },
        "auth": {"keys": [{"id": f"{r}-client", "sha256": hash_key(k), "role": r} for r, k in KEYS.items()]},
        "audit": {"path": str(tmp / "audit.jsonl"), "checkpoint_every": 10},
        "server": {"max_body_bytes": 20000},
    }
    for k, v in over.items():
        cfg[k] = {**cfg.get(k, {}), **v} if isinstance(v, dict) and k != "roles" else v
    return cfg


def audit_keys(audit_path) -> tuple[str, bytes]:
    """The guard's default signing key (public, hex) and HMAC secret for a log path."""
    from invguard.guard.app import key_paths
    from invguard.guard.auditlog import load_public_key_hex

    kp, hp = key_paths(str(audit_path), None, None)
    return load_public_key_hex(kp), bytes.fromhex(hp.read_text().strip())


def audit_chain_key(audit_path):
    """The guard's default chain key for a log path."""
    from invguard.guard.auditlog import chain_key_path, load_chain_key

    return load_chain_key(chain_key_path(audit_path, None), create=False)


def input_hmac(secret: bytes, body: bytes) -> str:
    import hashlib
    import hmac

    return hmac.new(secret, body, hashlib.sha256).hexdigest()


@pytest.fixture(scope="session")
def torch_model(digits_mlp):
    from invguard.guard.upstream import LocalModel
    from invguard.targets.torch import TorchTarget

    return LocalModel(TorchTarget(digits_mlp, input_shape=(1, 8, 8), num_classes=10, access="logits"))


@pytest.fixture()
def make_guard(tmp_path, torch_model):
    """Start a guard (in a thread, real uvicorn) for a config dict; yields (url, Guard)."""
    from contextlib import ExitStack

    from invguard.guard import from_dict
    from invguard.guard.app import Guard

    stack = ExitStack()

    def start(cfg: dict | None = None, *, model=None, **kw):
        cfg = cfg or base_config(tmp_path)
        guard = Guard(from_dict(cfg), model=model or torch_model, **kw)
        url = stack.enter_context(serve(guard.app))
        return url, guard

    with stack:
        yield start


@pytest.fixture(scope="session")
def sklearn_model_file(tmp_path_factory, digits_sklearn):
    p = tmp_path_factory.mktemp("models") / "digits-lr.pkl"
    p.write_bytes(pickle.dumps(digits_sklearn))
    return p


def write_sklearn_config(tmp: Path, model_file: Path, **over) -> Path:
    cfg = base_config(tmp, **over)
    cfg["model"] = {**cfg["model"], "kind": "sklearn", "path": str(model_file), "input_shape": [1, 8, 8]}
    p = tmp / f"guard-{len(list(tmp.glob('guard-*.yaml')))}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def spawn_guard(config: Path, port: int) -> subprocess.Popen:
    """``invguard serve`` as a subprocess (not yet ready)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "invguard.cli", "serve", str(config), "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def wait_ready(proc: subprocess.Popen, port: int) -> None:
    import urllib.request

    deadline = time.monotonic() + 90  # a loaded CI machine: the start imports numpy, sklearn (torch)
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"guard exited: {proc.stderr.read().decode() if proc.stderr else ''}"
                ) from None
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("guard did not start") from None
            time.sleep(0.05)


def start_guard_process(config: Path, port: int) -> subprocess.Popen:
    """``invguard serve`` as a subprocess; returns once /healthz answers."""
    proc = spawn_guard(config, port)
    wait_ready(proc, port)
    return proc


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def redis_url():
    """A real redis-server on a free loopback port, stopped by its PID."""
    exe = require("redis-server", "redis-server")
    port = free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("redis-server did not start")
            time.sleep(0.05)
    client.close()
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
