"""``invguard serve --workers N``: one audit-log chain per worker bound by a signed manifest that
``log verify`` checks as a whole (attacks on it performed here), metrics summed over the workers,
and SIGKILLs of one worker and of all of them with no acknowledged request lost."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from invguard.cli import app as cli
from invguard.core.errors import ConfigError
from invguard.guard import from_dict
from invguard.guard.auditlog import AuditLog, chain_key_path, segments, verify
from invguard.guard.auditlog.workers import (
    manifest_digest,
    manifest_path,
    single_chain_problem,
    verify_workers,
    worker_path,
    worker_start_record,
)
from invguard.guard.keys import key_paths, open_keys
from invguard.guard.workers import prepare_chains
from tests.guard.conftest import (
    KEYS,
    ROOT,
    audit_chain_key,
    audit_keys,
    base_config,
    input_hmac,
    wait_ready,
    write_sklearn_config,
)
from tests.servers import free_port


# ------------------------------------------------------------------------------------ the manifest
def _write(cfg, worker: int, workers: int, records: int) -> None:
    """What worker ``worker`` writes at a start: its worker_start record, then ``records`` records."""
    keys = open_keys(cfg.audit.path, None, None)
    manifest = json.loads(manifest_path(cfg.audit.path).read_bytes())

    async def go() -> None:
        log = AuditLog(
            worker_path(cfg.audit.path, worker),
            signing_key=keys.signing_key,
            chain_key=keys.chain_key,
            checkpoint_every=4,
        )
        await log.start()
        await log.append({**worker_start_record(worker, workers, manifest), "worker": worker})
        for k in range(records):
            rec = {
                "decision": "served",
                "worker": worker,
                "client": "acme",
                "route": "/v1/models/{name}/predict",
            }
            await log.append({**rec, "input_hmac": f"h{worker}-{k}", "rows": 1})
        await log.close()

    asyncio.run(go())


def _check(log: Path):
    return verify_workers(log, public_key=audit_keys(log)[0], chain_key=audit_chain_key(log))


def _move(chain: Path, to: Path) -> None:
    for f in [*segments(chain), chain.with_name(chain.name + ".head")]:
        f.rename(to / f.name)


def test_the_manifest_binds_the_workers_chains_and_verify_catches_a_deleted_or_swapped_one(tmp_path):
    cfg = from_dict(base_config(tmp_path))
    log = Path(cfg.audit.path)
    prepare_chains(cfg, 2)
    for w in (0, 1):
        _write(cfg, w, 2, 5 + w)
    rep = _check(log)
    assert rep.ok, rep.problem
    assert [name for name, _ in rep.chains] == ["audit.w0.jsonl", "audit.w1.jsonl"]
    assert rep.records == (1 + 6) + (1 + 7)  # the supervisor's worker_start, then the worker's
    runner = CliRunner()
    pub = key_paths(str(log), None, None)[0]
    args = ["log", "verify", str(log), "--public-key", str(pub)]
    res = runner.invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert "2 chain(s) listed in the signed manifest" in res.stdout

    w0, w1 = worker_path(log, 0), worker_path(log, 1)
    aside = tmp_path / "aside"
    aside.mkdir()
    # a worker's chain deleted, head and all (each chain alone would say nothing: it is gone)
    _move(w1, aside)
    rep = _check(log)
    assert rep.problem == (
        f"{w1}: worker chain w1 listed in the signed manifest is missing: it was deleted or moved"
    )
    res = runner.invoke(cli, args)
    assert res.exit_code == 1 and "worker chain w1 listed in the signed manifest is missing" in res.output
    _move(aside / w1.name, tmp_path)
    assert _check(log).ok

    # the chains swapped, heads and all: each verifies on its own, the manifest says they moved
    swap = tmp_path / "swap"
    swap.mkdir()
    _move(w0, swap)
    for f in [*segments(w1), w1.with_name(w1.name + ".head")]:
        f.rename(f.with_name(f.name.replace(".w1.", ".w0.")))
    for f in swap.iterdir():
        f.rename(tmp_path / f.name.replace(".w0.", ".w1."))
    assert verify(w0, public_key=audit_keys(log)[0]).ok and verify(w1, public_key=audit_keys(log)[0]).ok
    rep = _check(log)
    assert rep.problem == (
        f"{w0}: worker chain w0 does not start with the genesis the signed manifest lists for it: the "
        "file was swapped with another chain's or replaced"
    )


def test_an_older_manifest_put_back_to_hide_a_deleted_chain_is_caught(tmp_path):
    cfg = from_dict(base_config(tmp_path))
    log = Path(cfg.audit.path)
    prepare_chains(cfg, 2)
    _write(cfg, 0, 2, 3)
    _write(cfg, 1, 2, 3)
    old = manifest_path(log).read_bytes()
    prepare_chains(cfg, 3)  # the guard restarted with a third worker
    for w in (0, 1, 2):
        _write(cfg, w, 3, 2)
    assert _check(log).ok
    new = manifest_path(log).read_bytes()
    # the attacker deletes w2's chain and puts back the signed manifest that did not list it
    for f in [*segments(worker_path(log, 2)), worker_path(log, 2).with_name("audit.w2.jsonl.head")]:
        f.unlink()
    manifest_path(log).write_bytes(old)
    rep = _check(log)
    assert rep.problem == (
        f"{worker_path(log, 0)}: worker chain w0 last started (record seq 7) under worker manifest "
        f"revision 2, and {manifest_path(log)} is revision 1: the manifest was rolled back to an older "
        "one (a chain added since may have been deleted)"
    )
    # nor can the manifest be edited: dropping w2 from the current one breaks its signature
    doc = json.loads(new)
    doc["chains"] = doc["chains"][:2]
    manifest_path(log).write_text(json.dumps(doc))
    assert _check(log).problem == (
        f"{manifest_path(log)}: the worker manifest's signature is invalid: it was modified or replaced"
    )


def _single(log: Path, records: int) -> None:
    """What a single-process guard writes: ``records`` records on ``log`` itself."""
    keys = open_keys(str(log), None, None)

    async def go() -> None:
        chain = AuditLog(log, signing_key=keys.signing_key, chain_key=keys.chain_key, checkpoint_every=4)
        await chain.start()
        for k in range(records):
            await chain.append({"decision": "served", "client": "acme", "input_hmac": f"s-{k}", "rows": 1})
        await chain.close()

    asyncio.run(go())


def _verify_cli(log: Path):
    pub = key_paths(str(log), None, None)[0]
    return CliRunner().invoke(cli, ["log", "verify", str(log), "--public-key", str(pub)])


def _gone(chain: Path) -> None:
    for f in [*segments(chain), chain.with_name(chain.name + ".head")]:
        f.unlink()


def test_deleting_the_manifest_does_not_turn_the_worker_chains_into_an_ignored_directory(tmp_path):
    """Hole: with the manifest gone, verify fell back to the single chain and ignored guard.w*."""
    cfg = from_dict(base_config(tmp_path))
    log = Path(cfg.audit.path)
    _single(log, 3)  # a single-process guard first (the natural case: it leaves audit.jsonl)
    prepare_chains(cfg, 2)
    for w in (0, 1):
        _write(cfg, w, 2, 3)
    assert _check(log).ok
    assert verify(log, public_key=audit_keys(log)[0]).ok  # the single chain alone is still intact
    manifest_path(log).unlink()
    missing = (
        f"the worker manifest {manifest_path(log)} is missing; worker chains w0, w1 exist beside "
        "audit.jsonl: the manifest was deleted (verify or serve the set with it in place)"
    )
    res = _verify_cli(log)
    assert res.exit_code == 1
    assert f"FAILED: {missing}" in " ".join(res.output.split())
    with pytest.raises(ConfigError) as e:  # nor does the guard start on it
        prepare_chains(cfg, 2)
    assert str(e.value) == (
        f"refusing to start: {missing}; investigate (keep the files as evidence) before starting the guard"
    )
    # only rotated (or archived) files of a chain left are still a chain
    _gone(worker_path(log, 1))
    w0 = worker_path(log, 0)
    data = w0.read_bytes()
    _gone(w0)
    (tmp_path / "audit.w0.jsonl.1").write_bytes(data)
    assert single_chain_problem(log) == missing.replace("w0, w1", "w0")
    os.rename(tmp_path / "audit.w0.jsonl.1", tmp_path / "audit.w0.jsonl.1.gz")
    assert single_chain_problem(log) == missing.replace("w0, w1", "w0")


def test_a_worker_chain_renamed_to_the_single_chain_does_not_verify_as_one(tmp_path):
    """Hole: remove the manifest and w1, rename w0's files to audit.jsonl*: it verified OK."""
    cfg = from_dict(base_config(tmp_path))
    log = Path(cfg.audit.path)
    prepare_chains(cfg, 2)
    for w in (0, 1):
        _write(cfg, w, 2, 3)
    manifest_path(log).unlink()
    _gone(worker_path(log, 1))
    w0 = worker_path(log, 0)
    for f in [*segments(w0), w0.with_name(w0.name + ".head")]:
        f.rename(f.with_name(f.name.replace(".w0.", ".")))
    assert verify(log, public_key=audit_keys(log)[0]).ok  # the chain itself is intact
    res = _verify_cli(log)
    assert res.exit_code == 1
    assert (
        f"FAILED: the worker manifest {manifest_path(log)} is missing, and {log} holds records written "
        "by a worker (record seq 1 names worker 0): the chain was written under a manifest (its files "
        "were renamed, or the manifest deleted)"
    ) in " ".join(res.output.split())
    # one worker's chain may be read alone only while its manifest is in place
    assert single_chain_problem(worker_path(log, 3)) == (
        f"the worker manifest {manifest_path(log)} is missing; audit.w3.jsonl is the chain of worker w3 "
        "of audit.jsonl: the manifest was deleted"
    )


