"""Provenance: content hashes, software versions and license records for ImageSets.

The set id is a hash over the sorted (image sha256, label) pairs, so it names the content alone:
the same pixels with the same labels give the same id however and wherever they were written.
"""

from __future__ import annotations

import hashlib
import platform
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Mapping

HASH_CHUNK = 1 << 20


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
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


def software_versions() -> dict[str, str]:
    """Versions of the interpreter and the libraries whose behaviour changes the pixels or numbers."""
    versions = {"python": platform.python_version()}
    for package in ("imgsynth", "torch", "torchvision", "diffusers", "transformers", "numpy", "pillow"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def license_record(value: Mapping[str, Any] | str | None) -> dict[str, Any]:
    """Normalise a license given as a name, a record or nothing ("unknown") into a record."""
    if value is None:
        return {"name": "unknown"}
    if isinstance(value, str):
        return {"name": value.strip() or "unknown"}
    record = dict(value)
    record.setdefault("name", "unknown")
    return record
