"""Export an ImageSet to the formats training stacks read directly: parquet, WebDataset tar shards, and a
Croissant JSON-LD description.

Every export is deterministic (same set, same bytes out) and atomic: folders are written into a hidden
sibling and renamed into place, files into a hidden temporary file, so a half-written export is never
mistaken for a whole one.

One writer per format, each in its own module (:mod:`~imgsynth.exports.parquet`,
:mod:`~imgsynth.exports.webdataset`, :mod:`~imgsynth.exports.croissant`), registered by name in
:data:`EXPORT_FORMATS` (:mod:`~imgsynth.exports.formats` says how to add one); :func:`export`
dispatches through it.
"""

from __future__ import annotations

from imgsynth.exports.columns import imagefolder_features
from imgsynth.exports.croissant import (CROISSANT_CONFORMS_TO, CROISSANT_CONTEXT, CROISSANT_FILE,
                                        croissant_metadata, write_croissant)
from imgsynth.exports.formats import EXPORT_FORMATS, ExportFormat, export
from imgsynth.exports.output import DEFAULT_ROWS_PER_FILE
from imgsynth.exports.parquet import export_parquet
from imgsynth.exports.webdataset import export_webdataset, iter_webdataset

__all__ = [
    "CROISSANT_CONFORMS_TO", "CROISSANT_CONTEXT", "CROISSANT_FILE", "DEFAULT_ROWS_PER_FILE", "EXPORT_FORMATS",
    "ExportFormat", "croissant_metadata", "export", "export_parquet", "export_webdataset", "imagefolder_features",
    "iter_webdataset", "write_croissant",
]
