"""invguard: find and stop model-inversion leaks.

Sub-packages are imported lazily, so ``import invguard`` stays cheap (no torch at import time).
"""

from __future__ import annotations

import importlib
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

_SUBMODULES = ("attacks", "audit", "data", "guard", "metrics", "models", "policies", "report", "targets")

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


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"invguard.{name}")
    raise AttributeError(f"module 'invguard' has no attribute {name!r}")
