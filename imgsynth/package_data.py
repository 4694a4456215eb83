"""Files shipped inside the package (recipes, prompt banks), found with ``importlib.resources``.

They live in ``imgsynth/assets/<folder>/`` and are declared as package data, so a wheel carries them and
an installed copy finds them wherever it was installed, independently of the current directory.
"""

from __future__ import annotations

import atexit
import sys
from contextlib import ExitStack
from importlib.resources import as_file, files
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    if sys.version_info >= (3, 11):
        from importlib.resources.abc import Traversable
    else:  # pragma: no cover
        from importlib.abc import Traversable

ASSETS = "assets"
# Paths handed out live as long as the process: ``as_file`` is a no-op for a package installed as files,
# and for one imported from a zip it extracts a copy that must outlive the call, removed at exit.
_EXTRACTED = ExitStack()
atexit.register(_EXTRACTED.close)


def asset_folder(folder: str) -> Traversable:
    """The shipped folder ``imgsynth/assets/<folder>`` as a resource (it may not be a real path)."""
    return files("imgsynth").joinpath(ASSETS, folder)


def shipped_files(folder: str, suffix: str = ".toml") -> dict[str, Path]:
    """Stem → real file path of every shipped ``imgsynth/assets/<folder>/*<suffix>``, sorted by stem.

    The paths are real files (extracted once per process if the package is not on disk), so callers can
    open them and show them to the user; a missing folder gives an empty mapping.
    """
    root = asset_folder(folder)
    if not root.is_dir():
        return {}
    found = sorted((entry for entry in root.iterdir() if entry.is_file() and entry.name.endswith(suffix)),
                   key=lambda entry: entry.name)
    return {entry.name[: -len(suffix)]: _EXTRACTED.enter_context(as_file(entry)) for entry in found}
