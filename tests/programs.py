"""System programs the tests run (real servers, a real browser): a clear failure when one is missing."""

from __future__ import annotations

import shutil

import pytest


def require(program: str, package: str) -> str:
    """The path of ``program``, or a test failure that names the command installing it (no traceback)."""
    path = shutil.which(program)
    if path is None:
        pytest.fail(
            f"{program} is not installed: `make test` installs it, or run sudo apt-get install -y {package}",
            pytrace=False,
        )
    return path
