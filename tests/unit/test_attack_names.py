"""The static table of built-in attack names is the registry's list, and checking a name imports nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_name_table_matches_the_registry_and_each_module():
    from invguard.attacks import ATTACKS
    from invguard.attacks.names import BUILTIN

    modules = {n: ATTACKS.get(n).__module__ for n in ATTACKS.names()}
    registered = {n: m for n, m in modules.items() if m.startswith("invguard.")}  # not the tests' toys
    assert registered == BUILTIN


def test_checking_a_config_with_a_bad_name_imports_no_attack_and_no_torch(tmp_path):
    cfg = tmp_path / "a.yaml"
    cfg.write_text("target: {model: reference/digits-mlp}\nattacks: [membership.lria]\n")
    code = (
        "import sys\n"
        "from invguard.audit.config import load_config\n"
        "from invguard.core.errors import ConfigError\n"
        f"try:\n    load_config({str(cfg)!r})\nexcept ConfigError as e:\n    print(e)\n"
        "print('torch' in sys.modules, any(m.startswith('invguard.attacks.') and m.count('.') > 2 "
        "for m in sys.modules))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    lines = r.stdout.strip().splitlines()
    assert "attacks[0].name (line 2): unknown attack 'membership.lria'; did you mean" in r.stdout
    assert "'membership.lira'" in r.stdout
    assert lines[-1] == "False False", r.stdout + r.stderr
