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

import numpy as np

from invguard.core.result import Finding


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


@dataclass(frozen=True, kw_only=True)
class MembershipScores(Evidence):
    """Per-candidate membership scores (higher: more likely a member) with the ground truth.

    ``is_member`` (0/1), ``indices`` (into the source dataset) and ``labels`` describe the
    candidates; ``decision_threshold`` is the attack's yes/no cut (calibrated on population data,
    never on the candidates), None when it makes no decision; ``notes`` are findings the search
    wants stated (e.g. "few reference models").
    """

    scores: np.ndarray
    is_member: np.ndarray
    indices: np.ndarray
    labels: np.ndarray
    decision_threshold: float | None
    notes: tuple[Finding, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Reconstructions(Evidence):
    """Inputs an inversion search produced, one per entry of ``classes`` (the class each was meant
    to show), with the target's own view of them and what the search spent.

    ``margin``: the target's margin for the intended class (> 0: the search reached it);
    ``confidence``: the target's confidence in it (never the headline); ``queries``: queries the
    search spent; ``ranking``: the public-ranking baseline (public records the target scored
    highest per class, queried before the search so a budget covers both) or None when it could
    not run, with ``ranking_queries`` it spent; ``notes``: sentences for the result's notes.
    """

    images: np.ndarray
    classes: np.ndarray
    margin: np.ndarray
    confidence: np.ndarray
    queries: int
    search_time_s: float = 0.0
    ranking: np.ndarray | None = None
    ranking_queries: int = 0
    notes: tuple[str, ...] = ()

    @property
    def converged(self) -> np.ndarray:
        out: np.ndarray = np.asarray(self.margin) > 0
        return out


@dataclass(frozen=True)
class GuessedRecords:
    """Records an attribute attack inferred a sensitive value of: the records (``X``, ``y``), their
    ``indices`` into the source dataset, the true value index and the guessed one."""

    X: np.ndarray
    y: np.ndarray
    indices: np.ndarray
    truth: np.ndarray
    guess: np.ndarray


@dataclass(frozen=True, kw_only=True)
class AttributeGuesses(Evidence):
    """A model-based attribute attack's guesses on members and, as the control, non-members.

    ``column`` describes the sensitive column (its name, candidate values, how to read and
    substitute it): the judge builds the no-model baselines from it and the public split.
    """

    column: Any
    members: GuessedRecords
    nonmembers: GuessedRecords


@dataclass(frozen=True, kw_only=True)
class BaselineGuesses(Evidence):
    """The no-model attacker's guesses on members (``method``: ``marginal`` or ``imputation``)."""

    column: Any
    method: str
    members: GuessedRecords


@dataclass(frozen=True, kw_only=True)
class RankedCandidates(Evidence):
    """Candidates ranked by a membership attack, the ``top`` rows it found most exposed and as many
    random ``control`` rows (indices into the candidates), with the membership run's own metrics."""

    scores: np.ndarray
    is_member: np.ndarray
    indices: np.ndarray
    labels: np.ndarray
    top: np.ndarray
    control: np.ndarray
    membership_metrics: Mapping[str, Any]


@dataclass(frozen=True, kw_only=True)
class ExposedAttributes(RankedCandidates):
    """A sensitive value inferred for the top rows then the control rows (in that order)."""

    column: Any
    X: np.ndarray
    y: np.ndarray
    truth: np.ndarray
    guess: np.ndarray


@dataclass(frozen=True, kw_only=True)
class ExposedRegions(RankedCandidates):
    """Hidden image regions (``mask`` = 1) reconstructed for the top rows then the control rows."""

    X: np.ndarray
    y: np.ndarray
    mask: np.ndarray
    reconstructions: np.ndarray