def test_after_workers_every_start_is_one_of_the_set_and_every_chain_is_bound(tmp_path, torch_model):
    """Hole: after --workers 2 then --workers 1, the new single chain was checked only if present."""
    from invguard.guard.app import Guard

    cfg = from_dict(base_config(tmp_path))
    log = Path(cfg.audit.path)
    _single(log, 2)
    prepare_chains(cfg, 2)
    _write(cfg, 0, 2, 2)
    _write(cfg, 1, 2, 2)
    m = prepare_chains(cfg, 1)  # --workers 1 (and plain serve) once a manifest exists
    _write(cfg, 0, 1, 2)
    assert (m["revision"], m["workers"]) == (2, 1)
    assert [(c["file"], c["started"]) for c in m["chains"]] == [
        ("audit.jsonl", None), ("audit.w0.jsonl", 2), ("audit.w1.jsonl", 1),
    ]  # fmt: skip
    assert _check(log).ok
    with pytest.raises(ConfigError) as e:  # a single-process guard does not write beside the set
        Guard(cfg, model=torch_model)
    assert str(e.value) == (
        f"audit.path: {log} is written by several workers (manifest {manifest_path(log)}): serve it with "
        "invguard serve, which opens the chains and signs the manifest for any number of workers"
    )
    # a single-process chain begun beside the set is not part of it
    aside = tmp_path / "aside"
    aside.mkdir()
    _move(log, aside)
    _single(log, 2)
    assert _check(log).problem == (
        f"{log}: the single-process chain does not start with the genesis the signed manifest lists for "
        "it: the file was swapped with another chain's or replaced"
    )
    _gone(log)
    # every chain ever opened is listed: deleting any fails, the retired w1 and the first one too
    assert _check(log).problem == (
        f"{log}: the single-process chain listed in the signed manifest is missing: it was deleted or moved"
    )
    _move(aside / log.name, tmp_path)
    assert _check(log).ok
    _gone(worker_path(log, 1))
    assert _check(log).problem == (
        f"{worker_path(log, 1)}: worker chain w1 listed in the signed manifest is missing: it was deleted "
        "or moved"
    )


