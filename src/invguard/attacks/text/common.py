"""What the text attacks share: the access check for language-model targets, the text splits,
log-perplexity, zlib entropy and redaction of extracted strings."""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from invguard.attacks.base import Attack
from invguard.core.access import TextAccess
from invguard.core.errors import AccessError, ConfigError

LN2 = float(np.log(2.0))


@dataclass(frozen=True)
class TextAttack(Attack):
    """Base of the text attacks: they need a language-model target (``invguard.targets.lm``)."""

    requires: ClassVar[TextAccess] = TextAccess.LOGPROBS  # type: ignore[assignment]
    data_kind: ClassVar[str] = "text"  # text splits with canaries, and a language-model target

    def check_access(self, target: Any) -> None:
        need = self.required_access(target)
        if not isinstance(target.access, TextAccess):
            raise AccessError(
                f"{self.name} needs a language-model target granting {need.name}; this target is a "
                f"classifier granting {target.describe()}"
            )
        if target.access < need:
            raise AccessError(f"{self.name} needs {need.name}; this target grants {target.describe()}")


def text_splits_of(data: Any, attack: str, need: Sequence[str] = ("members", "nonmembers")) -> Any:
    """Check that ``data`` is an ``invguard.data.text.TextSplits`` with the parts ``need``."""
    missing = [n for n in ("members", "nonmembers", "public", "canaries") if not hasattr(data, n)]
    if missing:
        raise ConfigError(
            f"{attack}: needs text splits (invguard.data.text.load_text(...)); got {type(data).__name__} "
            f"without {', '.join(missing)}"
        )
    for n in need:
        if len(getattr(data, n)) == 0:
            raise ConfigError(f"{attack}: the {n} part of the text splits is empty")
    return data


def zlib_bits(text: str) -> float:
    """zlib entropy of ``text``: the bits of its zlib-compressed UTF-8 bytes (Carlini et al. 2021)."""
    return 8.0 * len(zlib.compress(text.encode("utf-8"), 9))


def bits(total_logprob: float) -> float:
    """A natural-log probability as bits of surprise (log-perplexity in bits)."""
    return -float(total_logprob) / LN2


def redact(text: str, keep: int = 12) -> str:
    """An extracted string as a report shows it by default: its first ``keep`` characters, the
    length of the rest and a short hash (so two reports can be compared without revealing it)."""
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    if len(text) <= keep:
        return f"[{len(text)} chars redacted, sha256 {digest}]"
    return f"{text[:keep]}…[{len(text) - keep} chars redacted, sha256 {digest}]"


def batched(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
