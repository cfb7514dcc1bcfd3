"""The shared vocabulary of invguard: access levels, targets, results, registries and errors.

Nothing here performs I/O or imports torch.
"""

from invguard.core.access import Access, TextAccess
from invguard.core.errors import (
    AccessError,
    BudgetExhausted,
    ConfigError,
    DataError,
    InvguardError,
    TargetError,
)
from invguard.core.target import BaseTarget, Prediction, Target

__all__ = [
    "Access",
    "AccessError",
    "BaseTarget",
    "BudgetExhausted",
    "ConfigError",
    "DataError",
    "InvguardError",
    "Prediction",
    "Target",
    "TargetError",
    "TextAccess",
]
