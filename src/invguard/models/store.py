"""Save and load models (architecture spec + weights in one file) and named reference models."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from invguard.core.errors import ConfigError
from invguard.models.nets import build, spec_of

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
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    except OSError as e:
        raise ConfigError(f"{p}: cannot write the model file ({e.strerror})") from None
    meta = {"torch": str(torch.__version__), "torch_threads": torch.get_num_threads(), **(meta or {})}
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(
                {"format": FORMAT, "spec": spec_of(module), "state_dict": module.state_dict(), "meta": meta},
                f,
            )
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
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
    key = hashlib.sha256(
        json.dumps(
            {
                "spec": spec,
                "recipe": RECIPES[ref["recipe"]],
                "seed": seed,
                "data": splits.provenance(),
                "torch": torch.__version__,
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()[:16]
    path = _cache_dir() / f"{name}-{key}.pt"
    if cache and path.exists():
        return load(path), splits
    module, report = fit(
        spec, splits.members.X, splits.members.y, recipe=ref["recipe"], seed=seed, progress=progress
    )
    if cache:
        save(module, path, meta={"reference": name, "seed": seed, "train_accuracy": report.train_accuracy})
    return module, splits