def test_a_restart_does_not_launder_a_rolled_back_set(tmp_path, sklearn_model_file):
    """Hole: an older (validly signed) manifest put back after deleting a chain, then a restart:
    the supervisor accepted it and the workers named it."""
    config = write_sklearn_config(tmp_path, sklearn_model_file)
    cfg = from_dict(yaml.safe_load(config.read_text()))
    log = Path(cfg.audit.path)
    prepare_chains(cfg, 2)
    old = manifest_path(log).read_bytes()
    prepare_chains(cfg, 3)
    _gone(worker_path(log, 2))
    manifest_path(log).write_bytes(old)
    rolled = (
        f"refusing to start: {worker_path(log, 0)}: worker chain w0 last started (record seq 2) under "
        f"worker manifest revision 2, and {manifest_path(log)} is revision 1: the manifest was rolled back "
        "to an older one (a chain added since may have been deleted); investigate (keep the files as "
        "evidence) before starting the guard"
    )
    with pytest.raises(ConfigError) as e:
        prepare_chains(cfg, 2)
    assert str(e.value) == rolled
    res = CliRunner().invoke(cli, ["serve", str(config), "--port", str(free_port())])  # plain serve too
    assert res.exit_code == 2
    assert rolled in " ".join(res.output.split())
    assert manifest_path(log).read_bytes() == old  # nothing written
    # a chain on disk that the manifest does not list
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    cfg2 = from_dict(base_config(fresh))
    log2 = Path(cfg2.audit.path)
    prepare_chains(cfg2, 2)
    (fresh / "audit.w7.jsonl.3").write_bytes(worker_path(log2, 0).read_bytes())
    with pytest.raises(ConfigError) as e:
        prepare_chains(cfg2, 2)
    assert str(e.value).startswith(
        f"refusing to start: {fresh / 'audit.w7.jsonl.3'}: a worker chain (w7) that the signed manifest "
        f"{manifest_path(log2)} does not list: it was added outside the guard"
    )
    assert _check(log2).problem.startswith(f"{fresh / 'audit.w7.jsonl.3'}: a worker chain (w7)")


