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


def _readme_detection_block() -> str:
    import re

    text = (ROOT / "README.md").read_text()
    m = re.search(r"```yaml\n(detection:\n.*?)```", text, re.S)
    assert m is not None, "README has no detection: snippet"
    return m.group(1)


def test_readme_detection_snippet_pastes_into_examples_guard_yaml(tmp_path):
    from invguard.guard.config import load

    f = tmp_path / "guard.yaml"
    f.write_text((ROOT / "examples" / "guard.yaml").read_text() + "\n" + _readme_detection_block())
    cfg = load(f)
    assert sorted(cfg.detection.roles) == ["default", "partner"]
    assert cfg.detection.admin_roles == ("internal",)


def test_unknown_roles_are_reported_all_at_once_each_at_its_own_line(tmp_path):
    import pytest

    from invguard.core.errors import ConfigError
    from invguard.guard.config import load

    base = (ROOT / "examples" / "guard.yaml").read_text()
    n = base.count("\n")
    f = tmp_path / "guard.yaml"
    f.write_text(
        base + "detection:\n  roles:\n    partner: {action: block}\n    public: {action: block}\n"
        "  admin_roles:\n    - admin\n"
    )
    with pytest.raises(ConfigError) as e:
        load(f)
    known = "['default', 'internal', 'partner']"
    assert str(e.value) == (
        f"{f}: 2 problems in the guard config\n"
        f"  - detection.roles.public (line {n + 4}): 'public' is not one of the roles {known}\n"
        f"  - detection.admin_roles (line {n + 5}): 'admin' is not one of the roles {known}"
    )


def test_serve_prints_each_detection_threshold_and_a_missing_calibration(
    tmp_path, monkeypatch, sklearn_model_file
):
    import uvicorn
    import yaml

    ran = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: ran.append(kw))
    doc = base_config(tmp_path, model={"kind": "sklearn", "path": str(sklearn_model_file)})
    doc["detection"] = {"enabled": True, "backend": "memory", "calibration": "detect-calibration.json"}
    f = tmp_path / "guard.yaml"
    f.write_text(yaml.safe_dump(doc))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = runner.invoke(cli, ["serve", str(f), "--port", str(port)])
    assert r.exit_code == 0, r.output
    assert len(ran) == 1
    lines = r.output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("guard serving"))
    after = lines[start + 1 :]
    cal = tmp_path / "detect-calibration.json"
    assert after[0] == (
        f"detection.calibration: {cal} not found: thresholds are defaults until "
        "`invguard guard calibrate` writes it"
    )
    assert after[1].startswith("detection encoder: ")
    thresholds = [line for line in after if line.startswith("detection threshold ")]
    assert any(line.startswith("detection threshold knn.threshold = ") for line in thresholds)
    others = [line for line in thresholds if "fingerprint.match" not in line]
    assert others and all(line.endswith(" (default)") for line in others), thresholds
