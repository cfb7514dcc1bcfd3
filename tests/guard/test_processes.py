"""The guard as a real process: limits shared through Redis by two replicas, a SIGKILL under load,
and the key/log commands (which must not import torch)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import urllib.request

import numpy as np
from typer.testing import CliRunner

from invguard.cli import app as cli
from invguard.guard.auditlog import FileWitness, segments, verify
from tests.guard.conftest import (
    KEYS,
    ROOT,
    audit_chain_key,
    audit_keys,
    input_hmac,
    spawn_guard,
    start_guard_process,
    stop_process,
    wait_ready,
    write_sklearn_config,
)
from tests.servers import free_port


def post(port, body: bytes, key: str):
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/models/digits/predict",
        data=body,
        method="POST",
        headers={"X-API-Key": key, "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_two_guard_processes_share_limits_through_redis(tmp_path, sklearn_model_file, redis_url, digits):
    over = {
        "ratelimit": {"backend": "redis", "redis_url": redis_url, "prefix": "test-shared"},
    }
    procs, ports = [], []
    for i in range(2):
        d = tmp_path / f"g{i}"
        d.mkdir()
        cfg = write_sklearn_config(d, sklearn_model_file, **over)
        doc = __import__("yaml").safe_load(cfg.read_text())
        doc["roles"]["partner"] = {"policy": "top_k=3", "rate": {"burst": 6, "per_second": 0.01}}
        doc["roles"]["default"] = {
            "policy": "label_only",
            "rate": {"burst": 100, "per_second": 100},
            "budget": {"day": 4},
        }
        cfg.write_text(__import__("yaml").safe_dump(doc))
        port = free_port()
        procs.append(spawn_guard(cfg, port))
        ports.append(port)
    for p, port in zip(procs, ports, strict=True):
        wait_ready(p, port)
    try:
        body = json.dumps({"inputs": digits.evaluation.X[:1].tolist()}).encode()
        got = [post(ports[i % 2], body, KEYS["partner"])[0] for i in range(12)]
        assert got == [200] * 6 + [429] * 6
        got = [post(ports[i % 2], body, KEYS["default"])[0] for i in range(8)]
        assert got == [200] * 4 + [429] * 4
        assert json.loads(post(ports[0], body, KEYS["default"])[1])["code"] == "budget_exhausted"
    finally:
        for p in procs:
            stop_process(p)
    # each replica wrote its own log, and each verifies; both served a share of the shared quota
    for i, n in enumerate((11, 10)):
        log = tmp_path / f"g{i}" / "audit.jsonl"
        rep = verify(log, public_key=audit_keys(log)[0])
        assert rep.ok, rep.problem
        assert rep.records == n
        served = [json.loads(x)["role"] for x in log.read_text().splitlines() if '"decision":"served"' in x]
        assert sorted(served) == ["default", "default", "partner", "partner", "partner"]


def _load_and_kill(proc: subprocess.Popen, port: int, n: int, seed: int) -> list[bytes]:
    """8 clients post until ``n`` requests were answered 200, then the guard is SIGKILLed under the
    load; returns the acknowledged bodies."""
    acked: list[bytes] = []
    lock = threading.Lock()
    enough = threading.Event()

    def client(s: int) -> None:
        rng = np.random.default_rng(s)
        while True:
            body = json.dumps({"inputs": rng.random((1, 1, 8, 8)).round(6).tolist()}).encode()
            try:
                status, _ = post(port, body, KEYS["partner"])
            except OSError:
                return  # the guard is dead
            if status == 200:
                with lock:
                    acked.append(body)
                    if len(acked) >= n:
                        enough.set()

    threads = [threading.Thread(target=client, args=(seed * 100 + s,), daemon=True) for s in range(8)]
    for t in threads:
        t.start()
    try:
        assert enough.wait(timeout=60), f"the guard did not answer {n} requests"
        os.kill(proc.pid, signal.SIGKILL)  # mid-load: requests are in flight
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    for t in threads:
        t.join(timeout=15)
    return acked


def test_sigkill_under_load_loses_no_acknowledged_request_across_restarts_rotation_and_a_witness(
    tmp_path, sklearn_model_file
):
    """Three kill/restart cycles under load, with rotation and a witness: after each, every
    acknowledged request is in the log and the log verifies (chain key, pinned key, witness)."""
    witness = tmp_path / "other-mount" / "guard.head"
    cfg = write_sklearn_config(
        tmp_path,
        sklearn_model_file,
        audit={"checkpoint_every": 25, "rotate_bytes": 40_000, "witnesses": [f"file:{witness}"]},
    )
    log = tmp_path / "audit.jsonl"
    acked: list[bytes] = []
    for cycle in range(3):
        port = free_port()
        acked += _load_and_kill(start_guard_process(cfg, port), port, 60, cycle)
        pub, secret = audit_keys(log)
        rep = verify(log, public_key=pub, chain_key=audit_chain_key(log), witnesses=[FileWitness(witness)])
        assert rep.ok, rep.problem
        logged = {
            json.loads(line)["input_hmac"]
            for f in segments(log)
            for line in f.read_text().splitlines()
            if line.endswith("}") and '"decision":"served"' in line
        }
        missing = {input_hmac(secret, b) for b in acked} - logged
        assert not missing, f"cycle {cycle}: {len(missing)} acknowledged requests are not in the log"
        assert rep.records >= len(acked)
    assert len(segments(log)) >= 3  # it rotated
    assert json.loads(witness.read_text())["size"] > 0


def test_keys_commands_and_serve_errors(tmp_path):
    runner = CliRunner()
    store = tmp_path / "keys.db"
    res = runner.invoke(cli, ["keys", "add", "--role", "partner", "--id", "acme", "--store", str(store)])
    assert res.exit_code == 0, res.output
    key = res.stdout.strip().splitlines()[-1]
    assert key.startswith("igk_") and key.encode() not in store.read_bytes()
    res = runner.invoke(cli, ["keys", "add", "--role", "partner", "--id", "acme", "--store", str(store)])
    assert res.exit_code == 2 and "already exists" in " ".join(res.output.split())
    res = runner.invoke(cli, ["keys", "list", "--store", str(store)])
    assert res.exit_code == 0 and res.stdout.split()[:2] == ["acme", "partner"] and "active" in res.stdout
    assert runner.invoke(cli, ["keys", "revoke", "acme", "--store", str(store)]).exit_code == 0
    assert "revoked" in runner.invoke(cli, ["keys", "list", "--store", str(store)]).stdout
    res = runner.invoke(cli, ["keys", "revoke", "nobody", "--store", str(store)])
    assert res.exit_code == 2 and "no key with id 'nobody'" in " ".join(res.output.split())
    good = tmp_path / "good.yaml"
    good.write_text("model: {kind: sklearn, path: m.pkl}\nroles: {partner: top_k=3, internal: logits}\n")
    res = runner.invoke(cli, ["keys", "add", "--role", "admin", "--store", str(store), "--config", str(good)])
    assert res.exit_code == 2
    assert f"keys add: role 'admin' is not defined in {good}; its roles are ['internal', 'partner']" in (
        " ".join(res.output.split())
    )
    res = runner.invoke(cli, ["keys", "add", "--role", "internal", "--store", str(store), "-c", str(good)])
    assert res.exit_code == 0, res.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {kind: torch}\nroles: {partner: {policy: top_k=0}}\n")
    res = runner.invoke(cli, ["serve", str(bad)])
    assert res.exit_code == 2
    assert "model (line 1): kind 'torch' needs a path (a model file or reference/<name>)" in " ".join(
        res.output.split()
    )
    bad.write_text("model: {kind: sklearn, path: m.pkl}\nroles: {partner: {policy: top_k=0}}\n")
    res = runner.invoke(cli, ["serve", str(bad)])
    assert res.exit_code == 2 and "roles.partner.policy" in " ".join(res.output.split())


def test_key_and_log_commands_do_not_import_torch(tmp_path):
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from invguard.cli import app\n"
        f"r = CliRunner().invoke(app, ['keys', 'list', '--store', {str(tmp_path / 'k.db')!r}])\n"
        f"r2 = CliRunner().invoke(app, ['log', 'verify', {str(tmp_path / 'none.jsonl')!r}])\n"
        "print(r.exit_code, r2.exit_code, 'torch' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.split() == ["0", "2", "False"]


def test_the_example_config_is_valid():
    from invguard.guard import load
    from invguard.policies import parse

    cfg = load(ROOT / "examples" / "guard.yaml")
    assert cfg.model.path == "reference/digits-mlp" and cfg.ratelimit.backend == "memory"
    assert parse(cfg.roles["partner"].policy).describe() == "SCORES (top_k=3, rounded to 2 decimals)"
    assert cfg.auth.key_store == str(ROOT / "keys.db")
    assert cfg.audit.path == str(ROOT / "audit" / "guard.jsonl")
