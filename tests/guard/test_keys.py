"""The key store on a running guard: revocation in every SQLite journal mode, no leaked
connections, no request served from the old key list once a reload has begun, and budgets shared
by the keys of one owner. The authenticator's clock is injected: no test waits for the refresh."""

from __future__ import annotations

import concurrent.futures
import json
import os
import sqlite3
import time

import pytest
from typer.testing import CliRunner

from invguard.cli import app as cli
from invguard.guard.auth import KeyStore
from tests.guard.conftest import base_config
from tests.guard.test_app import call


class Clock:
    def __init__(self) -> None:
        self.t = 1e9

    def __call__(self) -> float:
        return self.t

    def tick(self) -> None:
        self.t += 1.0  # the guard checks the store at most once a second


def _body(digits):
    return {"inputs": digits.evaluation.X[:1].tolist()}


def _guard_on(make_guard, tmp_path, store, **roles):
    cfg = base_config(tmp_path, auth={"key_store": str(store.path)})
    cfg["server"]["anonymous_rate"] = {"burst": 1000, "per_second": 1000}  # 401s are not rate limited here
    for name, over in roles.items():
        cfg["roles"][name] = {**cfg["roles"][name], **over}
    url, guard = make_guard(cfg)
    clock = Clock()
    guard.auth.clock = clock
    return url, guard, clock


@pytest.mark.parametrize("mode", ["delete", "wal"])
def test_a_revoked_key_stops_working_in_every_journal_mode(make_guard, tmp_path, digits, mode):
    store = KeyStore(tmp_path / "keys.db")
    key, _ = store.add("partner", "acme")
    with sqlite3.connect(store.path) as con:
        assert con.execute(f"PRAGMA journal_mode={mode}").fetchone()[0] == mode
    con.close()
    url, _, clock = _guard_on(make_guard, tmp_path, store)
    assert call(url, "/v1/models/digits/predict", _body(digits), key)[0] == 200
    reader = sqlite3.connect(store.path)  # another process reading: in WAL mode nothing checkpoints
    reader.execute("SELECT count(*) FROM keys").fetchone()
    mtime = os.stat(store.path).st_mtime_ns
    res = CliRunner().invoke(cli, ["keys", "revoke", "acme", "--store", str(store.path)])
    assert res.exit_code == 0, res.output
    if mode == "wal":
        assert os.stat(store.path).st_mtime_ns == mtime  # what the guard used to watch did not move
    clock.tick()
    s, _, raw = call(url, "/v1/models/digits/predict", _body(digits), key)
    assert s == 401 and json.loads(raw)["error"] == "invalid or revoked API key"
    reader.close()


def _open_handles(path) -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{fd}").startswith(str(path))
        except OSError:
            continue
    return n


def test_reloads_close_their_connections(make_guard, tmp_path, digits):
    store = KeyStore(tmp_path / "keys.db")
    store.add("partner", "k0")
    url, _, clock = _guard_on(make_guard, tmp_path, store)
    before = _open_handles(store.path)
    for i in range(1, 6):
        key, _ = store.add("partner", f"k{i}")
        clock.tick()
        assert call(url, "/v1/models/digits/predict", _body(digits), key)[0] == 200
    assert _open_handles(store.path) == before == 0


def test_no_request_uses_the_old_key_list_once_a_reload_has_begun(make_guard, tmp_path, digits):
    store = KeyStore(tmp_path / "keys.db")
    old, _ = store.add("partner", "old")
    url, guard, clock = _guard_on(make_guard, tmp_path, store)
    real_read = guard.auth.store.read

    def slow_read():  # in the worker thread: the window in which requests used to slip through
        time.sleep(0.05)
        return real_read()

    guard.auth.store.read = slow_read
    body = _body(digits)

    def burst(key):
        with concurrent.futures.ThreadPoolExecutor(36) as pool:
            return [
                f.result()[0]
                for f in [pool.submit(call, url, "/v1/models/digits/predict", body, key) for _ in range(36)]
            ]

    new, _ = store.add("partner", "new")
    clock.tick()
    assert burst(new) == [200] * 36  # a just-added key: never 401 during the reload
    store.revoke("old")
    clock.tick()
    assert burst(old) == [401] * 36  # a just-revoked key: never served during the reload


def test_keys_of_one_owner_share_one_budget(make_guard, tmp_path, digits):
    store = tmp_path / "keys.db"
    runner = CliRunner()
    keys = []
    for kid, owner in (("a1", "acme"), ("a2", "acme"), ("b1", None)):
        args = ["keys", "add", "--role", "partner", "--id", kid, "--store", str(store)]
        res = runner.invoke(cli, args + (["--owner", owner] if owner else []))
        assert res.exit_code == 0, res.output
        keys.append(res.stdout.strip().splitlines()[-1])
    listed = runner.invoke(cli, ["keys", "list", "--store", str(store)]).stdout
    assert "owner:acme" in listed and "owner:-" in listed
    res = runner.invoke(cli, ["keys", "add", "--role", "partner", "--owner", "a:b", "--store", str(store)])
    assert res.exit_code == 2
    assert (
        "keys add: --owner must be 1-64 letters, digits, '_', '-', '.' or '@' (no ':'), got 'a:b'"
        in " ".join(res.output.split())
    )
    url, _, _ = _guard_on(
        make_guard, tmp_path, KeyStore(store), partner={"budget": {"day": 2, "scope": "owner"}}
    )
    body = _body(digits)
    got = [
        call(url, "/v1/models/digits/predict", body, k) for k in (keys[0], keys[1], keys[0], keys[1], keys[2])
    ]
    assert [g[0] for g in got] == [200, 200, 429, 429, 200]
    assert json.loads(got[2][2])["code"] == "budget_exhausted"
