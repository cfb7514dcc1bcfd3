"""Reference architectures, described by a JSON-ready spec so that a saved model rebuilds itself."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from invguard.core.errors import ConfigError
from invguard.core.registry import Registry

ARCHITECTURES: Registry[Callable[..., nn.Module]] = Registry("architecture")


@ARCHITECTURES.register("mlp")
class MLP(nn.Module):
    """Flatten, then fully connected layers with ReLU. For images and tabular data."""

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        hidden: tuple[int, ...] = (128,),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = int(np.prod(input_shape))
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = int(h)
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out


@ARCHITECTURES.register("cnn")
class SmallCNN(nn.Module):
    """Two conv blocks and a linear head; works for 8x8 and 28x28 images.

    ``norm``: ``None`` (no normalisation), ``"group"`` (GroupNorm after each convolution: per-sample,
    so DP-SGD can train it) or ``"batch"`` (BatchNorm: mixes the samples of a batch, which DP-SGD
    refuses).
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        channels: tuple[int, int] = (16, 32),
        hidden: int = 64,
        norm: str | None = None,
    ) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ConfigError(
                f"cnn needs images of shape (channels, height, width), got input_shape {tuple(input_shape)}; "
                "use the mlp architecture for tabular data"
            )
        c_in, h, w = input_shape
        c1, c2 = channels
        pool = 2 if min(h, w) >= 16 else 1
        if norm not in (None, "group", "batch"):
            raise ValueError(f"norm must be None, 'group' or 'batch', got {norm!r}")

        def normed(c: int) -> list[nn.Module]:
            if norm == "group":
                return [nn.GroupNorm(min(8, c), c)]
            if norm == "batch":
                return [nn.BatchNorm2d(c)]
            return []

        self.features = nn.Sequential(
            nn.Conv2d(c_in, c1, 3, padding=1),
            *normed(c1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1),
            *normed(c2),
            nn.ReLU(),
            nn.MaxPool2d(pool),
        )
        with torch.no_grad():
            n = int(self.features(torch.zeros(1, *input_shape)).numel())
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(n, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.features(x))
        return out


def build(spec: dict[str, Any]) -> nn.Module:
    """Build an untrained module from ``{"arch": name, "input_shape": [...], "num_classes": C, ...}``."""
    spec = dict(spec)
    try:
        arch = spec.pop("arch")
        input_shape = tuple(spec.pop("input_shape"))
        num_classes = int(spec.pop("num_classes"))
    except KeyError as e:
        raise ConfigError(f"model spec is missing {e.args[0]!r}: {spec}") from None
    factory = ARCHITECTURES.get(arch)
    for k, v in list(spec.items()):
        if isinstance(v, list):
            spec[k] = tuple(v)
    if num_classes < 2 or not input_shape or any(int(d) < 1 for d in input_shape):
        raise ConfigError(
            f"model spec for {arch!r}: needs num_classes >= 2 and a valid input_shape, got "
            f"{num_classes} and {input_shape}"
        )
    try:
        module = factory(input_shape, num_classes, **spec)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ConfigError(f"model spec for {arch!r}: {e}") from None
    module.invguard_spec = {  # type: ignore[assignment]
        "arch": arch,
        "input_shape": list(input_shape),
        "num_classes": num_classes,
        **{k: list(v) if isinstance(v, tuple) else v for k, v in spec.items()},
    }
    return module


def spec_of(module: nn.Module) -> dict[str, Any]:
    spec = getattr(module, "invguard_spec", None)
    if spec is None:
        raise ConfigError("this module was not built by invguard.models.build; save its state_dict yourself")
    return dict(spec)
