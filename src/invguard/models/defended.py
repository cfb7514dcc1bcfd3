"""Defended training: DP-SGD through Opacus, and the regularisers a team reaches for first.

A :class:`Defence` is a frozen, validated description (every problem reported at once) of how an
invguard-built model is trained: differentially private SGD (Abadi et al., "Deep Learning with
Differential Privacy", CCS 2016) through Opacus' ``make_private_with_epsilon`` with a target
``(epsilon, delta)``, a per-sample gradient clipping norm, Poisson sampling of the batches and the
RDP (Mironov 2017) or PRV (Gopi, Lee & Wutschitz 2021) accountant; and weight decay, label
smoothing, augmentation (random one-pixel shifts, optionally mirror images) and early stopping on
a held-out part of the training set. :func:`fit_defended` trains one and returns the module and a
:class:`DefendedReport` whose ``privacy`` block (epsilon actually spent, delta, accountant, noise
multiplier, sampling rate, steps) is what :func:`invguard.models.save` writes into the model's
metadata, so every report about the model can state it.

Opacus needs a per-sample gradient for every trainable layer: BatchNorm mixes samples (use
GroupNorm: ``cnn`` with ``norm="group"``) and layers Opacus has no grad sampler for are refused by
:func:`check_dp_compatible` with the layer's path and type.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch
from torch import nn

from invguard.core.errors import ConfigError
from invguard.metrics.privacy import describe_privacy
from invguard.models.train import RECIPES, accuracy

__all__ = [
    "Defence",
    "DefendedReport",
    "check_dp_compatible",
    "describe_privacy",
    "fit_defended",
    "noise_multiplier",
    "train_defended",
]

ACCOUNTANTS = ("rdp", "prv")
AUGMENTATIONS = ("none", "shift", "flip_shift")


@dataclass(frozen=True)
class Defence:
    """How a model is defended in training (all optional; the default is no defence).

    ``epsilon``: the DP-SGD target (``None`` or ``inf``: no DP); ``delta`` (default ``1 / (10 n)``
    for ``n`` training records, below the ``1/n`` at which DP is meaningless); ``max_grad_norm``:
    the per-sample clipping norm; ``accountant``: ``rdp`` or ``prv``; ``poisson``: Poisson sampling
    (the assumption of the accountants; ``False`` is reported as such). ``weight_decay`` replaces
    the recipe's; ``label_smoothing`` in [0, 1); ``augment``: ``none``, ``shift`` or
    ``flip_shift``; ``early_stopping``: patience in epochs on a held-out ``holdout`` fraction of
    the training set (``None``: train every epoch). ``recipe`` and ``epochs``/``lr``/``batch_size``
    pick the optimiser settings (DP-SGD usually wants larger batches and learning rates).
    """

    epsilon: float | None = None
    delta: float | None = None
    max_grad_norm: float = 1.0
    accountant: str = "rdp"
    poisson: bool = True
    weight_decay: float | None = None
    label_smoothing: float = 0.0
    augment: str = "none"
    early_stopping: int | None = None
    holdout: float = 0.1
    recipe: str = "standard"
    epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None

    def __post_init__(self) -> None:
        if self.epsilon is not None and math.isinf(self.epsilon):
            object.__setattr__(self, "epsilon", None)
        problems = self.problems()
        if problems:
            raise ConfigError("defence: " + "; ".join(problems))

    def problems(self) -> list[str]:
        p = []
        if self.epsilon is not None and not self.epsilon > 0:
            p.append(f"epsilon must be > 0 (or inf for no DP), got {self.epsilon}")
        if self.delta is not None and not 0 < self.delta < 1:
            p.append(f"delta must be in (0, 1), got {self.delta}")
        if not self.max_grad_norm > 0:
            p.append(f"max_grad_norm must be > 0, got {self.max_grad_norm}")
        if self.accountant not in ACCOUNTANTS:
            p.append(f"accountant must be one of {list(ACCOUNTANTS)}, got {self.accountant!r}")
        if self.weight_decay is not None and self.weight_decay < 0:
            p.append(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.label_smoothing < 1:
            p.append(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.augment not in AUGMENTATIONS:
            p.append(f"augment must be one of {list(AUGMENTATIONS)}, got {self.augment!r}")
        if self.early_stopping is not None and self.early_stopping < 1:
            p.append(f"early_stopping (patience in epochs) must be >= 1, got {self.early_stopping}")
        if not 0 < self.holdout < 0.5:
            p.append(f"holdout must be in (0, 0.5), got {self.holdout}")
        if self.recipe not in RECIPES:
            p.append(f"recipe must be one of {sorted(RECIPES)}, got {self.recipe!r}")
        for name in ("epochs", "batch_size"):
            v = getattr(self, name)
            if v is not None and v < 1:
                p.append(f"{name} must be >= 1, got {v}")
        if self.lr is not None and not self.lr > 0:
            p.append(f"lr must be > 0, got {self.lr}")
        return p

    @property
    def private(self) -> bool:
        return self.epsilon is not None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, where: str = "defence") -> Defence:
        """Build from a config mapping; unknown keys are named (with ``where``) with the known ones."""
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown keys {unknown}; known: {sorted(known)}")
        if isinstance(d.get("epsilon"), str):
            try:
                d["epsilon"] = float(d["epsilon"])
            except ValueError:
                raise ConfigError(
                    f"{where}.epsilon: expected a number or inf, got {d['epsilon']!r}"
                ) from None
        try:
            return cls(**d)
        except ConfigError as e:
            raise ConfigError(f"{where}: {str(e).removeprefix('defence: ')}") from None
        except TypeError as e:
            raise ConfigError(f"{where}: {e}") from None

    @classmethod
    def parse(cls, text: str, where: str = "--defence") -> Defence:
        """``"epsilon=4 max_grad_norm=1 accountant=prv early_stopping=5"`` (the CLI's form)."""
        d: dict[str, Any] = {}
        for tok in text.replace(",", " ").split():
            if "=" not in tok:
                raise ConfigError(f"{where}: expected key=value pairs, got {tok!r}")
            k, v = tok.split("=", 1)
            d[k.strip()] = _scalar(v.strip())
        return cls.from_dict(d, where)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["epsilon"] = self.epsilon if self.epsilon is not None else "inf"
        return out

    def label(self) -> str:
        parts = [f"eps={self.epsilon:g}" if self.epsilon is not None else "non-private"]
        if self.weight_decay is not None:
            parts.append(f"wd={self.weight_decay:g}")
        if self.label_smoothing:
            parts.append(f"ls={self.label_smoothing:g}")
        if self.augment != "none":
            parts.append(self.augment)
        if self.early_stopping is not None:
            parts.append(f"early_stop={self.early_stopping}")
        return " ".join(parts)


def _scalar(v: str) -> Any:
    low = v.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


@dataclass(frozen=True)
class DefendedReport:
    """What defended training did: accuracy, epochs run, cost and the privacy spent."""

    epochs: int
    epochs_planned: int
    train_accuracy: float
    final_loss: float
    recipe: str
    defence: dict[str, Any]
    privacy: dict[str, Any] | None
    wall_time_s: float
    cpu_time_s: float
    holdout_accuracy: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def meta(self) -> dict[str, Any]:
        """The model-file metadata: recipe, defence, privacy spent (or ``None``) and cost."""
        return {
            "recipe": self.recipe,
            "defence": self.defence,
            "privacy": self.privacy,
            "train_accuracy": self.train_accuracy,
            "epochs": self.epochs,
            "training_wall_time_s": self.wall_time_s,
            "training_cpu_time_s": self.cpu_time_s,
        }


def check_dp_compatible(module: nn.Module) -> None:
    """Refuse, naming the layer, a module DP-SGD cannot train with per-sample gradients."""
    from opacus import GradSampleModule

    supported = tuple(GradSampleModule.GRAD_SAMPLERS)
    problems = []
    for name, sub in module.named_modules():
        where = f"layer {name!r}" if name else "the model itself"
        if isinstance(sub, nn.modules.batchnorm._BatchNorm):
            problems.append(
                f"{where} ({type(sub).__name__}) mixes the samples of a batch, so no per-sample "
                "gradient exists; use GroupNorm (the cnn architecture takes norm='group')"
            )
            continue
        own = [p for p in sub.parameters(recurse=False) if p.requires_grad]
        if own and not isinstance(sub, supported):
            problems.append(
                f"{where} ({type(sub).__name__}) has trainable parameters but Opacus has no per-sample "
                f"gradient for it; supported layers: {', '.join(sorted(c.__name__ for c in supported))}"
            )
    if problems:
        raise ConfigError("DP-SGD (Opacus) cannot train this model: " + "; ".join(problems))


def _augment(x: torch.Tensor, kind: str, g: torch.Generator) -> torch.Tensor:
    """Random one-pixel translations (zero filled), and mirror images for ``flip_shift``."""
    if kind == "none" or x.ndim != 4:
        return x
    n = x.shape[0]
    dy = torch.randint(-1, 2, (n,), generator=g)
    dx = torch.randint(-1, 2, (n,), generator=g)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    h, w = x.shape[-2:]
    rows = (torch.arange(h)[None, :] + 1 - dy[:, None]).clamp(0, h + 1)
    cols = (torch.arange(w)[None, :] + 1 - dx[:, None]).clamp(0, w + 1)
    idx = torch.arange(n)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    if kind == "flip_shift":
        flip = torch.rand(n, generator=g) < 0.5
        out = torch.where(flip[:, None, None, None], out.flip(-1), out)
    return out.contiguous()


def _holdout_split(y: np.ndarray, frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, 2029])
    order = rng.permutation(len(y))
    k = max(1, round(frac * len(y)))
    return np.sort(order[k:]), np.sort(order[:k])


