"""Small end-to-end workflows that the CLI exposes (training a model, the access-level tour)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn


def training_progress(console: Console, label: str = "training") -> tuple[Any, Any]:
    """A rich progress bar and the ``progress(epoch, epochs, loss)`` callback that drives it.

    When the console is not a terminal (a CI log, a pipe) a live bar would show nothing, so a line
    is printed every tenth of the epochs instead."""
    if not console.is_terminal:

        def line(epoch: int, epochs: int, loss: float) -> None:
            if epoch == 1 or epoch == epochs or epoch % max(1, epochs // 10) == 0:
                console.print(f"{label}: epoch {epoch}/{epochs}, loss {loss:.4f}", highlight=False)

        return contextlib.nullcontext(), line
    bar = Progress(
        TextColumn(f"[bold]{label}[/]"),
        BarColumn(),
        TextColumn("epoch {task.completed}/{task.total}"),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    task = bar.add_task("train", total=1, loss=float("nan"))

    def cb(epoch: int, epochs: int, loss: float) -> None:
        bar.update(task, completed=epoch, total=epochs, loss=loss)

    return bar, cb


def train_model(
    *,
    dataset: str,
    arch: str,
    recipe: str,
    seed: int,
    output: Path,
    label: str | None,
    console: Console,
    defence: str | None = None,
    history: Path | None = None,
    name: str | None = None,
    clock: Any = None,
) -> dict[str, Any]:
    """Train on the members split and save; with ``defence`` (``"epsilon=4 max_grad_norm=1 ..."``)
    the training is defended (:mod:`invguard.models.defended`), the privacy spent goes into the
    model's metadata and, for a DP model, into the privacy-budget ledger of ``history``."""
    import hashlib
    import time

    from invguard import data, models
    from invguard.models.train import fit

    kw: dict[str, Any] = {"label": label} if label else {}
    splits = data.load(dataset, seed=seed, **kw)
    spec = {"arch": arch, "input_shape": list(splits.input_shape), "num_classes": splits.num_classes}
    console.print(
        f"training {arch} on {dataset} ({len(splits.members)} members, recipe {recipe})", highlight=False
    )
    bar, cb = training_progress(console)
    meta: dict[str, Any] = {"dataset": dataset, "seed": seed, "recipe": recipe, "splits": splits.provenance()}
    privacy = None
    if defence is not None:
        from invguard.models.defended import Defence, describe_privacy, fit_defended

        d = Defence.parse(defence if "recipe=" in defence else f"recipe={recipe} {defence}")
        with bar:
            module, rep = fit_defended(spec, splits.members.X, splits.members.y, d, seed=seed, progress=cb)
        train_acc = rep.train_accuracy
        meta.update(rep.meta())
        privacy = rep.privacy
    else:
        with bar:
            module, report = fit(
                spec, splits.members.X, splits.members.y, recipe=recipe, seed=seed, progress=cb
            )
        train_acc = report.train_accuracy
    test_acc = models.accuracy(module, splits.nonmembers.X, splits.nonmembers.y)
    models.save(module, output, meta=meta)
    console.print(
        f"trained {arch} on {dataset} ({len(splits.members)} members, recipe {meta['recipe']}): "
        f"train accuracy {train_acc:.3f}, held-out accuracy {test_acc:.3f}"
    )
    out: dict[str, Any] = {"train_accuracy": train_acc, "test_accuracy": test_acc, "privacy": privacy}
    if defence is not None:
        console.print(describe_privacy(privacy))
    if privacy is not None and history is not None:
        from invguard.audit.history import record_privacy

        version = hashlib.sha256(Path(output).read_bytes()).hexdigest()[:16]
        ds = f"{splits.dataset.name}@{splits.dataset.fingerprint()[:12]}"
        budget = record_privacy(
            Path(history),
            model=name or Path(output).stem,
            version=version,
            dataset=ds,
            privacy=privacy,
            recorded_at=(clock or time.time)(),
        )
        out["budget"] = budget
        console.print(
            f"privacy ledger {history}: {len(budget['entries'])} DP training(s) on {ds} have spent "
            f"epsilon {budget['epsilon']:.3g}, delta {budget['delta']:.2g} in total (basic composition)"
        )
    console.print(f"saved to {output}")
    return out


def export_model_onnx(model: str, output: Path, *, console: Console) -> Path:
    """Export an invguard model file (or ``reference/NAME``) to ONNX and check that onnxruntime
    gives the same logits as torch on a few inputs."""
    import numpy as np
    import torch

    from invguard import models
    from invguard.core.errors import TargetError
    from invguard.targets.onnx import OnnxTarget, export_onnx

    module = models.load(model)
    spec = getattr(module, "invguard_spec", None) or {}
    shape = tuple(int(d) for d in spec.get("input_shape", ()))
    if not shape:
        from invguard.core.errors import ConfigError

        raise ConfigError(f"{model}: not an invguard-built model (no architecture spec to export)")
    export_onnx(module, output, input_shape=shape)
    x = np.random.default_rng(0).random((4, *shape)).astype(np.float32)
    with torch.no_grad():
        want = module(torch.from_numpy(x)).double().numpy()
    target = OnnxTarget(output)
    got = target.predict(x).logits
    if got is None or not np.allclose(got, want, atol=1e-4):
        raise TargetError(f"{output}: onnxruntime's logits differ from the torch model's")
    console.print(f"exported {model} to {output} (input shape {shape}; {target.describe()} on a device)")
    return output
