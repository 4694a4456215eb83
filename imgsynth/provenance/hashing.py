"""Content hashes: of bytes, of files, and the ImageSet id (a hash of the content alone)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable

HASH_CHUNK = 1 << 20


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of the file at ``path``, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def content_id(items: Iterable[tuple[str, str]]) -> str:
    """Hash of the sorted (sha256, label) pairs: the ImageSet id, independent of order and file names."""
    digest = hashlib.sha256()
    for sha, label in sorted(items):
        digest.update(f"{sha}\t{label}\n".encode())
    return digest.hexdigest()
