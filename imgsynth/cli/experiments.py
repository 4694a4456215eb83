"""`imgsynth run` (recursive-generation experiments) and `imgsynth dashboard` (reports, run comparison)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, List, Optional

import typer

if TYPE_CHECKING:
    from imgsynth.notes import NoteBoard

# Heavy modules (torch, matplotlib) are imported inside the commands so `imgsynth --help` stays quick.


def run_command(
    target: Optional[str] = typer.Argument(None, help="Recipe file, shipped recipe name, or a run folder to "
                                                      "continue. Default: the digits-collapse recipe."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder (default runs/<recipe name>)."),
    overrides: List[str] = typer.Option([], "--set", help="Override a recipe field: section.field=value (on a "
                                        "started run only loop.seeds, to add replicates)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Chains run at once: local worker "
                                          "processes, or Ray tasks (default: one per CPU core)."),
    backend: str = typer.Option("local", "--backend", help="local (worker processes on this machine) or ray "
                                "(needs the ray extra: pip install 'imgsynth\\[ray]')."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray: cluster address, auto or ray://host:port "
                                          "(default: a local cluster)."),
    list_recipes: bool = typer.Option(False, "--list", help="List the shipped recipes and exit."),
    track: List[str] = typer.Option([], "--track", help="Log the run to an experiment tracker, offline into the "
                                    "run folder: wandb, mlflow or tensorboard (repeat for several; adds to the "
                                    "recipe's \\[tracking] trackers)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only notes (each once), errors and the paths "
                               "written: no progress, no findings."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Print every log line of the loop and its "
                                 "workers, each repeat of a note, and other libraries' own logs."),
) -> None:
    """Run a recursive-generation experiment (or continue or extend a stopped one) and write its reports."""
    from imgsynth.notes import NoteBoard
    from imgsynth.terminal import VERBOSE, level_from_flags, use_verbosity, verbosity

    try:  # without either flag, the root's (imgsynth --quiet run …) or the default
        level = level_from_flags(quiet, verbose) if quiet or verbose else verbosity()
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--quiet/--verbose") from None
    # Each distinct note once (its repeats counted; every one with --verbose), from this process and its workers.
    with use_verbosity(level), NoteBoard(repeat=level >= VERBOSE).collecting() as board:
        try:
            _run(target, out, overrides, workers, backend, address, list_recipes, track, board)
        finally:
            for line in board.summary_lines():
                typer.echo(line, err=True)


def _run(target: Optional[str], out: Optional[Path], overrides: List[str], workers: Optional[int], backend: str,
         address: Optional[str], list_recipes: bool, track: List[str], board: "NoteBoard") -> None:
    from imgsynth.distributed.tasks import BACKENDS, default_workers
    from imgsynth.experiments.config import check_recipe_devices, load_recipe
    from imgsynth.experiments.loop import Experiment
    from imgsynth.experiments.recipes import resolve_target, shipped_recipes
    from imgsynth.outputs import RUN, claim_output
    from imgsynth.progress import RunDisplay, observing
    from imgsynth.reports.build import read_findings
    from imgsynth.reports.findings import plain_findings
    from imgsynth.terminal import NORMAL, VERBOSE, verbosity
    from imgsynth.tracking.registry import TRACKERS

    if list_recipes:
        for name, path in shipped_recipes().items():
            typer.echo(f"{name:24} {path}")
        return
    if backend not in BACKENDS:
        raise typer.BadParameter(f"choose one of {', '.join(BACKENDS)}", param_hint="--backend")
    if address is not None and backend != "ray":
        raise typer.BadParameter("--address is for --backend ray", param_hint="--address")
    unknown = [name for name in track if name not in TRACKERS]
    if unknown:  # before anything is read or written
        raise ValueError(f"--track: unknown tracker(s) {unknown}; known: {', '.join(TRACKERS.names())}")
    # Training bars and Ray's own log lines only with --verbose: the run's progress display stands for them.
    options = {"workers": workers or default_workers(), "backend": backend, "address": address,
               "progress": verbosity() >= VERBOSE, "verbose": verbosity() >= VERBOSE}
    recipe_path, run_dir = resolve_target(target)
    if run_dir is not None:
        experiment = Experiment.resume(run_dir, overrides, **options)
    else:
        recipe = load_recipe(recipe_path, overrides)
        claim_output(out or Path("runs") / recipe.name, RUN)
        experiment = Experiment(recipe, out or Path("runs") / recipe.name, **options)
    check_recipe_devices(experiment.recipe)  # before any data or model loads
    with RunDisplay(notes=board.add, title=f"run {experiment.run_dir.name}") as display, observing(display):
        folder = _run_tracked(experiment, track)
    if verbosity() >= NORMAL:
        typer.echo("\nHeadline findings (differences paired by seed; 95% t-intervals; p-values Holm-adjusted):")
        for line in plain_findings(read_findings(folder / "findings.csv")):
            typer.echo(f"  - {line}")
        typer.echo("")
    typer.echo(f"dashboard: {folder / 'dashboard.png'}\nreport:    {folder / 'report.html'}\n"
               f"metrics:   {folder / 'metrics.csv'}\nfindings:  {folder / 'findings.csv'}")


def _run_tracked(experiment: Any, track: List[str]) -> Path:
    """``run_and_report`` with the recipe's and ``--track``'s trackers logging each finished task, then the
    reports; a tracker's failure is a note, never the run's."""
    from imgsynth.locking import folder_lock
    from imgsynth.reports.build import run_and_report
    from imgsynth.tracking.session import TrackingSession, mlflow_uri

    names = [*experiment.recipe.tracking.trackers, *track]
    if not names:
        return run_and_report(experiment)
    with folder_lock(experiment.run_dir):  # a session tidies the run folder: only its writer may
        session = TrackingSession(experiment.run_dir, names,
                                  mlflow_uri=mlflow_uri(experiment.recipe.tracking.mlflow_uri))
        experiment.after_task = session.sync
        folder = run_and_report(experiment)
        session.finish()
    return folder


def dashboard_command(
    runs: List[Path] = typer.Argument(..., help="One or more run folders."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: the run folder, for one run)."),
) -> None:
    """Rebuild a run's reports, or compare several runs on one dashboard."""
    from imgsynth.reports.build import build_reports, compare_runs

    if len(runs) == 1:
        written = build_reports(runs[0], out)
    else:
        if out is None:
            raise typer.BadParameter("comparing several runs needs --out DIR")
        written = compare_runs(runs, out)
    for name, path in written.items():
        typer.echo(f"{name:18} {path}")


def register(app: typer.Typer) -> None:
    app.command("run")(run_command)
    app.command("dashboard")(dashboard_command)
