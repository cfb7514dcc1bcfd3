"""invguard: find and stop model-inversion leaks.

Sub-packages are imported lazily, so ``import invguard`` stays cheap (no torch at import time).
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from invguard.core import (
    Access,
    AccessError,
    BudgetExhausted,
    ConfigError,
    InvguardError,
    Prediction,
    Target,
    TargetError,
)

__version__ = "0.1.0"

_SUBMODULES = tuple(
    name
    for name in ("attacks", "audit", "data", "guard", "metrics", "models", "policies", "report", "targets")
    if importlib.util.find_spec(f"invguard.{name}") is not None
)

__all__ = [
    "Access",
    "AccessError",
    "BudgetExhausted",
    "ConfigError",
    "InvguardError",
    "Prediction",
    "Target",
    "TargetError",
    "__version__",
    *_SUBMODULES,
]


def __dir__() -> list[str]:
    return sorted(__all__)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"invguard.{name}")
    raise AttributeError(f"module 'invguard' has no attribute {name!r}")
