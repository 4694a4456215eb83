"""Shipped recipes (package data, ``imgsynth/assets/experiments``) and what `imgsynth run` was given."""

from __future__ import annotations

from pathlib import Path

from imgsynth.experiments.config import RecipeError
from imgsynth.package_data import shipped_files

DEFAULT_RECIPE = "digits-collapse"


def shipped_recipes() -> dict[str, Path]:
    """Name → path of every recipe shipped in ``imgsynth/assets/experiments``."""
    return shipped_files("experiments")


def resolve_target(target: str | None) -> tuple[Path | None, Path | None]:
    """Turn `imgsynth run`'s argument into (recipe file, existing run folder); exactly one is set.

    Accepts nothing (the default recipe), a shipped recipe's name, a TOML file, or a run folder
    holding ``config.toml`` (which continues that run).
    """
    if target is None:
        target = DEFAULT_RECIPE
    path = Path(target)
    if path.is_dir():
        if not (path / "config.toml").is_file():
            raise RecipeError(f"{path}: a folder, but not a run folder (no config.toml)")
        return None, path
    if path.is_file():
        return path, None
    shipped = shipped_recipes()
    if target in shipped:
        return shipped[target], None
    raise RecipeError(f"{target}: no such recipe file or run folder; shipped recipes: {sorted(shipped)}")
