"""Weight digests: an extractor's id names the exact bytes of its weights, so equal ids give equal features."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable

_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file, remembered per (path, size, mtime) so a big checkpoint is read once per process."""
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


def folder_digest(folder: str | os.PathLike, patterns: Iterable[str]) -> str:
    """sha256 over the names and digests of the files in ``folder`` matching ``patterns``."""
    folder = Path(folder)
    files = sorted({p for pattern in patterns for p in folder.glob(pattern) if p.is_file()})
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.name}\t{file_digest(path)}\n".encode())
    return digest.hexdigest()
