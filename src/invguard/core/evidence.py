"""Typed evidence: what an attack's search found, before anything is concluded from it.

An attack implements only ``search(target, data, rng, ctx) -> Evidence``. The judge registered for
the evidence's type (``invguard.judges``) turns it into the ``AttackResult``: the independent
evaluator, the no-model baselines, controls, confidence intervals and findings. Keeping the two
apart means a new attack inherits every honesty rule of its family's judge, and a judge can be
tested on hand-made evidence with a known answer.

Each family defines its evidence types as frozen dataclasses deriving from ``Evidence`` (for
example reconstructions with the classes they were meant to show, membership scores per candidate
record, attribute guesses, reconstructed client inputs, canary ranks).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, kw_only=True)
class Evidence:
    """Base of every evidence type.

    ``info`` carries what the search wants the result to state (the search space used, queries per
    class, the assumption made about the attacker); the judge copies it into the result's ``info``.
    """

    info: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def kind(cls) -> str:
        """The name judges are registered under: the class's module-qualified name."""
        return f"{cls.__module__}.{cls.__qualname__}"
