"""`imgsynth run` (recursive-generation experiments) and `imgsynth dashboard` (reports, run comparison)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

# Heavy modules (torch, matplotlib) are imported inside the commands so `imgsynth --help` stays quick.


def run_command(
    target: Optional[str] = typer.Argument(None, help="Recipe file, shipped recipe name, or a run folder to "
                                                      "continue. Default: the digits-collapse recipe."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder (default runs/<recipe name>)."),
    overrides: List[str] = typer.Option([], "--set", help="Override a recipe field: section.field=value."),
    list_recipes: bool = typer.Option(False, "--list", help="List the shipped recipes and exit."),
) -> None:
    """Run a recursive-generation experiment (or continue a stopped one) and write its dashboard."""
    from imgsynth.experiments.config import load_recipe
    from imgsynth.experiments.loop import Experiment
    from imgsynth.experiments.recipes import resolve_target, shipped_recipes

    if list_recipes:
        for name, path in shipped_recipes().items():
            typer.echo(f"{name:24} {path}")
        return
    recipe_path, run_dir = resolve_target(target)
    if run_dir is not None:
        if overrides:
            raise typer.BadParameter("--set cannot change a started run; start a new run folder instead")
        experiment = Experiment.resume(run_dir)
    else:
        recipe = load_recipe(recipe_path, overrides)
        experiment = Experiment(recipe, out or Path("runs") / recipe.name)
    folder = experiment.run()
    typer.echo(f"dashboard: {folder / 'dashboard.png'}\nreport:    {folder / 'report.html'}\n"
               f"metrics:   {folder / 'metrics.csv'}")


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
