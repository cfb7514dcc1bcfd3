"""The data an attack reads: the ``Splits`` protocol (members / non-members / public / evaluation).

``invguard.data.load`` and ``invguard.data.make_splits`` build the concrete splits; attacks and
judges are typed against these protocols only, and :func:`require_splits` is the one check of
what a caller passed, with one message for every attack.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from invguard.core.errors import ConfigError

SPLIT_NAMES = ("members", "nonmembers", "public", "evaluation")


@runtime_checkable
class Split(Protocol):
    """One split: records ``X`` (n, *input_shape), labels ``y`` (n,) and their ``indices`` into the
    source dataset; ``hash`` identifies the records (for cache keys and provenance)."""

    name: str
    X: NDArray[Any]
    y: NDArray[np.integer[Any]]
    indices: NDArray[np.integer[Any]]

    def __len__(self) -> int: ...

    @property
    def hash(self) -> str: ...


class DatasetInfo(Protocol):
    name: str
    kind: str

    def fingerprint(self) -> str: ...


@runtime_checkable
class Splits(Protocol):
    """The four disjoint splits of one dataset and what is known about them.

    ``members``: the target's training set; ``nonmembers``: same distribution, never trained on;
    ``public``: what an attacker holds; ``evaluation``: trains the independent evaluators.
    ``private_classes``: classes absent from the public split (all in the shared-class setting).
    """

    @property
    def members(self) -> Split: ...

    @property
    def nonmembers(self) -> Split: ...

    @property
    def public(self) -> Split: ...

    @property
    def evaluation(self) -> Split: ...

    @property
    def dataset(self) -> Any: ...

    @property
    def input_shape(self) -> tuple[int, ...]: ...

    @property
    def num_classes(self) -> int: ...

    @property
    def private_classes(self) -> tuple[int, ...]: ...

    @property
    def setting(self) -> str: ...

    def split(self, name: str) -> Split: ...

    def provenance(self) -> dict[str, Any]: ...


def require_splits(
    data: object,
    attack: str,
    *,
    nonempty: Sequence[str] = ("members", "nonmembers"),
    target: Any = None,
) -> Splits:
    """``data`` as :class:`Splits`, or a ConfigError naming the attack and what is missing.

    ``nonempty``: the splits that must hold records; ``target``: when given, the data's input shape
    and class count must match it.
    """
    missing = [n for n in SPLIT_NAMES if not hasattr(data, n)]
    if data is None or missing:
        partial = data is not None and len(missing) < len(SPLIT_NAMES)
        raise ConfigError(
            f"{attack}: data must be the splits of a dataset (invguard.data.load(...)), got "
            f"{type(data).__name__}" + (f" without {', '.join(missing)}" if partial else "")
        )
    splits: Splits = data  # type: ignore[assignment]
    for name in nonempty:
        if len(splits.split(name)) == 0:
            raise ConfigError(f"{attack}: the {name} split is empty")
    if target is not None:
        if tuple(splits.input_shape) != tuple(target.input_shape):
            raise ConfigError(
                f"{attack}: the data's input shape {tuple(splits.input_shape)} does not match the "
                f"target's {tuple(target.input_shape)}"
            )
        if splits.num_classes != target.num_classes:
            raise ConfigError(
                f"{attack}: the data has {splits.num_classes} classes but the target {target.num_classes}"
            )
    return splits
