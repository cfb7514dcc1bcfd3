"""Save and load models (architecture spec + weights in one file) and named reference models."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from invguard.core.errors import ConfigError
from invguard.models.nets import build, spec_of
from invguard.storage import atomic_path, cached

FORMAT = "invguard-model/1"

# name -> (dataset, architecture spec extras, recipe)
REFERENCES: dict[str, dict[str, Any]] = {
    "digits-mlp": {"dataset": "digits", "arch": {"arch": "mlp", "hidden": [128]}, "recipe": "standard"},
    "digits-mlp-overfit": {
        "dataset": "digits",
        "arch": {"arch": "mlp", "hidden": [256]},
        "recipe": "overfit",
    },
    "digits-cnn": {"dataset": "digits", "arch": {"arch": "cnn"}, "recipe": "standard"},
    "mnist5k-cnn": {"dataset": "mnist5k", "arch": {"arch": "cnn"}, "recipe": "standard"},
    "mnist5k-mlp-overfit": {
        "dataset": "mnist5k",
        "arch": {"arch": "mlp", "hidden": [256]},
        "recipe": "overfit",
    },
    "adult-mlp": {"dataset": "adult", "arch": {"arch": "mlp", "hidden": [64]}, "recipe": "standard"},
}


def save(module: nn.Module, path: str | Path, *, meta: dict[str, Any] | None = None) -> Path:
    """Write the module's spec and weights to ``path`` atomically (temp file, then rename)."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{p}: is a folder; give a file path for the model, e.g. {p / 'model.pt'}")
    meta = {"torch": str(torch.__version__), "torch_threads": torch.get_num_threads(), **(meta or {})}
    try:
        with atomic_path(p) as tmp:
            torch.save(
                {"format": FORMAT, "spec": spec_of(module), "state_dict": module.state_dict(), "meta": meta},
                tmp,
            )
    except OSError as e:
        raise ConfigError(f"{p}: cannot write the model file ({e.strerror})") from None
    return p


def load(path: str | Path, **reference_kw: Any) -> nn.Module:
    """Load a saved model file, or a reference model by name: ``"reference/digits-mlp"``."""
    s = str(path)
    if s.startswith("reference/"):
        return reference(s.split("/", 1)[1], **reference_kw)[0]
    p = Path(s)
    if not p.exists():
        raise ConfigError(f"{p}: model file not found")
    try:
        blob = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a corrupt or foreign file
        raise ConfigError(f"{p}: not an invguard model file ({type(e).__name__}: {e})") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ConfigError(f"{p}: not an invguard model file (expected format {FORMAT!r})")
    module = build(blob["spec"])
    module.load_state_dict(blob["state_dict"])
    module.eval()
    module.invguard_meta = blob.get("meta", {})
    return module


def _cache_dir() -> Path:
    return Path(os.environ.get("INVGUARD_CACHE", ".invguard/cache"))


def reference(name: str, *, seed: int = 0, cache: bool = True, progress: Any = None) -> tuple[nn.Module, Any]:
    """A named reference model trained (seeded) on the members split of its dataset.

    Returns ``(module, splits)``. Trained models are cached under ``$INVGUARD_CACHE``
    (default ``.invguard/cache`` in the working folder) by a hash of the architecture, the training
    hyper-parameters, the data split and the torch version, so a second call loads instantly and a
    changed recipe never reloads stale weights.
    """
    from invguard import data
    from invguard.models.train import RECIPES, fit

    if name not in REFERENCES:
        raise ConfigError(f"unknown reference model {name!r}; known: {sorted(REFERENCES)}")
    ref = REFERENCES[name]
    splits = data.load(ref["dataset"], seed=seed)
    spec = {**ref["arch"], "input_shape": list(splits.input_shape), "num_classes": splits.num_classes}
    parts = {
        "spec": spec,
        "recipe": RECIPES[ref["recipe"]],
        "seed": seed,
        "data": splits.provenance(),
        "torch": torch.__version__,
    }

    def make() -> nn.Module:
        module, report = fit(
            spec, splits.members.X, splits.members.y, recipe=ref["recipe"], seed=seed, progress=progress
        )
        meta = {"reference": name, "seed": seed, "train_accuracy": report.train_accuracy}
        module.invguard_meta = meta  # type: ignore[assignment]
        return module

    module = cached(_cache_dir() if cache else None, name, parts, make=make, load=load, save=save_with_meta)
    return module, splits


def save_with_meta(module: nn.Module, path: Path) -> None:
    """``save`` with the module's own ``invguard_meta`` (the form :func:`invguard.storage.cached` takes)."""
    save(module, path, meta=dict(getattr(module, "invguard_meta", None) or {}))
