"""The root `imgsynth` typer app. Each command group lives in its own module and is registered here."""

from __future__ import annotations

import sys

import typer

from imgsynth.cli import classify, curate, data, experiments
from imgsynth.cli import features as features_cli
from imgsynth.cli import generate as generate_cli
from imgsynth.cli import finetune as finetune_cli
from imgsynth.cli import metrics as metrics_cli
from imgsynth.imageset import ImageSetError

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


def run_app(typer_app: typer.Typer) -> None:
    """Run a Typer app so that user errors print one clear line to stderr and exit with status 1."""
    try:
        typer_app()
    except (ImageSetError, FileNotFoundError, ValueError) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(1)


def main() -> None:
    """Console entry point (``imgsynth``)."""
    run_app(app)


if __name__ == "__main__":
    main()