def train_defended(
    module: nn.Module,
    X: np.ndarray,
    y: np.ndarray,
    defence: Defence,
    *,
    seed: int = 0,
    progress: Callable[[int, int, float], None] | None = None,
) -> DefendedReport:
    """Train ``module`` in place under ``defence``; same seed, same weights (and same noise)."""
    t_wall, t_cpu = time.perf_counter(), time.process_time()
    hp = dict(RECIPES[defence.recipe])
    for k in ("epochs", "lr", "batch_size", "weight_decay"):
        if getattr(defence, k) is not None:
            hp[k] = getattr(defence, k)
    epochs, bs, lr, wd = int(hp["epochs"]), int(hp["batch_size"]), float(hp["lr"]), float(hp["weight_decay"])
    if len(y) == 0:
        raise ConfigError("cannot train on an empty training set")
    if len(X) != len(y):
        raise ConfigError(f"training data has {len(X)} samples but {len(y)} labels")
    if defence.private:
        check_dp_compatible(module)
    train_idx = np.arange(len(y))
    hold_idx = np.zeros(0, dtype=np.int64)
    if defence.early_stopping is not None:
        train_idx, hold_idx = _holdout_split(y, defence.holdout, seed)
    Xt = torch.as_tensor(X[train_idx], dtype=torch.float32)
    yt = torch.as_tensor(y[train_idx], dtype=torch.long)
    n = len(yt)
    g = torch.Generator().manual_seed(seed)
    aug_g = torch.Generator().manual_seed(seed + 1)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=defence.label_smoothing)
    opt: torch.optim.Optimizer = torch.optim.Adam(module.parameters(), lr=lr, weight_decay=wd)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(Xt, yt), batch_size=min(bs, n), shuffle=True, generator=g
    )
    engine = None
    delta = defence.delta if defence.delta is not None else 1.0 / (10 * n)
    train_module: nn.Module = module
    if defence.private:
        from opacus import PrivacyEngine

        assert defence.epsilon is not None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # secure-RNG advice: seeded runs are the point here
            engine = PrivacyEngine(accountant=defence.accountant)
            sigma = noise_multiplier(
                float(defence.epsilon), delta, 1.0 / len(loader), epochs, defence.accountant
            )
            train_module, opt, loader = engine.make_private(
                module=module,
                optimizer=opt,
                data_loader=loader,
                noise_multiplier=sigma,
                max_grad_norm=defence.max_grad_norm,
                poisson_sampling=defence.poisson,
                noise_generator=torch.Generator().manual_seed(seed + 2),
            )
    best_state: dict[str, torch.Tensor] | None = None
    best_loss, since_best = math.inf, 0
    loss_value = float("nan")
    epochs_run = 0
    Xh = torch.as_tensor(X[hold_idx], dtype=torch.float32)
    yh = torch.as_tensor(y[hold_idx], dtype=torch.long)
    try:
        for epoch in range(epochs):
            train_module.train()
            total, count = 0.0, 0
            for xb, yb in loader:
                if len(yb) == 0:  # Poisson sampling may draw an empty batch
                    continue
                xb = _augment(xb, defence.augment, aug_g)
                opt.zero_grad()
                loss = loss_fn(train_module(xb), yb)
                with warnings.catch_warnings():  # Opacus' hooks fire on inputs that need no grad
                    warnings.filterwarnings("ignore", message="Full backward hook", category=UserWarning)
                    loss.backward()
                opt.step()
                total += float(loss.item()) * len(yb)
                count += len(yb)
            loss_value = total / max(1, count)
            epochs_run = epoch + 1
            if progress is not None:
                progress(epoch + 1, epochs, loss_value)
            if defence.early_stopping is not None:
                module.eval()
                with torch.no_grad():
                    held = float(nn.functional.cross_entropy(module(Xh), yh).item())
                if held < best_loss - 1e-6:
                    best_loss, since_best = held, 0
                    best_state = copy.deepcopy(module.state_dict())
                else:
                    since_best += 1
                    if since_best >= defence.early_stopping:
                        break
    finally:
        if engine is not None:
            train_module.remove_hooks()  # type: ignore[operator]
            for p in module.parameters():
                p.grad_sample = None  # type: ignore[attr-defined]
    if best_state is not None:
        module.load_state_dict(best_state)
    module.eval()
    privacy = None
    if engine is not None:
        steps = sum(int(h[2]) for h in engine.accountant.history)
        privacy = {
            "mechanism": "DP-SGD (Opacus)",
            "epsilon": _spent(engine, delta, defence.accountant),
            "target_epsilon": float(defence.epsilon),  # type: ignore[arg-type]
            "delta": float(delta),
            "accountant": defence.accountant,
            "calibration": "opacus get_noise_multiplier + make_private",
            "noise_multiplier": float(opt.noise_multiplier),  # type: ignore[attr-defined]
            "sample_rate": float(1.0 / len(loader)),
            "steps": steps,
            "epochs": epochs_run,
            "max_grad_norm": float(defence.max_grad_norm),
            "poisson_sampling": bool(defence.poisson),
            "training_records": int(n),
        }
    hold_acc = accuracy(module, X[hold_idx], y[hold_idx]) if len(hold_idx) else None
    return DefendedReport(
        epochs=epochs_run,
        epochs_planned=epochs,
        train_accuracy=accuracy(module, X[train_idx], y[train_idx]),
        final_loss=loss_value,
        recipe=defence.recipe,
        defence=defence.to_json(),
        privacy=privacy,
        wall_time_s=time.perf_counter() - t_wall,
        cpu_time_s=time.process_time() - t_cpu,
        holdout_accuracy=hold_acc,
    )


