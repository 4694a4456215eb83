"""Write a file (or a folder) so that a reader finds either the old content or the new, never a half-written one.

Every write goes to a hidden temporary file beside the target (the same folder, so the final
``os.replace`` is one rename on one file system) and replaces the target only once it is complete.
The temporary name carries the process id and the thread id: workers of one job (Ray actors,
``accelerate`` ranks, threads) may commit into the same folder at once and must never share one.
When writing fails the temporary file is removed and the target keeps its old content; a process
killed mid-write can leave its hidden temporary file behind, never a truncated target.

A folder of several files (an export, a checkpoint) is written the same way: into a hidden sibling
``.<name>.partial`` that is renamed into place when it is whole (:func:`atomic_folder`).

The final ``os.replace``/``os.rename`` replaces whatever is at the target, a symbolic link included, and
never writes through it; that the target's folder lies inside the output without links is
:mod:`imgsynth.safe_paths`' part.

Nothing here calls ``fsync``: no writer in imgsynth did before this module existed, and a crash of
the whole machine is not a case the resumable writers promise to survive.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
from pathlib import Path
from typing import Any, Iterator


def temporary_sibling(path: str | os.PathLike[str], *, suffix: str = "") -> Path:
    """The hidden temporary name this process and thread write ``path`` under before replacing it.

    ``suffix`` ends the name, for writers that choose a file format from it (matplotlib's ``savefig``).
    """
    target = Path(path)
    return target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp{suffix}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write; when the block ends normally it replaces ``path``.

    For writers that take a file name (``safetensors.save_file``, ``DataFrame.to_csv``, ``savefig``)::

        with atomic_path(out / "features.safetensors") as tmp:
            save_file(tensors, str(tmp))

    If the block raises, the temporary file is removed and ``path`` is left as it was.
    """
    target = Path(path)
    tmp = temporary_sibling(target, suffix=suffix)
    # Whatever lies at this process's temporary name (a link planted there) goes: writers open it by name.
    tmp.unlink(missing_ok=True)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        # After a successful replace there is nothing left to remove; after a failure, the partial file.
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` as UTF-8 to ``path`` atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | os.PathLike[str], value: Any, **dumps_options: Any) -> Path:
    """Write ``json.dumps(value, **dumps_options)`` as UTF-8 to ``path`` atomically; returns ``path``.

    The text is exactly what ``json.dumps`` gives (no trailing newline is added), so a caller that
    wrote ``json.dumps(record, indent=2)`` before writes the same bytes through this.
    """
    return write_text_atomic(path, json.dumps(value, **dumps_options))


def partial_folder(path: str | os.PathLike[str]) -> Path:
    """The hidden sibling ``.<name>.partial`` a folder is written in before it is renamed to ``path``."""
    target = Path(path)
    return target.parent / f".{target.name}.partial"


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh, empty :func:`partial_folder` to write into; when the block ends normally it is renamed
    to ``path``, which must then be absent or an empty folder (callers check that first, with their own
    message). If the block raises, the partial folder is removed and ``path`` is left as it was.

    A leftover partial folder from a killed writer is discarded first: this is for writes that start
    over, not for writers that resume from what an earlier attempt left (sets, LoRA training).
    """
    target = Path(path)
    partial = partial_folder(target)
    if partial.is_symlink():  # rmtree refuses links; the link itself goes, never what it points at
        partial.unlink()
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if target.exists():
        target.rmdir()
    os.rename(partial, target)