def test_a_whole_directory_put_back_is_caught_by_the_manifests_witness(tmp_path):
    witness = tmp_path / "other-mount" / "guard.head"
    cfg = from_dict(base_config(tmp_path / "d", audit={"witnesses": [f"file:{witness}"]}))
    log = Path(cfg.audit.path)
    prepare_chains(cfg, 2)
    backup = tmp_path / "backup"
    shutil.copytree(log.parent, backup)
    prepare_chains(cfg, 2)
    held = json.loads((witness.parent / "guard.manifest.head").read_bytes())
    assert (held["chain"], held["size"]) == ("worker_manifest", 2)
    shutil.rmtree(log.parent)
    shutil.copytree(backup, log.parent)  # every chain, head and the manifest as they were at revision 1
    rolled = (
        f"the witness file:{witness.parent / 'guard.manifest.head'} holds worker manifest revision 2, "
        "newer than revision 1 on disk: the manifest was rolled back"
    )
    with pytest.raises(ConfigError) as e:
        prepare_chains(cfg, 2)
    assert str(e.value) == (
        f"refusing to start: {rolled}; investigate (keep the files as evidence) before starting the guard"
    )
    rep = verify_workers(log, public_key=audit_keys(log)[0], witnesses=[f"file:{witness}"])
    assert rep.problem == rolled


