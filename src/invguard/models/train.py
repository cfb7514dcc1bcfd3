"""Seeded, deterministic CPU training loops and named recipes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from invguard.core.errors import ConfigError

# recipe name -> training hyper-parameters
RECIPES: dict[str, dict[str, Any]] = {
    # a sensible, regularised model: what a careful team would ship
    "standard": {"epochs": 40, "lr": 1e-3, "weight_decay": 5e-4, "batch_size": 64},
    # trains to memorise its training set (no regularisation, many epochs): the realistic worst case
    "overfit": {"epochs": 150, "lr": 1e-3, "weight_decay": 0.0, "batch_size": 32},
    # a few epochs for tests
    "quick": {"epochs": 15, "lr": 3e-3, "weight_decay": 0.0, "batch_size": 64},
}


@dataclass(frozen=True)
class TrainReport:
    epochs: int
    train_accuracy: float
    final_loss: float
    recipe: str


def accuracy(module: nn.Module, X: np.ndarray, y: np.ndarray, batch_size: int = 2048) -> float:
    module.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(y), batch_size):
            out = module(torch.as_tensor(X[i : i + batch_size], dtype=torch.float32))
            correct += int((out.argmax(1).numpy() == y[i : i + batch_size]).sum())
    return correct / max(1, len(y))


def pgd_linf(
    module: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    steps: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """Untargeted projected gradient descent in an L-infinity ball of radius ``eps`` around ``x``,
    kept inside the [0, 1] box (Madry, Makelov, Schmidt, Tsipras & Vladu, "Towards Deep Learning
    Models Resistant to Adversarial Attacks", ICLR 2018): a uniform random start, then ``steps``
    signed-gradient ascent steps on the cross-entropy of size ``2.5 * eps / steps``, each projected
    back onto the ball and the box. Returns the perturbed inputs (detached); the module's mode and
    parameters' gradients are left as they were.
    """
    if eps <= 0 or steps < 1:
        return x
    alpha = 2.5 * eps / steps
    delta = (torch.rand(x.shape, generator=generator, dtype=x.dtype) * 2 - 1) * eps
    delta = ((x + delta).clamp(0, 1) - x).requires_grad_(True)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(steps):
        (grad,) = torch.autograd.grad(loss_fn(module(x + delta), y), delta)
        with torch.no_grad():
            delta += alpha * grad.sign()
            delta.clamp_(-eps, eps)
            delta.copy_((x + delta).clamp(0, 1) - x)
    return (x + delta).detach()


def train(
    module: nn.Module,
    X: np.ndarray,
    y: np.ndarray,
    *,
    recipe: str = "standard",
    seed: int = 0,
    progress: Callable[[int, int, float], None] | None = None,
    adversarial_eps: float = 0.0,
    adversarial_steps: int = 3,
    **overrides: Any,
) -> TrainReport:
    """Train ``module`` in place with Adam and cross-entropy; same seed, same weights.

    ``recipe`` picks defaults from :data:`RECIPES`; keyword overrides (``epochs``, ``lr``,
    ``weight_decay``, ``batch_size``) replace them. ``progress(epoch, epochs, loss)`` is called after
    each epoch. Bit-for-bit reproducibility also needs the same torch thread count
    (``torch.get_num_threads()``), which is recorded in a saved model's metadata.
    Initialisation is *not* reseeded here: seed it before ``build`` (see ``fit``).

    ``adversarial_eps`` > 0 trains adversarially (Madry et al., ICLR 2018): every batch is replaced
    by its :func:`pgd_linf` perturbation (``adversarial_steps`` steps) against the current weights.
    The radius grows linearly from ``eps / (epochs // 3)`` to ``eps`` over the first third of the
    epochs (a warm-up that keeps a small training set from collapsing to one class early on).
    """
    if recipe not in RECIPES:
        raise ConfigError(f"unknown training recipe {recipe!r}; expected one of {sorted(RECIPES)}")
    hp = {**RECIPES[recipe], **overrides}
    unknown = set(hp) - {"epochs", "lr", "weight_decay", "batch_size"}
    if unknown:
        raise ConfigError(f"unknown training parameters {sorted(unknown)}")
    epochs, bs, lr = int(hp["epochs"]), int(hp["batch_size"]), float(hp["lr"])
    if len(y) == 0:
        raise ConfigError("cannot train on an empty training set")
    if epochs < 1 or bs < 1 or not lr > 0 or float(hp["weight_decay"]) < 0:
        raise ConfigError(
            f"training needs epochs >= 1, batch_size >= 1, lr > 0 and weight_decay >= 0; got {hp}"
        )
    if len(X) != len(y):
        raise ConfigError(f"training data has {len(X)} samples but {len(y)} labels")
    if not adversarial_eps >= 0 or (adversarial_eps > 0 and adversarial_steps < 1):
        raise ConfigError(
            "adversarial training needs adversarial_eps >= 0 and adversarial_steps >= 1; got "
            f"{adversarial_eps} and {adversarial_steps}"
        )
    with torch.no_grad():
        try:
            width = int(module(torch.as_tensor(X[:1], dtype=torch.float32)).shape[-1])
        except RuntimeError as e:
            raise ConfigError(
                f"the model does not accept training samples of shape {tuple(X.shape[1:])}: {e}"
            ) from None
    if int(np.min(y)) < 0 or int(np.max(y)) >= width:
        raise ConfigError(
            f"labels must lie in [0, {width}) for a model with {width} outputs; got "
            f"[{int(np.min(y))}, {int(np.max(y))}]"
        )
    g = torch.Generator().manual_seed(seed)
    Xt = torch.as_tensor(X, dtype=torch.float32)
    yt = torch.as_tensor(y, dtype=torch.long)
    opt = torch.optim.Adam(module.parameters(), lr=float(hp["lr"]), weight_decay=float(hp["weight_decay"]))
    loss_fn = nn.CrossEntropyLoss()
    module.train()
    loss_value = float("nan")
    warmup = max(1, epochs // 3)
    for epoch in range(epochs):
        perm = torch.randperm(len(yt), generator=g)
        total, count = 0.0, 0
        eps = adversarial_eps * min(1.0, (epoch + 1) / warmup)
        for i in range(0, len(yt), bs):
            ix = perm[i : i + bs]
            xb = Xt[ix]
            if eps > 0:
                module.eval()
                xb = pgd_linf(module, xb, yt[ix], eps=eps, steps=adversarial_steps, generator=g)
                module.train()
            opt.zero_grad()
            loss = loss_fn(module(xb), yt[ix])
            loss.backward()
            opt.step()
            total += loss.item() * len(ix)
            count += len(ix)
        loss_value = total / count
        if progress is not None:
            progress(epoch + 1, epochs, loss_value)
    module.eval()
    return TrainReport(
        epochs=epochs, train_accuracy=accuracy(module, X, y), final_loss=loss_value, recipe=recipe
    )


def fit(
    spec: dict[str, Any],
    X: np.ndarray,
    y: np.ndarray,
    *,
    recipe: str = "standard",
    seed: int = 0,
    progress: Callable[[int, int, float], None] | None = None,
    **overrides: Any,
) -> tuple[nn.Module, TrainReport]:
    """Build ``spec`` with seeded initialisation and train it: the whole seeded recipe in one call."""
    from invguard.models.nets import build

    with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching the global RNG
        torch.manual_seed(seed)
        module = build(spec)
    report = train(module, X, y, recipe=recipe, seed=seed, progress=progress, **overrides)
    return module, report
