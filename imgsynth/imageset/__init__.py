"""The ImageSet: a labeled image collection on disk, the unit every stage of imgsynth hands to the next.

Layout (see ARCHITECTURE.md)::

    <set>/
      images/<label>/<image_id>.png   torchvision ImageFolder reads this as it is
      metadata.jsonl                  one row per image; Hugging Face "imagefolder" reads it as it is
      imageset.json                   the manifest

Writes go to a hidden sibling folder ``.<name>.partial`` in shards; each shard's metadata is written
atomically after its images, so a killed writer resumes from the last whole shard. ``finalize`` writes
the manifest and renames the folder into place, so a half-written set is never mistaken for a whole one.

One module per concept: :mod:`~imgsynth.imageset.layout` (file names), :mod:`~imgsynth.imageset.records`
(``Sample``, ``ImageRecord``), :mod:`~imgsynth.imageset.names` (label, id and path checks),
:mod:`~imgsynth.imageset.png` (deterministic encoding), :mod:`~imgsynth.imageset.metadata` (reading
``metadata.jsonl``), :mod:`~imgsynth.imageset.verification`, :mod:`~imgsynth.imageset.sets` (``ImageSetWriter``
and ``ImageSet``), :mod:`~imgsynth.imageset.splitting` and :mod:`~imgsynth.imageset.operations`. Import
from ``imgsynth.imageset``; the modules are how the code is laid out, not a second API.
"""

from __future__ import annotations

from imgsynth.errors import ImageSetError
from imgsynth.imageset.layout import FORMAT_VERSION, IMAGES, JOB, MANIFEST, METADATA, ROOT_FILES
from imgsynth.imageset.metadata import metadata_lines, parse_metadata_line, read_metadata, read_set_file
from imgsynth.imageset.names import check_image_id, check_label, check_labels, resolve_inside
from imgsynth.imageset.operations import concatenate
from imgsynth.imageset.png import encode_png
from imgsynth.imageset.records import BASE_COLUMNS, WEIGHT_COLUMN, ImageRecord, Sample, weights_digest
from imgsynth.imageset.sets import ImageSet, ImageSetWriter
from imgsynth.imageset.splitting import stratified_split_indices
from imgsynth.imageset.verification import Problem, VerifyReport, verify
from imgsynth.set_schema import KINDS

__all__ = [
    "BASE_COLUMNS", "FORMAT_VERSION", "IMAGES", "JOB", "KINDS", "MANIFEST", "METADATA", "ROOT_FILES",
    "WEIGHT_COLUMN",
    "ImageRecord", "ImageSet", "ImageSetError", "ImageSetWriter", "Problem", "Sample", "VerifyReport",
    "check_image_id", "check_label", "check_labels", "concatenate", "encode_png", "metadata_lines", "parse_metadata_line",
    "read_metadata", "read_set_file", "resolve_inside", "stratified_split_indices", "verify", "weights_digest",
]
