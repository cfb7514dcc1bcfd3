"""Access levels: what an attacker (or a client of the guard) can see of a model."""

from __future__ import annotations

import enum


class Access(enum.IntEnum):
    """Ordered access levels. A higher level includes everything a lower one gives.

    - ``LABEL``: the predicted class only.
    - ``SCORES``: a probability vector (possibly truncated, rounded or noised by a policy).
    - ``LOGITS``: the raw pre-softmax outputs.
    - ``WHITEBOX``: the model itself (weights, gradients).
    """

    LABEL = 1
    SCORES = 2
    LOGITS = 3
    WHITEBOX = 4

    @classmethod
    def parse(cls, value: str | int | Access) -> Access:
        """Parse ``"scores"``, ``"SCORES"``, ``2`` or an ``Access`` into an ``Access``."""
        from invguard.core.errors import ConfigError

        if isinstance(value, Access):
            return value
        if isinstance(value, int):
            try:
                return cls(value)
            except ValueError:
                raise ConfigError(f"unknown access level {value!r}; expected one of {cls.names()}") from None
        key = str(value).strip().upper().replace("-", "_")
        if key in cls.__members__:
            return cls[key]
        raise ConfigError(f"unknown access level {value!r}; expected one of {cls.names()}")

    @classmethod
    def names(cls) -> list[str]:
        return [m.name.lower() for m in cls]
