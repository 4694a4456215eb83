"""The root `imgsynth` typer app. Each command group lives in its own module and is registered here."""

from __future__ import annotations

import errno
import os
import pickle
import sys
import traceback
from importlib import metadata
from typing import Optional

import click
import typer
from PIL import Image

from imgsynth.cli import classify, curate, data, experiments
from imgsynth.cli import features as features_cli
from imgsynth.cli import generate as generate_cli
from imgsynth.cli import finetune as finetune_cli
from imgsynth.cli import metrics as metrics_cli
from imgsynth.cli import stats as stats_cli
from imgsynth.errors import TaskFailedError
from imgsynth.locking import FolderBusyError
from imgsynth.notes import NoteBoard
from imgsynth.terminal import NORMAL, VERBOSE, level_from_flags, use_verbosity
from imgsynth.outputs import discard_abandoned, forget_claims
from typer.core import TyperGroup

# `imgsynth --help` lists commands by workflow, in this order: a panel per step, commands in the order a user
# meets them. A command missing here is listed after these, in the default panel.
WORKFLOW: dict[str, tuple[str, ...]] = {
    "Data": ("data", "curate"),
    "Generate": ("train", "generate", "finetune"),
    "Evaluate": ("metrics", "stats", "features", "classify"),
    "Experiment": ("run", "dashboard"),
    "Provenance": ("lineage", "audit"),
}
# One line each command's help ends with (its epilog): a typical call.
EXAMPLES: dict[str, str] = {
    "data": "imgsynth data import digits sets/digits",
    "data import": "imgsynth data import digits sets/digits --size 16",
    "data info": "imgsynth data info sets/digits/train",
    "data verify": "imgsynth data verify sets/digits/train",
    "data export": "imgsynth data export sets/digits/train exports/digits --format parquet",
    "curate": "imgsynth curate runs/smoke/seed_0/gen_0/samples curated/gen0 --dedup",
    "train": "imgsynth train sets/digits/train models/digits --option preset=smoke",
    "generate": "imgsynth generate models/digits samples/digits --per-class 20",
    "finetune": "imgsynth finetune stabilityai/sd-turbo sets/kitchen loras/kitchen",
    "metrics": "imgsynth metrics sets/digits/test samples/digits --per-class",
    "stats": "imgsynth stats sets/digits/train stats/digits-train.npz --features pixels",
    "features": "imgsynth features sets/digits/test --features pixels",
    "classify": "imgsynth classify train samples/digits classifiers/digits",
    "classify train": "imgsynth classify train samples/digits classifiers/digits --epochs 3",
    "classify eval": "imgsynth classify eval classifiers/digits sets/digits/test",
    "run": "imgsynth run smoke --workers 2",
    "dashboard": "imgsynth dashboard runs/smoke runs/digits-collapse --out reports/both",
    "lineage": "imgsynth lineage runs/smoke/seed_0/replace/gen_2/samples",
    "audit": "imgsynth audit samples/digits --against runs/smoke",
}


def _workflow_rank(name: str) -> tuple[int, int]:
    for rank, names in enumerate(WORKFLOW.values()):
        if name in names:
            return rank, names.index(name)
    return len(WORKFLOW), 0


class WorkflowGroup(TyperGroup):
    """The root group: lists its commands in workflow order (``WORKFLOW``), so the help's panels follow it."""

    def list_commands(self, ctx: typer.Context) -> list[str]:  # type: ignore[override]
        return sorted(super().list_commands(ctx), key=_workflow_rank)  # stable: unknown ones keep their order


