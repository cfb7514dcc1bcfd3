"""The ``invguard`` command line: a thin typer layer over the library (no logic of its own).

Exit codes: 0 success / all gates pass, 1 a gate failed, 2 usage or config error, 3 target
unreachable. A user error prints a message, never a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(
    name="invguard",
    help="Find and stop model-inversion leaks: audit what a model gives away, guard it in production.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True, soft_wrap=True)  # error lines stay whole in logs
out = Console()


def _fail(e: Exception) -> None:
    from invguard.core.errors import InvguardError

    code = e.exit_code if isinstance(e, InvguardError) else 2
    console.print(f"[bold red]error:[/] {e}", highlight=False)
    raise typer.Exit(code)


@app.command()
def version() -> None:
    """Print the invguard version."""
    from invguard import __version__

    out.print(f"invguard {__version__}")


@app.command()
def train(
    dataset: Annotated[
        str, typer.Option(help="Dataset name (digits, mnist5k, adult) or a .npz/.csv/folder path.")
    ] = "digits",
    arch: Annotated[str, typer.Option(help="Architecture: mlp or cnn.")] = "mlp",
    recipe: Annotated[str, typer.Option(help="Training recipe: standard, overfit or quick.")] = "standard",
    seed: Annotated[int, typer.Option(help="Seed for the split and the training.")] = 0,
    output: Annotated[Path, typer.Option("--out", "-o", help="Where to write the model file.")] = Path(
        "model.pt"
    ),
    label: Annotated[str | None, typer.Option(help="Label column, for a CSV dataset.")] = None,
) -> None:
    """Train a reference model on the members split of a dataset and save it."""
    from invguard.core.errors import InvguardError
    from invguard.workflows import train_model

    try:
        train_model(
            dataset=dataset, arch=arch, recipe=recipe, seed=seed, output=output, label=label, console=out
        )
    except InvguardError as e:
        _fail(e)


@app.command()
def demo(
    seed: Annotated[int, typer.Option(help="Seed for the split and the training.")] = 0,
) -> None:
    """Train the bundled digits model and show what each access level gives an attacker."""
    from invguard import data, models
    from invguard.core.errors import InvguardError
    from invguard.models.train import fit
    from invguard.workflows import access_tour, training_progress

    try:
        splits = data.load("digits", seed=seed)
        spec = {
            "arch": "mlp",
            "hidden": [128],
            "input_shape": list(splits.input_shape),
            "num_classes": splits.num_classes,
        }
        bar, cb = training_progress(out)
        with bar:
            module, report = fit(
                spec, splits.members.X, splits.members.y, recipe="standard", seed=seed, progress=cb
            )
        test_acc = models.accuracy(module, splits.nonmembers.X, splits.nonmembers.y)
        out.print(
            f"digits MLP: train accuracy {report.train_accuracy:.3f} on {len(splits.members)} members, "
            f"held-out accuracy {test_acc:.3f} on {len(splits.nonmembers)} non-members"
        )
        access_tour(module, splits, out)
    except InvguardError as e:
        _fail(e)


def main() -> None:
    """Entry point of the ``invguard`` script.

    User errors are reported by the commands (exit 2 or 3). Anything else is a bug: it gets a
    one-line message and exit code 4, and the traceback with ``INVGUARD_DEBUG=1``.
    """
    import os

    try:
        app()
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        sys.exit(130)
    except OSError as e:
        console.print(f"[bold red]error:[/] {e}", highlight=False)
        sys.exit(2)
    except Exception as e:
        if os.environ.get("INVGUARD_DEBUG"):
            raise
        console.print(
            f"[bold red]internal error[/] ({type(e).__name__}: {e}). This is a bug in invguard; rerun with "
            "INVGUARD_DEBUG=1 for the traceback and please report it.",
            highlight=False,
        )
        sys.exit(4)


if __name__ == "__main__":
    main()
