"""The root `imgsynth` typer app. Each command group lives in its own module and is registered here."""

from __future__ import annotations

import errno
import os
import pickle
import sys

import typer

from imgsynth.cli import classify, curate, data, experiments
from imgsynth.cli import features as features_cli
from imgsynth.cli import generate as generate_cli
from imgsynth.cli import finetune as finetune_cli
from imgsynth.cli import metrics as metrics_cli
from imgsynth.errors import TaskFailedError
from imgsynth.imageset import ImageSetError
from imgsynth.locking import FolderBusyError

app = typer.Typer(help="Labeled synthetic image datasets and model-collapse experiments.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)

# One line per command module; keep this list the only place commands are wired in.
app.add_typer(data.app, name="data", help="Import, inspect, verify and export ImageSets.")
data.register(app)
app.add_typer(classify.app, name="classify", help="Train classifiers on ImageSets and score them on test sets.")
experiments.register(app)
curate.register(app)
finetune_cli.register(app)
metrics_cli.register(app)
features_cli.register(app)
generate_cli.register(app)


def error_line(exc: BaseException) -> str:
    """The one line a user sees for an error they can cause or fix (bad input, a busy folder, a full disk)."""
    if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        if exc.errno == errno.ENOSPC:
            return (f"{where}no space left on the device; free some space and run the same command again "
                    "(finished shards and checkpoints are kept)")
        return f"{where}{exc.strerror}"
    if isinstance(exc, pickle.UnpicklingError):
        return f"refused to load a pickle-based file ({exc})"
    if isinstance(exc, MemoryError):
        return "out of memory; use smaller images, batches or models"
    return str(exc) or type(exc).__name__


USER_ERRORS = (ImageSetError, ValueError, FolderBusyError, TaskFailedError, OSError, pickle.UnpicklingError,
               MemoryError)


def run_app(typer_app: typer.Typer) -> None:
    """Run a Typer app so that user errors print one clear line to stderr and exit with status 1.

    Set ``IMGSYNTH_DEBUG=1`` to see the traceback instead.
    """
    try:
        typer_app()
    except USER_ERRORS as exc:
        if os.environ.get("IMGSYNTH_DEBUG"):
            raise
        first, *rest = error_line(exc).splitlines() or [""]
        typer.secho(f"error: {first}", fg=typer.colors.RED, err=True)
        for line in rest:  # e.g. a verify report's problems, one per line
            typer.echo(f"  {line}", err=True)
        sys.exit(1)


def main() -> None:
    """Console entry point (``imgsynth``)."""
    run_app(app)


if __name__ == "__main__":
    main()
