"""The export seam: an export format is one writer, registered under its name in :data:`EXPORT_FORMATS`.

``imgsynth data export SET OUT --format NAME`` and :func:`export` look the name up there and run its
writer; nothing else names the formats. A new format is one module with an :class:`ExportFormat` plus
one registration (a plugin or a test registers the object itself)::

    EXPORT_FORMATS.register("labels-csv", ExportFormat(write=write_labels_csv))

Built-in formats are registered as ``"module:attribute"``, so listing the names (``--help``) imports
neither pandas nor pyarrow.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from imgsynth.errors import ImageSetError
from imgsynth.imageset import ImageSet
from imgsynth.registry import Registry


@dataclass(frozen=True)
class ExportFormat:
    """One export format.

    ``write(image_set, out)`` writes the export to ``out`` and returns the paths it wrote, which the
    CLI prints. It must leave nothing half-written behind (:mod:`imgsynth.exports.output` and
    :mod:`imgsynth.atomic_files` do the hidden-file-then-rename part) and refuse an ``out`` that holds
    something else. ``default_out`` gives ``out`` when the user names none; a format without one
    needs an OUT argument.
    """

    write: Callable[[ImageSet, Path], list[Path]]
    default_out: Callable[[ImageSet], Path] | None = None


EXPORT_FORMATS: Registry[ExportFormat] = Registry("export format")
EXPORT_FORMATS.register("parquet", "imgsynth.exports.parquet:PARQUET")
EXPORT_FORMATS.register("webdataset", "imgsynth.exports.webdataset:WEBDATASET")
EXPORT_FORMATS.register("croissant", "imgsynth.exports.croissant:CROISSANT")


def export(image_set: ImageSet, fmt: str, out: str | os.PathLike[str] | None = None) -> list[Path]:
    """Export ``image_set`` in the registered format ``fmt`` to ``out``; returns the paths written.

    An unknown ``fmt`` is an error naming the registered formats; without ``out`` the format's
    ``default_out`` is used (croissant: ``<set>/croissant.json``), and a format without one is an error.
    """
    entry = EXPORT_FORMATS[fmt]
    if out is None:
        if entry.default_out is None:
            raise ImageSetError(f"export --format {fmt} needs an OUT folder")
        return entry.write(image_set, entry.default_out(image_set))
    return entry.write(image_set, Path(out))