RDP_ORDERS: tuple[float, ...] = (1.25, 1.5, 1.75, *range(2, 64), 80.0, 128.0, 256.0)


def _accountant_kw(accountant: str) -> dict[str, Any]:
    return {"alphas": list(RDP_ORDERS)} if accountant == "rdp" else {}


def noise_multiplier(epsilon: float, delta: float, sample_rate: float, epochs: int, accountant: str) -> float:
    """The smallest noise multiplier (to 0.01 in epsilon) that keeps ``epochs`` of Poisson-sampled
    DP-SGD at ``sample_rate`` within ``(epsilon, delta)`` by Opacus' accountant.

    This is the calibration of Opacus' ``make_private_with_epsilon`` (``get_noise_multiplier``);
    it is called here so that the RDP accountant searches :data:`RDP_ORDERS` (integer orders and a
    few fractional ones below 2), whose conversion is exact arithmetic rather than Opacus' default
    grid of fractional orders, each a slow series: about six times cheaper, and any set of orders
    gives a valid bound (the default grid's can be up to a few percent tighter).
    """
    from opacus.accountants.utils import get_noise_multiplier

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return float(
                get_noise_multiplier(
                    target_epsilon=epsilon,
                    target_delta=delta,
                    sample_rate=sample_rate,
                    epochs=epochs,
                    accountant=accountant,
                    **_accountant_kw(accountant),
                )
            )
        except ValueError as e:
            raise ConfigError(
                f"defence: epsilon {epsilon:g} at delta {delta:g} is out of reach for {epochs} epochs at "
                f"sampling rate {sample_rate:.3g} ({e}); raise epsilon or lower epochs/batch_size"
            ) from None


def _spent(engine: Any, delta: float, accountant: str) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "optimal order is the largest alpha": a valid, looser bound
        return float(engine.accountant.get_epsilon(delta, **_accountant_kw(accountant)))


def fit_defended(
    spec: dict[str, Any],
    X: np.ndarray,
    y: np.ndarray,
    defence: Defence,
    *,
    seed: int = 0,
    progress: Callable[[int, int, float], None] | None = None,
) -> tuple[nn.Module, DefendedReport]:
    """Build ``spec`` with seeded initialisation and train it under ``defence``."""
    from invguard.models.nets import build

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = build(spec)
    report = train_defended(module, X, y, defence, seed=seed, progress=progress)
    return module, report
