"""Deterministic, disjoint splits: members / non-members / public auxiliary / evaluation.

- **members**: the target model's training set (the private records).
- **nonmembers**: same distribution, never trained on (membership controls, private-specificity).
- **public**: what an attacker may hold (generator training, baselines, shadow models). With
  ``public_classes`` it holds only those classes: the disjoint-class ("identity") setting.
- **evaluation**: trains the independent evaluation classifier; never seen by the target.

Every split records the indices into the source dataset and a hash of them, so a report can say
exactly which records were private.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from invguard.core.errors import DataError
from invguard.data.datasets import Dataset, load_dataset

SPLIT_NAMES = ("members", "nonmembers", "public", "evaluation")
DEFAULT_FRACTIONS = {"members": 0.3, "nonmembers": 0.3, "public": 0.2, "evaluation": 0.2}


@dataclass(frozen=True)
class Split:
    name: str
    X: np.ndarray
    y: np.ndarray
    indices: np.ndarray

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def of_class(self, c: int) -> np.ndarray:
        out: np.ndarray = self.X[self.y == c]
        return out

    @property
    def hash(self) -> str:
        return hashlib.sha256(np.ascontiguousarray(self.indices, dtype=np.int64).tobytes()).hexdigest()[:16]


@dataclass(frozen=True)
class Splits:
    dataset: Dataset
    members: Split
    nonmembers: Split
    public: Split
    evaluation: Split
    seed: int
    public_classes: tuple[int, ...] | None = None
    fractions: dict[str, float] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.dataset.input_shape

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    @property
    def private_classes(self) -> tuple[int, ...]:
        """Classes absent from the public split (all classes in the shared-class setting)."""
        if self.public_classes is None:
            return tuple(range(self.num_classes))
        return tuple(c for c in range(self.num_classes) if c not in self.public_classes)

    @property
    def setting(self) -> str:
        return "shared-class" if self.public_classes is None else "disjoint-class"

    def split(self, name: str) -> Split:
        if name not in SPLIT_NAMES:
            raise DataError(f"unknown split {name!r}; expected one of {SPLIT_NAMES}")
        s: Split = getattr(self, name)
        return s

    def provenance(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset.name,
            "dataset_fingerprint": self.dataset.fingerprint(),
            "seed": self.seed,
            "setting": self.setting,
            "public_classes": None if self.public_classes is None else list(self.public_classes),
            "fractions": dict(self.fractions),
            "splits": {n: {"size": len(self.split(n)), "hash": self.split(n).hash} for n in SPLIT_NAMES},
        }

    def with_public_classes(self, classes: Sequence[int]) -> Splits:
        """The same splits with the public split restricted to ``classes`` (disjoint-class setting)."""
        cls = tuple(sorted(int(c) for c in classes))
        bad = [c for c in cls if not 0 <= c < self.num_classes]
        if bad:
            raise DataError(f"public_classes {bad} out of range [0, {self.num_classes})")
        if len(cls) == self.num_classes:
            raise DataError("public_classes holds every class; that is the shared-class setting")
        keep = np.isin(self.public.y, cls)
        public = Split("public", self.public.X[keep], self.public.y[keep], self.public.indices[keep])
        return Splits(
            self.dataset,
            self.members,
            self.nonmembers,
            public,
            self.evaluation,
            self.seed,
            cls,
            self.fractions,
        )


def make_splits(
    dataset: Dataset,
    *,
    seed: int = 0,
    fractions: dict[str, float] | None = None,
    public_classes: Sequence[int] | None = None,
    limit: int | None = None,
) -> Splits:
    """Split ``dataset`` into the four disjoint, class-stratified splits.

    ``fractions`` (default 0.3/0.3/0.2/0.2) must cover the four split names and sum to at most 1;
    ``limit`` first draws a stratified subsample of that many records.
    """
    from sklearn.model_selection import train_test_split

    fr = dict(DEFAULT_FRACTIONS if fractions is None else fractions)
    if set(fr) != set(SPLIT_NAMES):
        raise DataError(f"fractions must give exactly {list(SPLIT_NAMES)}, got {sorted(fr)}")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in fr.values()):
        raise DataError(f"fractions must be numbers, got {fr}")
    if public_classes is not None and (
        isinstance(public_classes, (str, bytes))
        or not all(isinstance(c, (int, np.integer)) for c in public_classes)
    ):
        raise DataError(f"public_classes must be a list of class indices, got {public_classes!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer))):
        raise DataError(f"limit must be a whole number, got {limit!r}")
    if any(v <= 0 for v in fr.values()) or sum(fr.values()) > 1 + 1e-9:
        raise DataError(f"fractions must be > 0 and sum to at most 1, got {fr}")
    idx = np.arange(dataset.y.shape[0])
    y = dataset.y
    parts: dict[str, np.ndarray] = {}
    try:
        if limit is not None:
            if limit < 4 * dataset.num_classes:
                raise DataError(f"limit={limit} is too small for {dataset.num_classes} classes")
            if limit < idx.size:
                idx, _ = train_test_split(idx, train_size=limit, stratify=y, random_state=seed)
                idx = np.sort(idx)
        n = idx.size
        counts = {k: round(v * n) for k, v in fr.items()}
        rest = idx
        for name in SPLIT_NAMES[:-1]:
            take, rest = train_test_split(rest, train_size=counts[name], stratify=y[rest], random_state=seed)
            parts[name] = np.sort(take)
        last = counts["evaluation"]
        if last < rest.size - dataset.num_classes:  # otherwise the remainder is (nearly) exactly evaluation
            rest, _ = train_test_split(rest, train_size=last, stratify=y[rest], random_state=seed)
        parts["evaluation"] = np.sort(rest)
    except ValueError as e:
        raise DataError(
            f"{dataset.name}: cannot split {idx.size} records into stratified {list(SPLIT_NAMES)} parts "
            f"(fractions {fr}): {e}; every class needs a few records in every split"
        ) from None

    def mk(name: str) -> Split:
        ix = parts[name]
        return Split(name, dataset.X[ix], dataset.y[ix], ix)

    splits = Splits(dataset, mk("members"), mk("nonmembers"), mk("public"), mk("evaluation"), seed, None, fr)
    return splits.with_public_classes(public_classes) if public_classes is not None else splits


def load(
    name: str = "digits",
    *,
    seed: int = 0,
    fractions: dict[str, float] | None = None,
    public_classes: Sequence[int] | None = None,
    limit: int | None = None,
    **loader_kw: Any,
) -> Splits:
    """Load a dataset by name or path and split it (see :func:`make_splits`)."""
    return make_splits(
        load_dataset(name, **loader_kw),
        seed=seed,
        fractions=fractions,
        public_classes=public_classes,
        limit=limit,
    )
