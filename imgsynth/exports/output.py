"""What every folder export shares: rows split into files of a fixed size, and the folder written
into a hidden sibling and renamed into place, so a half-written export is never mistaken for a whole one."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from imgsynth.atomic_files import atomic_folder
from imgsynth.errors import ImageSetError
from imgsynth.locking import locks_output

DEFAULT_ROWS_PER_FILE = 10_000


def row_ranges(n: int, per_chunk: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of each file's rows when ``n`` rows are written ``per_chunk`` to a file."""
    if per_chunk < 1:
        raise ValueError(f"rows per file must be at least 1, got {per_chunk}")
    return [(start, min(start + per_chunk, n)) for start in range(0, n, per_chunk)]


@locks_output("out")
def write_folder_atomically(out: Path, write: Callable[[Path], list[Path]]) -> list[Path]:
    """Run ``write`` into a hidden sibling folder, then rename it to ``out`` (which must not hold anything)."""
    out = out.absolute()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ImageSetError(f"{out}: already exists; remove it or choose another folder for the export")
    with atomic_folder(out) as partial:
        names = [p.name for p in write(partial)]
    return [out / name for name in names]