app = typer.Typer(help="Labeled synthetic image datasets and model-collapse experiments.", cls=WorkflowGroup,
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
stats_cli.register(app)
generate_cli.register(app)


def _label_commands(root: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    """Give every command its workflow panel and its example line (kept here, beside the wiring)."""
    panel_of = {name: panel for panel, names in WORKFLOW.items() for name in names}
    for info in root.registered_commands:
        info.rich_help_panel = panel_of.get(info.name or "", info.rich_help_panel)
        if info.name in EXAMPLES:
            info.epilog = f"Example: {EXAMPLES[info.name]}"
    for info in root.registered_groups:
        info.rich_help_panel = panel_of.get(info.name or "", info.rich_help_panel)
        if info.name in EXAMPLES:
            info.epilog = f"Example: {EXAMPLES[info.name]}"
    for group_name, group in groups.items():
        for info in group.registered_commands:
            name = info.name or (info.callback.__name__ if info.callback else "")
            example = EXAMPLES.get(f"{group_name} {name}")
            if example:
                info.epilog = f"Example: {example}"


_label_commands(app, {"data": data.app, "classify": classify.app})

DEBUG_VARIABLE = "IMGSYNTH_DEBUG"
# Exit statuses (the grep/diff convention): 2 = the input is wrong (the user can fix it and rerun),
# 1 = the command failed although its input was acceptable (a worker died, memory or disk ran out, a bug).
EXIT_USER_ERROR = 2
EXIT_FAILURE = 1
# OSErrors that say the machine ran out of something or broke, not that a path or permission is wrong.
FAILURE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.ENOMEM, errno.EIO, errno.EMFILE, errno.ENFILE})

# --debug of the invocation in progress; run_app resets it, so in-process callers (tests) never inherit it.
_options: dict[str, object] = {"debug": False, "board": None}


def _print_version(value: bool) -> None:
    if value:
        # Package metadata, not imports: `imgsynth --version` must not pay for importing torch.
        from imgsynth import __version__

        typer.echo(f"imgsynth {__version__}\ntorch {_distribution_version('torch')}")
        raise typer.Exit()


def _distribution_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


@app.callback()
def root_options(
    debug: bool = typer.Option(False, "--debug", help=f"On an error, show the traceback too (as {DEBUG_VARIABLE}=1 "
                               "does)."),
    version: Optional[bool] = typer.Option(None, "--version", callback=_print_version, is_eager=True,
                                           help="Print imgsynth's and torch's versions and exit."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Any command: print only notes (each once), errors "
                               "and results, no progress."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Any command: print every log line and each "
                                 "repeat of a note."),
) -> None:
    """Labeled synthetic image datasets and model-collapse experiments."""
    _options["debug"] = debug
    try:
        level = level_from_flags(quiet, verbose)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--quiet/--verbose") from None
    if level != NORMAL:  # for the command's length (the click context closes it)
        click.get_current_context().with_resource(use_verbosity(level))
    board = _options.get("board")
    if isinstance(board, NoteBoard):
        board.repeat = level >= VERBOSE


def _safetensors_error() -> type[BaseException] | None:
    try:
        from safetensors import SafetensorError
    except ImportError:  # pragma: no cover - a core dependency
        return None
    return SafetensorError


def _is_torch_out_of_memory(exc: BaseException) -> bool:
    torch = sys.modules.get("torch")  # only a command that imported torch can have run out of its memory
    return torch is not None and isinstance(exc, torch.OutOfMemoryError)


def error_line(exc: BaseException) -> str:
    """The text a user sees for an error (bad input, a busy folder, a full disk): what, and which file."""
    if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        if exc.errno == errno.ENOSPC:
            return (f"{where}no space left on the device; free some space and run the same command again "
                    "(finished shards and checkpoints are kept)")
        return f"{where}{exc.strerror}"
    if isinstance(exc, pickle.UnpicklingError):
        return f"refused to load a pickle-based file ({exc})"
    if isinstance(exc, MemoryError) or _is_torch_out_of_memory(exc):
        return "out of memory; use smaller images, batches or models"
    if isinstance(exc, UnicodeDecodeError):
        return f"a file is not UTF-8 text ({exc})"
    if isinstance(exc, Image.DecompressionBombError):
        return f"refused an image too large to decode safely ({exc})"
    safetensors_error = _safetensors_error()
    if safetensors_error is not None and isinstance(exc, safetensors_error):
        return f"not a readable safetensors weights file ({exc})"
    return str(exc) or type(exc).__name__


