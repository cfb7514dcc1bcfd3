"""Small end-to-end workflows that the CLI exposes (training a model, the access-level tour)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn


def training_progress(console: Console) -> tuple[Progress, Any]:
    """A rich progress bar and the ``progress(epoch, epochs, loss)`` callback that drives it."""
    bar = Progress(
        TextColumn("[bold]training[/]"),
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
    *, dataset: str, arch: str, recipe: str, seed: int, output: Path, label: str | None, console: Console
) -> dict[str, Any]:
    from invguard import data, models
    from invguard.models.train import fit

    kw: dict[str, Any] = {"label": label} if label else {}
    splits = data.load(dataset, seed=seed, **kw)
    spec = {"arch": arch, "input_shape": list(splits.input_shape), "num_classes": splits.num_classes}
    bar, cb = training_progress(console)
    with bar:
        module, report = fit(spec, splits.members.X, splits.members.y, recipe=recipe, seed=seed, progress=cb)
    test_acc = models.accuracy(module, splits.nonmembers.X, splits.nonmembers.y)
    models.save(
        module,
        output,
        meta={"dataset": dataset, "seed": seed, "recipe": recipe, "splits": splits.provenance()},
    )
    console.print(
        f"trained {arch} on {dataset} ({len(splits.members)} members, recipe {recipe}): "
        f"train accuracy {report.train_accuracy:.3f}, held-out accuracy {test_acc:.3f}"
    )
    console.print(f"saved to {output}")
    return {"train_accuracy": report.train_accuracy, "test_accuracy": test_acc}