def test_a_worker_that_never_ran_its_lifespan_is_no_false_alarm(tmp_path):
    """Hole: a worker SIGTERMed before its lifespan wrote no worker_start, and verify then said the
    manifest was replaced by an older one. The supervisor now writes every chain's worker_start."""
    cfg = from_dict(base_config(tmp_path))
    log = Path(cfg.audit.path)
    prepare_chains(cfg, 2)
    _write(cfg, 0, 2, 2)
    _write(cfg, 1, 2, 2)
    prepare_chains(cfg, 3)
    _write(cfg, 0, 3, 1)  # w1 and w2 were stopped before their lifespans ran
    rep = _check(log)
    assert rep.ok, rep.problem
    prepare_chains(cfg, 2)  # and the restart after that is accepted, w2 retired
    assert _check(log).ok
    # a start interrupted after signing the manifest, before sealing the chains: the next start
    # repairs it; verify in between names the chain exactly
    keys = open_keys(str(log), None, None)
    from invguard.guard.auditlog.workers import read_manifest, write_manifest

    prev = read_manifest(log, audit_keys(log)[0])
    write_manifest(log, 2, keys.signing_key, prev)
    assert _check(log).problem == (
        f"{worker_path(log, 0)}: worker chain w0 last started (record seq 8) under another manifest "
        f"(revision 3) than {manifest_path(log)} says (revision 4): the manifest was replaced by an older "
        "one (a chain added since may have been deleted)"
    )
    prepare_chains(cfg, 2)
    assert _check(log).ok
    # a start of 3 interrupted after opening w2's chain, before signing the manifest: w2 holds no
    # record, so the next start of 3 lists it; one holding records is refused
    keys = open_keys(str(log), None, None)
    AuditLog(worker_path(log, 2), signing_key=keys.signing_key, chain_key=keys.chain_key)
    assert prepare_chains(cfg, 3)["workers"] == 3
    assert _check(log).ok
    w3 = AuditLog(worker_path(log, 3), signing_key=keys.signing_key, chain_key=keys.chain_key)

    async def one() -> None:
        await w3.start()
        await w3.append({"decision": "served"})
        await w3.close()

    asyncio.run(one())
    with pytest.raises(ConfigError) as e:
        prepare_chains(cfg, 4)
    assert "a worker chain (w3) that the signed manifest" in str(e.value)


def test_the_timeline_of_a_log_of_several_workers_replays_every_chain_verified(tmp_path):
    from invguard.guard import timeline as tl

    cfg = from_dict(base_config(tmp_path))
    log = Path(cfg.audit.path)
    prepare_chains(cfg, 2)
    _write(cfg, 0, 2, 3)
    _write(cfg, 1, 2, 2)
    pub = audit_keys(log)[0]
    t = tl.build(log, public_key=pub, chain_key=audit_chain_key(log), clients=["acme"])
    assert t.verified.startswith("OK: 2 chain(s) listed in the signed manifest")
    assert [(e.worker, e.seq, e.input_hmac) for e in t.entries] == [
        (0, 3, "h0-0"), (0, 4, "h0-1"), (0, 5, "h0-2"), (1, 3, "h1-0"), (1, 4, "h1-1"),
    ]  # fmt: skip
    assert t.columns[-1] == "worker" and t.to_csv().splitlines()[0].endswith(",worker")
    worker_path(log, 1).unlink()
    with pytest.raises(tl.TimelineError) as e:
        tl.build(log, public_key=pub, chain_key=audit_chain_key(log), clients=["acme"])
    assert str(e.value) == (
        "refusing to build a timeline from a log that does not verify: FAILED: "
        f"{worker_path(log, 1)}: worker chain w1 listed in the signed manifest is missing: it was deleted "
        "or moved"
    )


def test_several_workers_with_limits_in_memory_are_refused_naming_the_field(tmp_path, sklearn_model_file):
    cfg = write_sklearn_config(tmp_path, sklearn_model_file)
    res = CliRunner().invoke(cli, ["serve", str(cfg), "--workers", "2", "--port", str(free_port())])
    assert res.exit_code == 2
    assert (
        f"{cfg}: ratelimit.backend: 'memory' keeps each worker's rate limits and budgets apart: with "
        "--workers 2 a client would get 2 times its limits; set ratelimit.backend: redis (and "
        "ratelimit.redis_url) to share them, or serve with one worker"
    ) in " ".join(res.output.split())
    assert not any(tmp_path.glob("audit*"))  # refused before any chain was opened


