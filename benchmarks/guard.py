"""The guard's cost, measured side by side in one run.

(a) a bare Starlette endpoint serving the digits MLP (no controls), under uvicorn;
(b) the guard serving the same model in process with every control on: API key, GCRA rate limit
    and daily budget, top-3 + rounding policy, entropy and metrics, the hash-chained audit log
    with fsync group commit and signed checkpoints;
(c) the guard proxying to (a) over its pooled aiohttp client (KServe v2);
(d) for reference, a proxy with no controls at all (uvicorn + the same pooled aiohttp client to
    (a)): the ceiling of any proxy in Python here, against which (c) is read;
(e) the guard of (b) with its audit log's record chain unkeyed (plain SHA-256 instead of
    HMAC-SHA-256) and no witness: (b)/(e) is the cost of the keyed chain and of publishing every
    signed head to a witness (a file on another directory), goal >= 0.9;
(f) the guard of (b) with its limits in Redis (what several workers need), one worker, and
(g) the same with ``invguard serve --workers 2`` (a chain per worker, metrics in multiprocess
    mode): (g)/(f) is what a second worker buys here. Both need ``redis-server`` on PATH (started
    on a free loopback port, without persistence); without it they are left out and the run says so.

Each server runs in its own process; the load generator runs in another process on loopback:
``wrk`` (C, one thread, a small Lua script for the POST body and headers, each run bounded by
``--seconds``) when it is on PATH (``apt-get install -y wrk``), otherwise an
aiohttp client (bounded concurrency, bounded request count), which itself needs a large share of a
core and so caps every setup on a small machine. The generator used is printed. Goals: (b) >= 50%
of (a)'s throughput, p50 overhead of (b) over (a) <= 1 ms, and (c) >= 0.6x (d) in the same run:
every control together costs less than the proxying itself. Printed as measured, never asserted.
On a machine with few cores shared with other work the figures are noisy (the best of the rounds
is kept; the load generator takes a core of its own): read the ratios, not the absolute rates.

    python benchmarks/guard.py [--seconds 6] [--concurrency 32] [--rounds 2] [--generator auto]

The audit log fsyncs before every answer (group commit): at concurrency 1 each request pays one
fsync, so the latency overhead is bounded below by the disk's fsync time, which is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
KEY = "bench-key-0123456789"


# ------------------------------------------------------------------------------------- (a) bare app
def bare_app(model_path: str):
    import numpy as np
    import torch
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from invguard import models

    torch.set_num_threads(1)
    module = models.load(model_path)

    def forward(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out: np.ndarray = module(torch.from_numpy(x)).double().numpy()
        return out

    async def predict(request: Request) -> Response:
        doc = json.loads(await request.body())
        logits = forward(np.asarray(doc["inputs"], dtype=np.float32))
        body = {"labels": logits.argmax(axis=1).tolist(), "logits": logits.tolist()}
        return Response(json.dumps(body), media_type="application/json")

    async def infer(request: Request) -> Response:
        t = json.loads(await request.body())["inputs"][0]
        logits = forward(np.asarray(t["data"], dtype=np.float32).reshape(t["shape"]))
        out = {
            "name": "logits",
            "shape": list(logits.shape),
            "datatype": "FP64",
            "data": logits.reshape(-1).tolist(),
        }
        return Response(json.dumps({"model_name": "digits", "outputs": [out]}), media_type="application/json")

    return Starlette(
        routes=[
            Route("/v1/models/digits/predict", predict, methods=["POST"]),
            Route("/v2/models/digits/infer", infer, methods=["POST"]),
        ]
    )


def run_bare(model_path: str, port: int) -> None:
    import uvicorn

    uvicorn.run(bare_app(model_path), host="127.0.0.1", port=port, log_level="warning", access_log=False)


# ------------------------------------------------------------------------------------- (d) plain proxy
def plain_proxy_app(upstream: str):
    """The least a proxy does: read the v1 body, forward it as KServe v2 over a pooled aiohttp
    session (as the guard does), answer the label. No key, limit, policy, log or metrics: the
    ceiling any proxy in Python reaches on this machine, against which (c) is read."""
    import aiohttp

    session: list[aiohttp.ClientSession] = []

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    session.append(aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)))
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await session[0].close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["method"] != "POST":
            await send({"type": "http.response.start", "status": 405, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        x = json.loads(body)["inputs"]
        flat = [v for sample in x for channel in sample for row in channel for v in row]
        shape = [len(x), 1, 8, 8]
        req = {"inputs": [{"name": "input", "shape": shape, "datatype": "FP32", "data": flat}]}
        headers = {"Content-Type": "application/json"}
        async with session[0].post(upstream, data=json.dumps(req).encode(), headers=headers) as r:
            data = json.loads(await r.read())["outputs"][0]["data"]
        labels = [max(range(10), key=lambda c, i=i: data[i * 10 + c]) for i in range(len(x))]
        out = json.dumps({"labels": labels}).encode()
        start = {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
        await send(start)
        await send({"type": "http.response.body", "body": out})

    return app


def run_plain_proxy(upstream: str, port: int) -> None:
    import uvicorn

    uvicorn.run(plain_proxy_app(upstream), host="127.0.0.1", port=port, log_level="warning", access_log=False)


# ------------------------------------------------------------------------------------- (e) unkeyed guard
class _Sha256Chain:
    """The record chain without a key (what the log used before the chain was keyed): the baseline."""

    def __init__(self, key_id: str) -> None:
        self.key_id = key_id

    def digest(self, prev: str, body: bytes) -> str:
        import hashlib

        return hashlib.sha256(bytes.fromhex(prev) + body).hexdigest()


def run_guard_unkeyed(config: str, port: int) -> None:
    import uvicorn

    from invguard.guard import load
    from invguard.guard.app import Guard

    guard = Guard(load(config))
    guard.audit.chain_key = _Sha256Chain(guard.audit.chain_key.key_id)  # type: ignore[assignment]
    guard.audit.witnesses = []
    uvicorn.run(guard.app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def log_throughput(tmp: Path, keyed: bool, n: int = 20_000, concurrency: int = 32) -> float:
    """Records per second through the audit log alone (group commit, fsync on), in process: keyed
    chain and a file witness, or an unkeyed chain and no witness."""
    from invguard.guard.auditlog import AuditLog, ChainKey, FileWitness, load_signing_key

    d = Path(tempfile.mkdtemp(dir=tmp))
    chain = ChainKey(os.urandom(32))
    log = AuditLog(
        d / "log.jsonl",
        signing_key=load_signing_key(d / "k.pem"),
        chain_key=chain if keyed else _Sha256Chain(chain.key_id),  # type: ignore[arg-type]
        witnesses=[FileWitness(d / "witness" / "head")] if keyed else [],
        checkpoint_every=1000,
    )
    rec = {"client": "bench", "role": "partner", "decision": "served", "labels": [3], "entropy": [0.5]}

    async def main() -> float:
        await log.start()
        t0 = time.perf_counter()
        for _ in range(n // concurrency):
            await asyncio.gather(*(log.append(dict(rec)) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
        await log.close()
        return n // concurrency * concurrency / wall

    return asyncio.run(main())


# ------------------------------------------------------------------------------------- load generator
async def _load(url: str, n: int, concurrency: int, seconds: float) -> dict[str, float]:
    import aiohttp
    import numpy as np

    rng = np.random.default_rng(0)
    bodies = [json.dumps({"inputs": rng.random((1, 1, 8, 8)).round(4).tolist()}).encode() for _ in range(64)]
    headers = {"Content-Type": "application/json", "X-API-Key": KEY}
    lat: list[float] = []
    errors = 0
    counter = iter(range(n))
    deadline = math.inf  # set after the warm-up (a slow warm-up must not eat the measured run)
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn) as s:

        async def worker() -> None:
            nonlocal errors
            for i in counter:
                if time.perf_counter() > deadline:
                    return
                t0 = time.perf_counter()
                async with s.post(url, data=bodies[i % 64], headers=headers) as r:
                    await r.read()
                    if r.status != 200:
                        errors += 1
                lat.append(time.perf_counter() - t0)

        # warm-up, then the measured run
        for i in range(100):
            async with s.post(url, data=bodies[i % 64], headers=headers) as r:
                await r.read()
        t0 = time.perf_counter()
        deadline = t0 + seconds
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    arr = np.asarray(lat)
    return {
        "requests": float(len(lat)),
        "errors": float(errors),
        "rps": len(lat) / wall,
        "p50_ms": float(np.percentile(arr, 50) * 1000),
        "p99_ms": float(np.percentile(arr, 99) * 1000),
    }


def run_load(url: str, n: int, concurrency: int, seconds: float) -> None:
    print(json.dumps(asyncio.run(_load(url, n, concurrency, seconds))))


# wrk: 64 request bodies like the aiohttp generator's, rotated per request; ``done`` prints JSON
# (errors: connect/read/write/timeout and every non-2xx/3xx answer). No ``response`` hook: it would
# make wrk hand every response to Lua. A wrk run is bounded by its duration.
_WRK_LUA = """
local bodies = {%(bodies)s}
local i = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-API-Key"] = "%(key)s"
request = function()
  i = i %% #bodies + 1
  return wrk.format(nil, nil, nil, bodies[i])
