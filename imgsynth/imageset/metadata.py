"""Reading ``metadata.jsonl`` (and the set's other root files): parsed, checked, with ``file:line`` in errors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from imgsynth.errors import ImageSetError
from imgsynth.image_files import read_regular_file
from imgsynth.imageset.layout import METADATA
from imgsynth.imageset.names import resolve_inside
from imgsynth.imageset.records import ImageRecord
from imgsynth.set_schema import parse_json, row_problems


def read_set_file(root: Path, name: str) -> bytes:
    """A file at the set's root (manifest or metadata), refused when it is a link or not a regular file."""
    return read_regular_file(root, name, limit=1 << 31)


def metadata_lines(root: Path) -> list[tuple[str, bytes]]:
    """``(file:line, bytes)`` for each line of ``metadata.jsonl`` (decoded per line, so errors have a line)."""
    path = root / METADATA
    return [(f"{path}:{number}", line)
            for number, line in enumerate(read_set_file(root, METADATA).splitlines(), start=1)]


def parse_metadata_line(root: Path, where: str, line: bytes, classes: set[str] | None,
                        real_root: str | None = None, known_real_folders: set[str] | None = None) -> dict[str, Any]:
    """One metadata row, parsed and checked (schema, path inside ``images/<label>/``), or an error at ``where``."""
    if not line.strip():
        raise ImageSetError(f"{where}: blank line")
    row = parse_json(line, where)
    if isinstance(row, dict) and isinstance(row.get("file_name"), str):
        # An escaping name is the first thing to say.
        resolve_inside(root, row["file_name"], where, real_root, known_real_folders)
    problems = row_problems(row, classes)
    if problems:
        raise ImageSetError(f"{where}: {problems[0]}")
    return row


def read_metadata(root: Path, classes: set[str]) -> list[ImageRecord]:
    """Parse and structurally check ``metadata.jsonl``: every line JSON, fields present, paths safe."""
    path = root / METADATA
    if not path.is_file():
        raise ImageSetError(f"{path}: missing")
    records: list[ImageRecord] = []
    seen: set[str] = set()
    real_root, folders = os.path.realpath(root), set()
    for where, line in metadata_lines(root):
        row = parse_metadata_line(root, where, line, classes, real_root, folders)
        if row["file_name"] in seen:
            raise ImageSetError(f"{where}: file_name {row['file_name']!r} appears twice")
        seen.add(row["file_name"])
        records.append(ImageRecord.from_row(row))
    if not records:
        raise ImageSetError(f"{path}: no images listed; an ImageSet cannot be empty")
    return records