# ------------------------------------------------------------------------------------ processes
def post(port: int, body: bytes, key: str = KEYS["partner"]) -> int:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/models/digits/predict",
        data=body,
        method="POST",
        headers={"X-API-Key": key, "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            r.read()
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def spawn_workers(config: Path, port: int, n: int = 2) -> subprocess.Popen:
    # TMPDIR: the metrics directory of a supervisor killed with SIGKILL stays in the test's tmp_path
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "src"),
        "OMP_NUM_THREADS": "1",
        "TMPDIR": str(config.parent),
    }
    cmd = [sys.executable, "-m", "invguard.cli", "serve", str(config), "--port", str(port)]
    return subprocess.Popen(
        [*cmd, "--workers", str(n)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # the test can end the supervisor and its workers as one group
    )


def workers_of(supervisor: int) -> dict[int, int]:
    """The live workers of a supervisor: index -> pid (from /proc)."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            argv = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if (
            ppid == supervisor
            and b"invguard.guard.workers" in argv
            and stat.rsplit(")", 1)[1].split()[0] != "Z"
        ):
            out[int(argv[argv.index(b"invguard.guard.workers") + 2])] = int(d.name)
    return out


def end_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


class Load:
    """8 clients posting distinct inputs until stopped; ``acked`` holds the bodies answered 200
    (a connection refused or reset while a worker dies is retried, never counted)."""

    def __init__(self, port: int, seed: int = 0) -> None:
        self.port, self.acked, self.errors = port, [], 0
        self.lock, self.stop, self.more = threading.Lock(), threading.Event(), threading.Condition()
        self.threads = [
            threading.Thread(target=self._client, args=(seed * 100 + s,), daemon=True) for s in range(8)
        ]
        for t in self.threads:
            t.start()

    def _client(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        while not self.stop.is_set():
            body = json.dumps({"inputs": rng.random((1, 1, 8, 8)).round(6).tolist()}).encode()
            try:
                status = post(self.port, body)
            except OSError:
                with self.lock:
                    self.errors += 1
                continue
            if status == 200:
                with self.more:
                    self.acked.append(body)
                    self.more.notify_all()

    def wait_for(self, n: int) -> None:
        with self.more:
            assert self.more.wait_for(lambda: len(self.acked) >= n, timeout=90), f"fewer than {n} answered"

    def end(self) -> list[bytes]:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=20)
        return list(self.acked)


def _served(chain: Path) -> list[dict]:
    return [
        json.loads(line)
        for f in segments(chain)
        for line in f.read_text().splitlines()
        if line.endswith("}") and '"decision":"served"' in line
    ]


def _samples(text: str) -> dict[str, list[tuple[dict, float]]]:
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, list[tuple[dict, float]]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def test_metrics_of_two_workers_are_summed_on_every_scrape(tmp_path, sklearn_model_file, redis_url, digits):
    cfg = write_sklearn_config(
        tmp_path, sklearn_model_file, ratelimit={"backend": "redis", "redis_url": redis_url, "prefix": "t-mw"}
    )
    log = tmp_path / "audit.jsonl"
    port = free_port()
    proc = spawn_workers(cfg, port)
    try:
        wait_ready(proc, port)
        body = json.dumps({"inputs": digits.evaluation.X[:1].tolist()}).encode()
        sent, statuses = 0, []
        # concurrent batches until both workers have answered some (the kernel picks the acceptor)
        while not all(_served(worker_path(log, w)) for w in (0, 1)):
            assert sent < 2000, "one worker took every connection"
            got: list[int] = []

            def one(got: list[int] = got) -> None:
                got.append(post(port, body))

            threads = [threading.Thread(target=one) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            statuses += got
            sent += len(got)
        assert statuses == [200] * sent
        shares = [len(_served(worker_path(log, w))) for w in (0, 1)]
        assert sum(shares) == sent and min(shares) > 0
        for _ in range(4):  # whichever worker answers the scrape, it serves the sum
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                m = _samples(r.read().decode())
            assert sum(v for _, v in m["invguard_guard_requests_total"]) == sent
            assert sum(v for _, v in m["invguard_guard_rows_served_total"]) == sent
            # every answer's record and each worker's worker_start record
            assert sum(v for _, v in m["invguard_guard_audit_records_written_total"]) == sent + 2
            assert m["invguard_guard_ready"] == [({}, 1.0)]
            assert [v for _, v in m["invguard_guard_model_info"]] == [1.0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        end_group(proc)
    assert proc.returncode == 0, proc.stderr.read().decode() if proc.stderr else ""
    rep = verify_workers(log, public_key=audit_keys(log)[0], chain_key=audit_chain_key(log))
    assert rep.ok, rep.problem


def test_sigkill_of_one_worker_then_of_all_loses_no_acknowledged_request(
    tmp_path, sklearn_model_file, redis_url
):
    """N = 2 under load: one worker SIGKILLed (the other keeps serving, the supervisor restarts it
    and its chain recovers), then every process SIGKILLed; the whole log verifies (manifest, chain
    key, pinned key, each worker's witness) and holds every acknowledged request."""
    witness = tmp_path / "other-mount" / "guard.head"
    cfg = write_sklearn_config(
        tmp_path,
        sklearn_model_file,
        ratelimit={"backend": "redis", "redis_url": redis_url, "prefix": "t-kill"},
        audit={"checkpoint_every": 25, "rotate_bytes": 20_000, "witnesses": [f"file:{witness}"]},
    )
    log = tmp_path / "audit.jsonl"
    port = free_port()
    proc = spawn_workers(cfg, port)
    try:
        wait_ready(proc, port)
        load = Load(port)
        load.wait_for(60)
        first = workers_of(proc.pid)
        assert sorted(first) == [0, 1]
        os.kill(first[1], signal.SIGKILL)  # mid-load: its requests in flight are never acknowledged
        n = len(load.acked)
        load.wait_for(n + 60)  # worker 0 alone, then the restarted worker 1 with it
        for _ in range(1000):  # until the supervisor has restarted worker 1 (worker 0 serving meanwhile)
            now = workers_of(proc.pid)
            if 1 in now and now[1] != first[1]:
                break
            load.wait_for(len(load.acked) + 4)
        else:
            raise AssertionError("worker 1 was not restarted")
        k = len(_served(worker_path(log, 1)))
        for _ in range(1000):  # until the new worker 1 has answered too
            if len(_served(worker_path(log, 1))) > k:
                break
            load.wait_for(len(load.acked) + 4)
        else:
            raise AssertionError("the restarted worker 1 answered nothing")
        load.wait_for(len(load.acked) + 30)
        os.killpg(proc.pid, signal.SIGKILL)  # every process at once, under load
        proc.wait(timeout=10)
        acked = load.end()
    finally:
        end_group(proc)
    pub, secret = audit_keys(log)
    rep = verify_workers(log, public_key=pub, chain_key=audit_chain_key(log), witnesses=[f"file:{witness}"])
    assert rep.ok, rep.problem
    logged = {r["input_hmac"] for w in (0, 1) for r in _served(worker_path(log, w))}
    missing = {input_hmac(secret, b) for b in acked} - logged
    assert not missing, f"{len(missing)} acknowledged requests are not in the log"
    starts = [
        json.loads(x)
        for f in segments(worker_path(log, 1))
        for x in f.read_text().splitlines()
        if '"event":"worker_start"' in x
    ]
    # the supervisor's, the first worker 1's (unless it was killed before its lifespan ran) and
    # the restarted one's: on its own chain, each naming the manifest in force
    assert len(starts) in (2, 3) and {s["worker"] for s in starts} == {1}, starts
    assert {s["manifest"] for s in starts} == {manifest_digest(json.loads(manifest_path(log).read_bytes()))}
    assert len(segments(worker_path(log, 0))) + len(segments(worker_path(log, 1))) >= 3  # rotated
    # one witness key per worker, never one shared by two chains; each present was compared
    # (a .tmp beside them is a head being written when the kill came: never renamed into place)
    heads = sorted(p.name for p in witness.parent.glob("*.head")) if witness.parent.exists() else []
    assert set(heads) <= {"guard.w0.head", "guard.w1.head", "guard.manifest.head"}, heads
    for name, r in rep.chains:
        if f"guard.w{name.split('.w')[1].split('.')[0]}.head" in heads:
            assert any(a.startswith("witness file:") for a in r.anchors), (name, r.anchors)
    pem, ck = key_paths(str(log), None, None)[0], chain_key_path(log, None)
    args = ["log", "verify", str(log), "--public-key", str(pem), "--chain-key", str(ck)]
    res = CliRunner().invoke(cli, [*args, "--witness", f"file:{witness}"])
    assert res.exit_code == 0, res.output
    assert f"{len(rep.chains)} chain(s) listed in the signed manifest" in res.stdout


def test_every_gauge_of_the_guard_says_how_workers_combine(tmp_path, torch_model):
    """A gauge left in the default multiprocess mode ('all') would be served once per worker pid."""
    from prometheus_client import Gauge

    from invguard.guard.app import Guard

    cfg = base_config(
        tmp_path,
        detection={"enabled": True},
        incidents={"store": str(tmp_path / "incidents.db")},
        slos=[{"name": "m2", "sli": "high_confidence_rate", "objective": 0.95}],
    )
    guard = Guard(from_dict(cfg), model=torch_model)
    gauges = [c for c in guard.registry._collector_to_names if isinstance(c, Gauge)]
    assert len(gauges) >= 6
    assert {g._name: g._multiprocess_mode for g in gauges if g._multiprocess_mode == "all"} == {}


def test_a_vanished_metrics_directory_never_turns_a_prediction_into_a_500(tmp_path, make_guard, monkeypatch):
    """Hole: with the workers' Prometheus directory removed, a metric value created afterwards
    (histogram_<pid>.db) raised FileNotFoundError and every prediction answered 500. A worker's
    values are made as run_worker makes them; the directory is removed under the running guard."""
    from prometheus_client import values

    from invguard.guard.metrics import install_resilient_values

    d = tmp_path / "audit.metrics"
    d.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(d))
    monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue())
    install_resilient_values()
    url, _ = make_guard()
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    rng = np.random.default_rng(0)

    def body() -> bytes:
        return json.dumps({"inputs": rng.random((1, 1, 8, 8)).round(6).tolist()}).encode()

    shutil.rmtree(d)  # before any labelled metric exists: the first answer creates its files
    assert post(port, body()) == 200
    assert d.is_dir()  # recreated
    shutil.rmtree(d)
    d.write_text("not a directory")  # cannot be recreated: the values stay in memory
    assert [post(port, body()) for _ in range(3)] == [200] * 3
    assert post(port, b"{", KEYS["partner"]) == 400  # a new label set: still no 500
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.status == 200
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    assert sum('"decision":"served"' in x for x in lines) == 4  # every answer audited