def exit_status(exc: BaseException) -> int | None:
    """2 for an error in the user's input, 1 for a failure to finish, ``None`` for anything unexpected (a bug).

    User errors: every ``ValueError`` (which covers ImageSetError, RecipeError, ClassifierError,
    ``json.JSONDecodeError``, ``tomllib.TOMLDecodeError`` and ``UnicodeDecodeError``), a missing file or a
    path the user may not use (``OSError`` but for the errnos of FAILURE_ERRNOS, and the errno-less
    OSErrors PIL raises for unreadable images, ``UnidentifiedImageError`` included), a folder another
    process is writing (FolderBusyError: wait or pick another), a pickle or an over-large image handed in
    (``UnpicklingError``, ``DecompressionBombError``), an unreadable safetensors file. Failures: a task
    whose worker died (TaskFailedError), memory or disk running out, an I/O error of the device.
    """
    if isinstance(exc, (TaskFailedError, MemoryError)) or _is_torch_out_of_memory(exc):
        return EXIT_FAILURE
    if isinstance(exc, OSError):
        return EXIT_FAILURE if exc.errno in FAILURE_ERRNOS else EXIT_USER_ERROR
    user_types: tuple[type[BaseException], ...] = (ValueError, FolderBusyError, pickle.UnpicklingError,
                                                   Image.DecompressionBombError)
    safetensors_error = _safetensors_error()
    if safetensors_error is not None:
        user_types += (safetensors_error,)
    return EXIT_USER_ERROR if isinstance(exc, user_types) else None


def run_app(typer_app: typer.Typer) -> None:
    """Run a Typer app so that every error a user can cause or fix prints one ``error:`` line on stderr.

    Exit status 2: the input is wrong — a bad argument (typer's usage errors), a file or set that cannot be
    read, a bad recipe or ``--set`` override, a folder in use (see ``exit_status`` for the exact types).
    Exit status 1: the command failed though its input was acceptable — a task whose worker died, memory or
    disk ran out; and any unexpected exception, which is a bug and keeps Python's traceback for the report.
    (Checks that ran and found problems, ``data verify`` and ``lineage --strict``, exit 1 by themselves.)
    ``--debug`` (root option) or ``IMGSYNTH_DEBUG=1`` prints the traceback above the error line too.

    Warnings of imgsynth's :class:`imgsynth.notes.Note` category (skipped metrics, biased estimates, a
    class left empty) print as one ``note: <message>`` line each, each distinct one once (a
    :class:`imgsynth.notes.NoteBoard`; with ``--verbose`` every time), and a note raised again and again ends
    the command with one line saying how many more times it applied. Only that category: other libraries'
    UserWarnings speak about their own code, not the user's data, and printed as a bare note they would
    read as imgsynth's; they keep Python's format (deprecation noise stays hidden by Python's filters).
    """
    _options["debug"] = False
    forget_claims()
    board = NoteBoard()
    _options["board"] = board
    with board.collecting():
        try:
            try:
                typer_app()
            finally:
                for line in board.summary_lines():  # the notes raised more than once, with their counts
                    typer.echo(line, err=True)
        except Exception as exc:  # noqa: BLE001 - sorted into user errors, failures and bugs below
            discard_abandoned()  # what a failed command began and no rerun resumes from (imgsynth.outputs)
            status = exit_status(exc)
            if status is None:
                raise
            if _options["debug"] or os.environ.get(DEBUG_VARIABLE, "") not in ("", "0"):
                traceback.print_exc()
            first, *rest = error_line(exc).splitlines() or [""]
            typer.secho(f"error: {first}", fg=typer.colors.RED, err=True)
            for line in rest:  # e.g. a verify report's problems, one per line
                typer.echo(f"  {line}", err=True)
            sys.exit(status)


def main() -> None:
    """Console entry point (``imgsynth``)."""
    run_app(app)


if __name__ == "__main__":
    main()
