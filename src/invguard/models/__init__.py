"""Small reference architectures, seeded CPU training, save/load and reference models.

>>> from invguard import models
>>> model, splits = models.reference("digits-mlp", seed=0)   # trained on the digits members split

The names below are imported on first use, so a torch-free submodule (``invguard.models.lm_server``)
can be imported without loading torch. Training is :func:`invguard.models.train.train` (and
``fit``); ``models.train`` is that module.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from invguard.models.nets import ARCHITECTURES, build, spec_of
    from invguard.models.store import load, reference, save
    from invguard.models.train import RECIPES, TrainReport, accuracy

_WHERE = {
    "ARCHITECTURES": "nets",
    "build": "nets",
    "spec_of": "nets",
    "load": "store",
    "reference": "store",
    "save": "store",
    "RECIPES": "train",
    "TrainReport": "train",
    "accuracy": "train",
}

__all__ = [
    "ARCHITECTURES",
    "RECIPES",
    "TrainReport",
    "accuracy",
    "build",
    "load",
    "reference",
    "save",
    "spec_of",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"invguard.models.{_WHERE[name]}"), name)
    if not name.startswith("_") and importlib.util.find_spec(f"invguard.models.{name}") is not None:
        return importlib.import_module(f"invguard.models.{name}")
    raise AttributeError(f"module 'invguard.models' has no attribute {name!r}")