def test_rotated_files_compressed_in_place_still_verify_as_a_set(tmp_path):
    """Hole: gzip guard.w0.jsonl.1 made the set fail as 'swapped'. Archived files are read."""
    import gzip

    cfg = from_dict(base_config(tmp_path))
    log = Path(cfg.audit.path)
    prepare_chains(cfg, 2)
    keys = open_keys(cfg.audit.path, None, None)

    async def go() -> None:
        chain = AuditLog(
            worker_path(log, 0), signing_key=keys.signing_key, chain_key=keys.chain_key,
            checkpoint_every=4, rotate_bytes=1500,
        )  # fmt: skip
        await chain.start()
        for k in range(20):
            await chain.append({"decision": "served", "worker": 0, "input_hmac": f"g{k}", "pad": "x" * 40})
        await chain.close()

    asyncio.run(go())
    rotated = tmp_path / "audit.w0.jsonl.1"
    assert rotated.exists()
    before = _check(log)
    assert before.ok, before.problem
    gz = rotated.with_name(rotated.name + ".gz")
    gz.write_bytes(gzip.compress(rotated.read_bytes()))
    rotated.unlink()
    rep = _check(log)
    assert rep.ok, rep.problem
    assert rep.records == before.records
    assert str(gz) in dict(rep.chains)["audit.w0.jsonl"].files
    assert prepare_chains(cfg, 2)["revision"] == 2  # the supervisor reads it too
    gz.write_bytes(gz.read_bytes()[:-8])  # an archive cut short
    assert _check(log).problem.startswith(
        f"worker chain w0: FAILED after 0 good records: {gz}:0: the archived"
    )
