"""The role-swap control of the private-specificity test.

A model of the target's architecture and recipe is trained on a members-sized sample of the
non-member split, put behind the target's access and output policies with at most the queries the
attack spent, and attacked the same way with the roles swapped: if reconstructions of *that* model
sit closer to *its* training records, a closeness seen on the target is a property of the method
and the split, not a leak.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from invguard.core.data import Split, Splits
from invguard.core.errors import ConfigError
from invguard.core.run import RunContext
from invguard.core.target import Target, unwrap


class Reconstructor(Protocol):
    """What the judge asks of an inversion attack: its name, the control settings and its search."""

    name: str
    role_swap: str
    control_recipe: str
    permutations: int

    def reconstruct(
        self, target: Target, splits: Splits, rng: np.random.Generator, ctx: RunContext
    ) -> tuple[Any, np.ndarray, int, dict[str, Any]]: ...


@dataclass(frozen=True)
class ControlRun:
    """The control's reconstructions, the class of each, its training records and what it spent."""

    images: np.ndarray
    classes: np.ndarray
    train: Split
    info: dict[str, Any]


def role_swap(
    attack: Reconstructor,
    target: Target,
    splits: Splits,
    *,
    spent: int,
    rng: np.random.Generator,
    ctx: RunContext,
    notes: list[str],
) -> ControlRun | None:
    """Run the control (None when it is off or cannot run; ``notes`` says why)."""
    if attack.role_swap == "off" or attack.permutations == 0:
        notes.append("role-swap control off")
        return None
    seen = unwrap(target)
    spec = seen.spec
    if spec is None:
        msg = (
            f"{attack.name}: the role-swap control needs the target's architecture (an invguard-built "
            "torch module); this target does not expose one"
        )
        if attack.role_swap == "on":
            raise ConfigError(msg + "; set role_swap='auto' or 'off'")
        notes.append("role-swap control not run: the target's architecture is unknown")
        return None
    from invguard.models.train import RECIPES

    recipe = attack.control_recipe
    if recipe == "auto":
        known = seen.meta.get("recipe")
        if isinstance(known, str) and known in RECIPES:
            recipe = known
        else:
            recipe = "standard"
            notes.append(
                "role-swap control trained with the 'standard' recipe: the target's training recipe "
                "is not recorded in its metadata (set control_recipe to the target's)"
            )
    n_mem, n_non = len(splits.members), len(splits.nonmembers)
    train_ix = np.arange(n_non)
    if n_non > n_mem:
        train_ix = np.sort(np.random.default_rng(0).choice(n_non, size=n_mem, replace=False))
    elif n_non < n_mem:
        notes.append(
            f"role-swap control trained on {n_non} non-members, fewer than the target's {n_mem} members"
        )
    non = splits.nonmembers
    control_train = dataclasses.replace(
        non,  # type: ignore[type-var]
        X=non.X[train_ix],
        y=non.y[train_ix],
        indices=non.indices[train_ix],
    )
    control = control_target(
        target, splits, spec, recipe, ctx.cache_dir, train=control_train, budget=max(1, int(spent))
    )
    swapped = dataclasses.replace(splits, members=control_train, nonmembers=splits.members)  # type: ignore[type-var]
    state, per_rec, c_spent, _ = attack.reconstruct(control, swapped, rng, ctx)
    info = {
        "recipe": recipe,
        "train_records": len(control_train),
        "target_members": n_mem,
        "query_cap": int(spent),
        "queries": int(c_spent),
    }
    return ControlRun(images=state.images, classes=per_rec, train=control_train, info=info)


def control_target(
    target: Target,
    splits: Splits,
    spec: dict[str, Any],
    recipe: str,
    cache_dir: Path | None,
    *,
    train: Split | None = None,
    budget: int | None = None,
) -> Target:
    """A model of the target's architecture trained on ``train`` (default: the non-member split), behind
    the same access level and output policies as the target, with an optional query ``budget``
    (cached by content hash in ``cache_dir``)."""
    from invguard import models
    from invguard.models.train import fit
    from invguard.storage import cached
    from invguard.targets.torch import TorchTarget

    seen = unwrap(target)
    data = splits.nonmembers if train is None else train
    parts = {"spec": spec, "recipe": recipe, "data": splits.dataset.fingerprint(), "train": data.hash}
    module = cached(
        cache_dir,
        "inversion-control",
        parts,
        make=lambda: fit(spec, data.X, data.y, recipe=recipe, seed=0)[0],
        load=models.load,
        save=lambda m, path: models.save(m, path, meta={"role": "role-swap control"}),
    )
    t: Target = TorchTarget(
        module, input_shape=tuple(splits.input_shape), access=seen.base.access, budget=budget, name="control"
    )
    for pol in reversed(seen.policies):
        t = pol.wrap(t)
    return t
