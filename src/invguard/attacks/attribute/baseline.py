"""Attribute-inference baselines that never query the model, and the sensitive-column plumbing.

- ``marginal``: always guess the most frequent value in the public split (the prior's mode:
  Fredrikson et al. 2014's baseline);
- ``imputation``: a classifier trained on the public split to predict the sensitive value from the
  record's other features and its label (Jayaraman & Evans 2022's imputation adversary).

An attribute attack's **advantage** is its accuracy minus a baseline's on the same records.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from invguard.attacks.base import ATTACKS, Attack, RunContext
from invguard.core.access import Access
from invguard.core.data import Splits, require_splits
from invguard.core.errors import ConfigError, DataError
from invguard.core.evidence import BaselineGuesses, GuessedRecords
from invguard.core.params import Int, Options, Spec, Text
from invguard.core.target import Target


@dataclass(frozen=True)
class SensitiveColumn:
    """A sensitive column of an encoded tabular dataset and its candidate values.

    ``kind`` is ``categorical`` (one-hot feature group) or ``numeric`` (one scaled feature, binned:
    ``edges`` are the inner bin edges and ``centres`` the value substituted for each bin).
    """

    name: str
    kind: str
    features: list[int]
    labels: list[str]
    edges: np.ndarray = field(default_factory=lambda: np.zeros(0))
    centres: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def n_values(self) -> int:
        return len(self.labels)

    def value_of(self, X: np.ndarray) -> np.ndarray:
        flat = X.reshape(X.shape[0], -1)
        if self.kind == "categorical":
            out: np.ndarray = np.argmax(flat[:, self.features], axis=1)
            return out
        out = np.digitize(flat[:, self.features[0]], self.edges)
        return out

    def substitute(self, X: np.ndarray, k: int) -> np.ndarray:
        flat = X.reshape(X.shape[0], -1).copy()
        if self.kind == "categorical":
            flat[:, self.features] = 0.0
            flat[:, self.features[k]] = 1.0
        else:
            flat[:, self.features[0]] = self.centres[k]
        return flat.reshape(X.shape)

    def prior(self, X: np.ndarray) -> np.ndarray:
        counts = np.bincount(self.value_of(X), minlength=self.n_values).astype(np.float64) + 1.0
        out: np.ndarray = counts / counts.sum()
        return out

    def without(self, X: np.ndarray) -> np.ndarray:
        flat = X.reshape(X.shape[0], -1)
        keep = np.setdiff1d(np.arange(flat.shape[1]), self.features)
        out: np.ndarray = flat[:, keep]
        return out


def tabular_splits(data: object, attack: str) -> Splits:
    splits = require_splits(data, attack, nonempty=())
    ds = getattr(splits, "dataset", None)
    if ds is None or ds.kind != "tabular" or not ds.feature_groups:
        kind = getattr(ds, "kind", "unknown")
        raise DataError(
            f"{attack}: attribute inference needs a tabular dataset with named columns (feature_groups); "
            f"this one is {kind!r}"
        )
    if len(splits.public) < 2:
        raise DataError(f"{attack}: the public split needs at least 2 records, has {len(splits.public)}")
    return splits


def sensitive_column(splits: Any, name: str, bins: int, attack: str) -> SensitiveColumn:
    ds = splits.dataset
    if name not in ds.feature_groups:
        raise ConfigError(
            f"{attack}: sensitive column {name!r} not found; the dataset's columns are "
            f"{sorted(ds.feature_groups)}"
        )
    feats = list(ds.feature_groups[name])
    if name in ds.categories:
        return SensitiveColumn(name, "categorical", feats, list(ds.categories[name]))
    if len(feats) != 1:
        raise DataError(f"{attack}: column {name!r} has {len(feats)} features but no categories")
    pub = splits.public.X.reshape(len(splits.public), -1)[:, feats[0]]
    edges = np.unique(np.quantile(pub, np.linspace(0, 1, bins + 1)[1:-1]))
    which = np.digitize(pub, edges)
    centres = np.array(
        [np.median(pub[which == k]) if np.any(which == k) else 0.0 for k in range(edges.size + 1)]
    )
    bounds = np.r_[-np.inf, edges, np.inf]
    labels = [f"[{bounds[k]:.3g}, {bounds[k + 1]:.3g})" for k in range(edges.size + 1)]
    return SensitiveColumn(name, "numeric", feats, labels, edges, centres)


def baseline_guess(
    kind: str, col: SensitiveColumn, pub: Any, X: np.ndarray, y: np.ndarray, seed: int
) -> np.ndarray:
    """The no-model attacker's guesses for records ``(X, y)``, learned from the public split only."""
    truth_pub = col.value_of(pub.X)
    if kind == "marginal":
        mode = int(np.argmax(np.bincount(truth_pub, minlength=col.n_values)))
        return np.full(X.shape[0], mode, dtype=np.int64)
    if kind == "imputation":
        from sklearn.ensemble import HistGradientBoostingClassifier

        classes = int(max(pub.y.max(), y.max())) + 1

        def design(Xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
            return np.concatenate([col.without(Xs), np.eye(classes)[ys]], axis=1)

        if np.unique(truth_pub).size < 2:
            return np.full(X.shape[0], int(truth_pub[0]), dtype=np.int64)
        clf = HistGradientBoostingClassifier(max_iter=100, random_state=seed % 2**31)
        clf.fit(design(pub.X, pub.y), truth_pub)
        out: np.ndarray = clf.predict(design(X, y)).astype(np.int64)
        return out
    raise ConfigError(f"unknown baseline {kind!r}; expected 'marginal' or 'imputation'")


def correct_array(guess: np.ndarray, truth: np.ndarray) -> np.ndarray:
    out: np.ndarray = (np.asarray(guess) == np.asarray(truth)).astype(np.float64)
    return out


def per_value_table(
    col: SensitiveColumn, truth: np.ndarray, guess: np.ndarray, base: np.ndarray
) -> list[dict[str, Any]]:
    """Per candidate value: how many records hold it, and how often each attacker recovers it."""
    rows = []
    for k, label in enumerate(col.labels):
        sel = truth == k
        rows.append(
            {
                "value": label,
                "records": int(sel.sum()),
                "attack_recall": float(np.mean(guess[sel] == k)) if sel.any() else None,
                "baseline_recall": float(np.mean(base[sel] == k)) if sel.any() else None,
                "attack_guesses": int(np.sum(guess == k)),
            }
        )
    return rows


@ATTACKS.register("attribute.baseline")
@dataclass(frozen=True)
class AttributeBaseline(Attack):
    """The no-model attacker on the members split: ``marginal`` or ``imputation`` (no query spent)."""

    name: ClassVar[str] = "attribute.baseline"
    requires: ClassVar[Access] = Access.LABEL
    strength: ClassVar[int] = 0
    fast_params: ClassVar[Mapping[str, Any]] = {"max_records": 300, "n_boot": 300}
    data_kind: ClassVar[str] = "tabular"

    sensitive: str = "sex"
    bins: int = 5
    method: str = "imputation"
    max_records: int = 1000
    n_boot: int = 1000

    constraints: ClassVar[Mapping[str, Spec]] = {
        "sensitive": Text(),
        "bins": Int(2),
        "method": Options("marginal", "imputation"),
        "max_records": Int(1),
        "n_boot": Int(0),
    }

    def search(
        self, target: Target, data: Splits, rng: np.random.Generator, ctx: RunContext
    ) -> BaselineGuesses:
        splits = tabular_splits(data, self.name)
        col = sensitive_column(splits, self.sensitive, self.bins, self.name)
        seed = int(rng.integers(2**31))
        s = splits.members
        ix = np.sort(rng.permutation(len(s))[: min(self.max_records, len(s))])
        X, y = s.X[ix], s.y[ix]
        guess = baseline_guess(self.method, col, splits.public, X, y, seed)
        return BaselineGuesses(
            column=col,
            method=self.method,
            members=GuessedRecords(X=X, y=y, indices=s.indices[ix], truth=col.value_of(X), guess=guess),
            info={"sensitive": col.name, "method": self.method},
        )
