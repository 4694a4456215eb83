"""The parquet export: Hugging Face ``datasets`` reads it with its images and class labels decoded."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from imgsynth.dataset_card import BASE_COLUMNS, features_dict, storable
from imgsynth.exports.columns import metadata_types
from imgsynth.exports.formats import ExportFormat
from imgsynth.exports.output import DEFAULT_ROWS_PER_FILE, row_ranges, write_folder_atomically
from imgsynth.imageset import ImageSet


def export_parquet(image_set: ImageSet, out: str | os.PathLike,
                   rows_per_file: int = DEFAULT_ROWS_PER_FILE) -> list[Path]:
    """Write ``out/data-0000i-of-0000n.parquet``: image (bytes, path), label, label_name, caption, seed, sha256.

    ``label`` is the class index (the manifest's, which for sets written now is the sorted-name index
    ImageFolder gives); the schema carries Hugging Face feature metadata (Image, ClassLabel with the
    class names) so ``datasets.load_dataset("parquet", data_dir=out)`` decodes images and labels, and
    the set's manifest under the ``imgsynth`` key. Extra metadata columns keep their JSON types
    (numbers as numbers, objects as structs, as the dataset card declares them); a column whose rows
    mix kinds of value is JSON text. Whole-number columns that may be empty (``seed``, ``generation``
    for the real images of a mixed set) are nullable: pandas reads them as ``Int64`` with ``<NA>``.
    """
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = metadata_types(image_set)
    extra = [c for c in types if c not in BASE_COLUMNS]
    stored = {"label": pa.int64(), "label_name": pa.string(), **{c: types[c] for c in BASE_COLUMNS},
              "file_name": pa.string(), **{c: _parquet_type(types[c]) for c in extra}}
    as_text = {c for c in extra if stored[c] != types[c]}
    features = features_dict(image_set.classes, {c: t for c, t in stored.items() if c != "label"})
    schema = pa.schema(
        [("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])), *stored.items()],
        metadata={"huggingface": json.dumps({"info": {"features": features}}),
                  "imgsynth": json.dumps(image_set.manifest, sort_keys=True)})
    # Nullable whole numbers: pandas would read int64 with nulls as float64 with NaN.
    nullable_ints = [c for c, t in stored.items() if t == pa.int64() and c != "label"]
    chunks = row_ranges(len(image_set), rows_per_file)

    def write(folder: Path) -> list[Path]:
        paths = []
        for number, (start, stop) in enumerate(chunks):
            rows = [image_set.records[i].to_row() for i in range(start, stop)]
            columns: dict[str, Any] = {
                "image": [{"bytes": image_set.read_bytes(i, decode=True), "path": r["file_name"]}
                          for i, r in zip(range(start, stop), rows)],
                "label": [image_set.class_to_index[r["label"]] for r in rows],
                "label_name": [r["label"] for r in rows],
                **{c: [_text(r.get(c)) if c in as_text else r.get(c) for r in rows]
                   for c in stored if c not in ("label", "label_name")},
            }
            frame = pd.DataFrame({c: pd.array(v, dtype="Int64") if c in nullable_ints else v
                                  for c, v in columns.items()})
            table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
            path = folder / f"data-{number:05d}-of-{len(chunks):05d}.parquet"
            pq.write_table(table, path, compression="zstd")
            paths.append(path)
        return paths

    return write_folder_atomically(Path(out), write)


def _parquet_type(arrow_type: Any) -> Any:
    """The column type parquet stores: the inferred one, or JSON text where there is none it can hold."""
    import pyarrow as pa

    return arrow_type if arrow_type is not None and storable(arrow_type) else pa.string()


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, default=str)


PARQUET = ExportFormat(write=export_parquet)
