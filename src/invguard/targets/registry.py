"""Target kind -> adapter class, like the attack and policy registries (duplicates refused).

Each adapter module registers its class with ``@TARGETS.register(kind)``; the registry imports
every adapter module on first use, so listing kinds may import torch.
"""

from __future__ import annotations

import importlib

from invguard.core.registry import Registry

TARGETS: Registry[type] = Registry("target kind")

_ADAPTERS = (
    "invguard.targets.callable",
    "invguard.targets.sklearn",
    "invguard.targets.http",
    "invguard.targets.torch",
    "invguard.targets.onnx",
)


def _load_all() -> None:
    for mod in _ADAPTERS:
        importlib.import_module(mod)


TARGETS.add_loader(_load_all)