end
done = function(summary, latency, requests)
  local e = summary.errors
  local errs = e.connect + e.read + e.write + e.timeout + e.status
  io.write(string.format(
    '{"requests": %%d, "errors": %%d, "rps": %%.3f, "p50_ms": %%.4f, "p99_ms": %%.4f}\\n',
    summary.requests, errs, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""


def _wrk_script(tmp: Path) -> Path:
    import numpy as np

    rng = np.random.default_rng(0)
    bodies = [json.dumps({"inputs": rng.random((1, 1, 8, 8)).round(4).tolist()}) for _ in range(64)]
    lua = _WRK_LUA % {"bodies": ", ".join(f"[==[{b}]==]" for b in bodies), "key": KEY}
    p = tmp / "load.lua"
    p.write_text(lua)
    return p


def _run_wrk(url: str, concurrency: int, seconds: float, tmp: Path) -> dict[str, float]:
    """One wrk thread (the servers keep the cores); a 1 s warm-up, then the measured run."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk is not on PATH (apt-get install -y wrk)")
    script = tmp / "load.lua"
    if not script.exists():
        _wrk_script(tmp)
    base = [wrk, "-t1", f"-c{concurrency}", "--timeout", "10s", "-s", str(script)]
    subprocess.run([*base, "-d1s", url], capture_output=True, check=True)
    dur = f"-d{max(1, math.ceil(seconds))}s"
    out = subprocess.run([*base, dur, url], capture_output=True, text=True, check=True)
    found = re.findall(r'\{"requests".*\}', out.stdout)
    if not found:
        raise RuntimeError(f"wrk gave no result for {url}: {out.stdout[-500:]} {out.stderr[-500:]}")
    line = found[-1]
    result: dict[str, float] = json.loads(line)
    return result


# ------------------------------------------------------------------------------------- orchestration
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(port: int, proc: subprocess.Popen[bytes], path: str = "/openapi.json") -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {proc.returncode}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1)
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server on port {port} did not start")


def _guard_config(
    tmp: Path,
    name: str,
    model: dict,
    upstream_port: int | None = None,
    witness: bool = True,
    redis_url: str | None = None,
) -> Path:
    import yaml

    from invguard.guard.auth import hash_key

    if upstream_port is not None:
        model = {
            "name": "digits",
            "kind": "proxy",
            "input_shape": [1, 8, 8],
            "num_classes": 10,
            "input_range": [0, 1],
            "upstream": {
                "url": f"http://127.0.0.1:{upstream_port}/v2/models/digits/infer",
                "preset": "kserve-v2",
                "returns": "logits",
                "pool_size": 64,
            },
        }
    cfg = {
        "model": model,
        "roles": {
            "partner": {
                "policy": "top_k=3 round=2",
                "rate": {"burst": 1_000_000, "per_second": 1_000_000},
                "budget": {"day": 100_000_000},
            }
        },
        "auth": {"keys": [{"id": "bench", "sha256": hash_key(KEY), "role": "partner"}]},
        "audit": {
            "path": str(tmp / f"{name}.jsonl"),
            "checkpoint_every": 1000,
            "fsync": True,
            "signing_key": str(tmp / "keys" / f"{name}.pem"),
            "hash_key": str(tmp / "keys" / f"{name}.hmac"),
            "chain_key": str(tmp / "keys" / f"{name}.chain"),
            "witnesses": [f"file:{tmp / 'witness' / f'{name}.head'}"] if witness else [],
        },
    }
    if redis_url is not None:
        cfg["ratelimit"] = {"backend": "redis", "redis_url": redis_url, "prefix": f"bench-{name}"}
    p = tmp / f"{name}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=20000, help="Cap on each aiohttp run's requests.")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=6.0, help="Cap on each measured run's duration.")
    ap.add_argument("--latency-requests", type=int, default=1000, help="aiohttp requests at concurrency 1.")
    ap.add_argument("--latency-seconds", type=float, default=3.0, help="Cap on each concurrency-1 run.")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument(
        "--generator",
        choices=("auto", "wrk", "aiohttp"),
        default="auto",
        help="Load generator: wrk if it is on PATH (auto), or the aiohttp client.",
    )
    ap.add_argument("--bare", nargs=2, metavar=("MODEL", "PORT"), help=argparse.SUPPRESS)
    ap.add_argument("--load", nargs=1, metavar="URL", help=argparse.SUPPRESS)
    ap.add_argument("--plain-proxy", nargs=2, metavar=("UPSTREAM", "PORT"), help=argparse.SUPPRESS)
    ap.add_argument("--guard-unkeyed", nargs=2, metavar=("CONFIG", "PORT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.bare:
        run_bare(args.bare[0], int(args.bare[1]))
        return
    if args.plain_proxy:
        run_plain_proxy(args.plain_proxy[0], int(args.plain_proxy[1]))
        return
    if args.guard_unkeyed:
        run_guard_unkeyed(args.guard_unkeyed[0], int(args.guard_unkeyed[1]))
        return
    if args.load:
        run_load(args.load[0], args.requests, args.concurrency, args.seconds)
        return

    from invguard import data, models
    from invguard.guard.auditlog import FileWitness, load_chain_key, load_public_key_hex, verify
    from invguard.models.train import fit

    use_wrk = args.generator == "wrk" or (args.generator == "auto" and shutil.which("wrk") is not None)
    if args.generator == "wrk" and shutil.which("wrk") is None:
        raise SystemExit("--generator wrk: wrk is not on PATH (apt-get install -y wrk)")
    generator = "wrk (1 thread, Lua POST script)" if use_wrk else "aiohttp (Python, own process)"
    tmp = Path(tempfile.mkdtemp(prefix="invguard-bench-"))
    fsync_ms = _fsync_ms(tmp)
    splits = data.load("digits", seed=0)
    spec = {"arch": "mlp", "hidden": [128], "input_shape": list(splits.input_shape), "num_classes": 10}
    module, _ = fit(spec, splits.members.X, splits.members.y, recipe="quick", seed=0)
    model_path = str(models.save(module, tmp / "digits-mlp.pt"))

    procs: list[subprocess.Popen[bytes]] = []
    try:
        pa = _free_port()
        procs.append(subprocess.Popen([sys.executable, __file__, "--bare", model_path, str(pa)], env=ENV))
        _wait(pa, procs[-1], "/v2/models/digits/infer")
        pb, pc = _free_port(), _free_port()
        local = {"name": "digits", "kind": "torch", "path": model_path, "input_range": [0, 1]}
        cb = _guard_config(tmp, "b", local)
        cc = _guard_config(tmp, "c", local, upstream_port=pa)
        for cfg, port in ((cb, pb), (cc, pc)):
            cmd = [sys.executable, "-m", "invguard.cli", "serve", str(cfg), "--port", str(port)]
            procs.append(subprocess.Popen(cmd, env=ENV))
        _wait(pb, procs[1])
        _wait(pc, procs[2])
        pd = _free_port()
        upstream = f"http://127.0.0.1:{pa}/v2/models/digits/infer"
        procs.append(
            subprocess.Popen([sys.executable, __file__, "--plain-proxy", upstream, str(pd)], env=ENV)
        )
        _wait(pd, procs[-1], "/v1/models/digits/predict")
        pe = _free_port()
        ce = _guard_config(tmp, "e", local, witness=False)
        procs.append(
            subprocess.Popen([sys.executable, __file__, "--guard-unkeyed", str(ce), str(pe)], env=ENV)
        )
        _wait(pe, procs[-1])
        redis_url = _start_redis(procs)
        pf, pg = _free_port(), _free_port()
        if redis_url is not None:
            cf = _guard_config(tmp, "f", local, redis_url=redis_url)
            cg = _guard_config(tmp, "g", local, redis_url=redis_url)
            for cfg, port, n in ((cf, pf, 1), (cg, pg, 2)):
                cmd = [sys.executable, "-m", "invguard.cli", "serve", str(cfg), "--port", str(port)]
                procs.append(subprocess.Popen([*cmd, "--workers", str(n)], env=ENV))
                _wait(port, procs[-1])
        targets = {
            "(a) bare Starlette": f"http://127.0.0.1:{pa}/v1/models/digits/predict",
            "(b) guard, in-process, all controls": f"http://127.0.0.1:{pb}/v1/models/digits/predict",
            "(c) guard, proxy to (a)": f"http://127.0.0.1:{pc}/v1/models/digits/predict",
            "(d) plain aiohttp proxy to (a)": f"http://127.0.0.1:{pd}/v1/models/digits/predict",
            "(e) guard (b), unkeyed chain, no witness": f"http://127.0.0.1:{pe}/v1/models/digits/predict",
        }
        if redis_url is not None:
            targets["(f) guard (b), limits in Redis, 1 worker"] = (
                f"http://127.0.0.1:{pf}/v1/models/digits/predict"
            )
            targets["(g) guard (f), --workers 2"] = f"http://127.0.0.1:{pg}/v1/models/digits/predict"
        # two interleaved rounds; each setup keeps its best round (other load on the machine only
        # ever slows a run down). Throughput at --concurrency, latency at concurrency 1.
        results: dict[str, dict[str, float]] = {}
        latency: dict[str, dict[str, float]] = {}
        for _ in range(args.rounds):
            for label, url in targets.items():
                r = _run_load(url, args.requests, args.concurrency, args.seconds, use_wrk, tmp)
                if label not in results or r["rps"] > results[label]["rps"]:
                    results[label] = r
                r1 = _run_load(url, args.latency_requests, 1, args.latency_seconds, use_wrk, tmp)
                if label not in latency or r1["p50_ms"] < latency[label]["p50_ms"]:
                    latency[label] = r1
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=20)

    print(
        f"guard benchmark: digits MLP, batch of 1, loopback, load generator in its own process; "
        f"best of {args.rounds} interleaved rounds; fsync on this disk: p50 {fsync_ms:.2f} ms"
    )
    cap = f"{args.seconds:g} s (concurrency 1: {args.latency_seconds:g} s)"
    if not use_wrk:
        cap += f" and {args.requests} requests (concurrency 1: {args.latency_requests})"
    print(f"load generator: {generator}; each run capped at {cap}")
    print(
        f"{'setup':38s} {'req/s':>7s} {'p50 ms':>7s} {'p99 ms':>7s}   "
        f"{'c=1 p50':>7s} {'c=1 p99':>7s} {'errors':>6s}"
    )
    print(f"{'':38s} {'(concurrency ' + str(args.concurrency) + ')':>15s}")
    for label, r in results.items():
        lat = latency[label]
        print(
            f"{label:38s} {r['rps']:7.0f} {r['p50_ms']:7.2f} {r['p99_ms']:7.2f}   "
            f"{lat['p50_ms']:7.2f} {lat['p99_ms']:7.2f} {int(r['errors'] + lat['errors']):6d}"
        )
    a, b, c, d, e = (results[k] for k in list(targets)[:5])
    la, lb, le = (latency[k] for k in (list(targets)[i] for i in (0, 1, 4)))
    print(f"(b)/(a) throughput: {b['rps'] / a['rps']:.2f}  (goal >= 0.50)")
    print(f"(b)-(a) p50 overhead at concurrency 1: {lb['p50_ms'] - la['p50_ms']:.2f} ms  (goal <= 1 ms)")
    print(
        f"(c)/(d) throughput, the guard proxying vs a proxy with no controls, same run: "
        f"{c['rps'] / d['rps']:.2f}  (goal >= 0.60); (c) {c['rps']:.0f} req/s, (d) {d['rps']:.0f} req/s"
    )
    # what each request costs the proxy process, from the two throughputs (both CPU-bound)
    print(
        f"the guard's controls cost {(1 / c['rps'] - 1 / d['rps']) * 1e6:.0f} us per proxied request, "
        f"the proxying itself {1e6 / d['rps']:.0f} us; (c) >= 0.6x (d) leaves the controls "
        f"{1e6 / d['rps'] * (1 / 0.6 - 1):.0f} us"
    )
    if redis_url is None:
        print("(f), (g): redis-server is not on PATH: the --workers 2 comparison was not run")
    else:
        f, g = results["(f) guard (b), limits in Redis, 1 worker"], results["(g) guard (f), --workers 2"]
        print(
            f"(g)/(f) throughput, --workers 2 vs 1 (limits in Redis both): {g['rps'] / f['rps']:.2f} "
            f"({g['rps']:.0f} vs {f['rps']:.0f} req/s; {os.cpu_count()} CPU core(s) here, shared with the "
            "load generator and the other servers); (f)/(b), limits in Redis vs in memory: "
            f"{f['rps'] / b['rps']:.2f}"
        )
    print(
        f"(b)/(e) throughput, keyed chain and witness vs neither: {b['rps'] / e['rps']:.2f}  (goal >= 0.90); "
        f"concurrency 1 p50: {lb['p50_ms']:.2f} vs {le['p50_ms']:.2f} ms"
    )
    keyed, plain = [], []
    for _ in range(args.rounds):  # the log alone, in process: the same comparison without HTTP noise
        keyed.append(log_throughput(tmp, True))
        plain.append(log_throughput(tmp, False))
    print(
        f"audit log alone (32 concurrent appends, fsync): keyed chain + witness {max(keyed):.0f} rec/s, "
        f"unkeyed, no witness {max(plain):.0f} rec/s, ratio {max(keyed) / max(plain):.2f}  (goal >= 0.90)"
    )
    for name in ("b", "c"):
        rep: Any = verify(
            tmp / f"{name}.jsonl",
            public_key=load_public_key_hex(tmp / "keys" / f"{name}.pem"),
            chain_key=load_chain_key(tmp / "keys" / f"{name}.chain", create=False),
            witnesses=[FileWitness(tmp / "witness" / f"{name}.head")],
        )
        print(f"audit log ({name}): {rep.summary()}")
    if redis_url is not None:
        from invguard.guard.auditlog.workers import verify_workers

        rep = verify_workers(
            tmp / "g.jsonl",
            public_key=load_public_key_hex(tmp / "keys" / "g.pem"),
            chain_key=load_chain_key(tmp / "keys" / "g.chain", create=False),
            witnesses=[f"file:{tmp / 'witness' / 'g.head'}"],
        )
        print(f"audit log (g), {rep.summary()}")


def _start_redis(procs: list[subprocess.Popen[bytes]]) -> str | None:
    """A redis-server on a free loopback port (no persistence), or None if there is none."""
    exe = shutil.which("redis-server")
    if exe is None:
        return None
    port = _free_port()
    cmd = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL))
    import socket

    deadline = time.monotonic() + 20
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return f"redis://127.0.0.1:{port}/0"
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start") from None
            time.sleep(0.05)


def _run_load(
    url: str, n: int, concurrency: int, seconds: float, use_wrk: bool, tmp: Path
) -> dict[str, float]:
    if use_wrk:
        return _run_wrk(url, concurrency, seconds, tmp)
    cmd = [sys.executable, __file__, "--load", url, "--requests", str(n), "--concurrency", str(concurrency)]
    cmd += ["--seconds", str(seconds)]
    out = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"the load on {url} failed: {out.stderr[-1500:]}")
    result: dict[str, float] = json.loads(out.stdout)
    return result


def _fsync_ms(directory: Path, n: int = 50) -> float:
    import statistics

    times = []
    with open(directory / "fsync-probe", "ab") as f:
        for _ in range(n):
            f.write(b"x" * 300)
            f.flush()
            t0 = time.perf_counter()
            os.fsync(f.fileno())
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


if __name__ == "__main__":
    main()
