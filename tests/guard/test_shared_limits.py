"""Limits shared across replicas through a real redis-server: the keyless (per-address) limit too,
and the start-up check that the server persists what the budgets are made of."""

from __future__ import annotations

import subprocess
import time

import pytest

from invguard.core.errors import ConfigError
from tests.guard.conftest import base_config
from tests.guard.test_app import call
from tests.programs import require
from tests.servers import free_port


def _redis_cfg(tmp_path, url, **over):
    return base_config(
        tmp_path,
        ratelimit={"backend": "redis", "redis_url": url, "prefix": f"test-{tmp_path.name}", **over},
        server={"anonymous_rate": {"burst": 5, "per_second": 0.01}},
    )


def test_two_guards_share_the_keyless_limit_of_an_address(make_guard, tmp_path, redis_url, digits):
    urls = []
    for i in range(2):
        (tmp_path / f"g{i}").mkdir()
        url, _ = make_guard(_redis_cfg(tmp_path / f"g{i}", redis_url, prefix="test-keyless"))
        urls.append(url)
    body = {"inputs": digits.evaluation.X[:1].tolist()}
    got = [call(urls[i % 2], "/v1/models/digits/predict", body, "not-a-key")[0] for i in range(10)]
    assert got == [401] * 5 + [429] * 5  # one burst of 5 for the address, not 5 per guard


def test_a_redis_without_persistence_is_warned_about_or_refused(tmp_path, redis_url, torch_model):
    from invguard.guard import from_dict
    from invguard.guard.app import Guard

    problem = (
        f"the Redis server at {redis_url} keeps neither snapshots nor an append-only file (save '', "
        "appendonly no): a restart of it resets every budget and rate limit"
    )
    guard = Guard(from_dict(_redis_cfg(tmp_path, redis_url)), model=torch_model)
    assert f"{problem}; set ratelimit.require_persistence: true to refuse to start" in guard.warnings
    with pytest.raises(ConfigError) as e:
        Guard(from_dict(_redis_cfg(tmp_path, redis_url, require_persistence=True)), model=torch_model)
    assert str(e.value) == f"ratelimit.require_persistence: {problem}"


def test_a_redis_with_an_append_only_file_passes_the_check(tmp_path, torch_model):
    import redis

    from invguard.guard import from_dict
    from invguard.guard.app import Guard

    exe = require("redis-server", "redis-server")
    port = free_port()
    proc = subprocess.Popen(
        [
            exe,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(host="127.0.0.1", port=port)
        for _ in range(200):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        client.close()
        cfg = _redis_cfg(tmp_path, f"redis://127.0.0.1:{port}/0", require_persistence=True)
        guard = Guard(from_dict(cfg), model=torch_model)
        assert not any("Redis" in w for w in guard.warnings)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
