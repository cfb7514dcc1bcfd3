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


class TextAccess(enum.IntEnum):
    """Ordered access levels of a language model (the text counterpart of :class:`Access`).

    - ``TEXT``: generated text only.
    - ``TOPK_LOGPROBS``: per position, the k most likely tokens' log-probabilities (possibly rounded);
      a token's own log-probability only when it is among them.
    - ``LOGPROBS``: the log-probability of every token of a text, generated or given (``echo``).
    - ``WHITEBOX``: the model itself (weights, gradients, whole next-token distributions).
    """

    TEXT = 1
    TOPK_LOGPROBS = 2
    LOGPROBS = 3
    WHITEBOX = 4

    @classmethod
    def parse(cls, value: str | int | TextAccess) -> TextAccess:
        """Parse ``"logprobs"``, ``"TOPK_LOGPROBS"``, ``3`` or a ``TextAccess``."""
        from invguard.core.errors import ConfigError

        if isinstance(value, TextAccess):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            try:
                return cls(value)
            except ValueError:
                raise ConfigError(
                    f"unknown text access level {value!r}; expected one of {cls.names()}"
                ) from None
        key = str(value).strip().upper().replace("-", "_")
        if key in cls.__members__:
            return cls[key]
        raise ConfigError(f"unknown text access level {value!r}; expected one of {cls.names()}")

    @classmethod
    def names(cls) -> list[str]:
        return [m.name.lower() for m in cls]
