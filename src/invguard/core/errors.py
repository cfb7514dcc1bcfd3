"""The invguard exception hierarchy.

Every error meant for a user says what was wrong, where (config field, file, line, route) and what
would be right. The CLI maps them to exit codes: ``ConfigError`` -> 2, ``TargetError`` -> 3.
"""

from __future__ import annotations


class InvguardError(Exception):
    """Base class of every error invguard raises on purpose."""

    exit_code: int = 2


class ConfigError(InvguardError, ValueError):
    """A parameter, config file or command-line option is invalid."""

    exit_code = 2


class DataError(ConfigError):
    """A dataset could not be loaded or split as asked (missing file, wrong columns, bad shapes)."""


class AccessError(InvguardError):
    """An attack needs more access to a model than the target grants."""

    exit_code = 2


class BudgetExhausted(InvguardError):
    """A query would exceed the target's query budget; raised before that query is sent."""

    exit_code = 1

    def __init__(self, message: str, *, used: int = 0, budget: int = 0, requested: int = 0) -> None:
        super().__init__(message)
        self.used = used
        self.budget = budget
        self.requested = requested


class TargetError(InvguardError):
    """The model could not be queried, or answered something that is not a valid prediction."""

    exit_code = 3
