"""`make test` installs the system programs the suite needs, or stops before the suite with the command.

The Makefile's check runs with a PATH that holds only fakes (``id``, ``sudo``, ``apt-get``), so the
root, sudo and unprivileged paths are exercised without installing anything.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAKE = shutil.which("make") or "/usr/bin/make"
PACKAGES = "redis-server chromium chromium-driver prometheus"


def _packages_from_makefile() -> str:
    line = next(x for x in (ROOT / "Makefile").read_text().splitlines() if x.startswith("SYSTEM_PACKAGES"))
    return " ".join(p.split("=")[0] for p in line.split(":=", 1)[1].split())


def _fake_bin(tmp: Path, *, uid: int, sudo: bool, programs: tuple[str, ...] = ()) -> Path:
    b = tmp / "bin"
    b.mkdir()
    log = tmp / "calls.log"

    def script(name: str, body: str) -> None:
        p = b / name
        p.write_text("#!/bin/sh\n" + body + "\n")
        p.chmod(0o755)

    script("id", f"echo {uid}")
    script("apt-get", f'echo "apt-get $*" >> {log}')
    if sudo:
        script("sudo", f'[ "$1" = -n ] && shift; [ "$1" = true ] && exit 0; echo "sudo" >> {log}; "$@"')
    for p in programs:
        script(p, "exit 0")
    return b


def _make(target: str, path: Path, tmp: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MAKE, "-s", "-C", str(ROOT), target, f"VENV={tmp / 'venv'}"],
        env={"PATH": str(path), "HOME": str(tmp)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_makefile_lists_every_package_the_suite_needs_once():
    assert _packages_from_makefile() == PACKAGES


def test_not_root_stops_before_the_suite_with_one_line_naming_the_command(tmp_path):
    path = _fake_bin(tmp_path, uid=1000, sudo=False)
    r = _make("test", path, tmp_path)
    assert r.returncode != 0
    ours = [ln for ln in r.stderr.splitlines() if not ln.startswith(("make: ", "make["))]
    assert ours == [
        f"make test needs system packages that are not installed ({PACKAGES}): run  "
        f"sudo apt-get update && sudo apt-get install -y {PACKAGES}  then make test again"
    ]
    assert not (tmp_path / "venv").exists()  # stopped before creating the venv, let alone the suite
    assert not (tmp_path / "calls.log").exists()


def test_as_root_it_installs_exactly_the_missing_packages(tmp_path):
    path = _fake_bin(tmp_path, uid=0, sudo=False, programs=("redis-server", "promtool"))
    r = _make("system-packages", path, tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "calls.log").read_text().splitlines() == [
        "apt-get update -qq",
        "apt-get install -y -qq chromium chromium-driver",
    ]


def test_with_passwordless_sudo_it_installs_through_sudo(tmp_path):
    path = _fake_bin(tmp_path, uid=1000, sudo=True, programs=("chromium", "chromedriver", "promtool"))
    r = _make("system-packages", path, tmp_path)
    assert r.returncode == 0, r.stderr
    calls = (tmp_path / "calls.log").read_text().splitlines()
    assert calls == ["sudo", "apt-get update -qq", "sudo", "apt-get install -y -qq redis-server"]


def test_nothing_is_installed_when_every_program_is_there(tmp_path):
    path = _fake_bin(
        tmp_path, uid=1000, sudo=False, programs=("redis-server", "chromium", "chromedriver", "promtool")
    )
    r = _make("system-packages", path, tmp_path)
    assert (r.returncode, r.stderr, r.stdout) == (0, "", "")
    assert not (tmp_path / "calls.log").exists()


def test_ci_runs_just_the_readme_test_command():
    run = (ROOT / ".ci" / "run").read_text()
    commands = [ln for ln in run.splitlines() if ln.strip() and not ln.startswith(("#", "set ", "cd "))]
    assert commands == ["make test"]
    assert re.search(r"^make test\s+# .*installs", (ROOT / "README.md").read_text(), re.M)
