"""`invguard serve` on a busy port and `invguard keys add` with a role the guard does not have."""

from __future__ import annotations

import socket

from typer.testing import CliRunner

from invguard.cli import app as cli
from tests.guard.conftest import ROOT, base_config

runner = CliRunner()


def test_serve_on_a_busy_port_exits_2_before_starting(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = runner.invoke(cli, ["serve", str(ROOT / "examples" / "guard.yaml"), "--port", str(port)])
    assert r.exit_code == 2, r.output
    text = " ".join(r.output.split())
    assert f"port {port} is in use on 127.0.0.1: stop the server holding it, or pass --port" in text
    assert "guard serving" not in text and "Traceback" not in text


def test_keys_add_refuses_a_role_the_guard_using_the_store_does_not_have(tmp_path, torch_model):
    from invguard.guard import from_dict
    from invguard.guard.app import Guard

    store = tmp_path / "keys.db"
    args = ["keys", "add", "--store", str(store), "--role"]
    # before any guard used the store, its roles are unknown: any well-formed role is accepted
    assert runner.invoke(cli, [*args, "admin", "--id", "early"]).exit_code == 0
    cfg = base_config(tmp_path, auth={"key_store": str(store)})
    Guard(from_dict(cfg), model=torch_model)  # the guard records its roles in the store
    r = runner.invoke(cli, [*args, "admin"])
    assert r.exit_code == 2
    assert (
        f"keys add: role 'admin' is not a role of the guard that uses {store} (its roles, recorded when "
        "it last started, are ['default', 'internal', 'partner']); check with --config guard.yaml"
    ) in " ".join(r.output.split())
    r = runner.invoke(cli, [*args, "partner", "--id", "acme"])
    assert r.exit_code == 0, r.output
