"""Export an ImageSet to the formats training stacks read directly: parquet and WebDataset tar shards.

Both exports are deterministic (same set, same bytes out) and atomic: they are written into a hidden
sibling folder and renamed into place, so a half-written export is never mistaken for a whole one.
The Croissant description lives in :mod:`imgsynth.provenance` (``write_croissant``).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from pathlib import Path
from typing import Any, Callable, Iterator

from imgsynth.dataset_card import BASE_COLUMNS, column_types, features_dict, hf_features, storable
from imgsynth.imageset import ImageSet, ImageSetError
from imgsynth.locking import locks_output

EXPORT_FORMATS = ("parquet", "webdataset", "croissant")
DEFAULT_ROWS_PER_FILE = 10_000


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

    types = _metadata_types(image_set)
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
    chunks = _chunks(len(image_set), rows_per_file)

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

    return _atomic_folder(Path(out), write)


def _metadata_types(image_set: ImageSet) -> dict[str, Any]:
    """The type of every metadata column besides file_name and label, as the set's dataset card has them."""
    rows = [r.to_row() for r in image_set.records]
    return column_types(rows, list(dict.fromkeys(c for r in rows for c in r)))


def _parquet_type(arrow_type: Any) -> Any:
    """The column type parquet stores: the inferred one, or JSON text where there is none it can hold."""
    import pyarrow as pa

    return arrow_type if arrow_type is not None and storable(arrow_type) else pa.string()


def imagefolder_features(image_set: ImageSet) -> Any:
    """The ``datasets.Features`` of a set, for ``datasets.load_dataset("imagefolder", data_dir=SET,
    features=imagefolder_features(s))``: that packaged form reads no dataset card, so without them
    ``label`` loads as the class name. ``load_dataset(SET)`` reads the card and needs nothing."""
    return hf_features(image_set.classes, _metadata_types(image_set))


def export_webdataset(image_set: ImageSet, out: str | os.PathLike,
                      samples_per_shard: int = DEFAULT_ROWS_PER_FILE) -> list[Path]:
    """Write ``out/shard-000000.tar`` …: per image ``<key>.png``, ``<key>.cls``, ``<key>.txt``, ``<key>.json``.

    Keys are the zero-padded position in the set; ``.cls`` is the class index, ``.txt`` the caption,
    ``.json`` the metadata row plus the class name list. Members are in key order with mtime 0 and
    no owner, so the same set always gives byte-identical tars.
    """
    chunks = _chunks(len(image_set), samples_per_shard)

    def write(folder: Path) -> list[Path]:
        paths = []
        for number, (start, stop) in enumerate(chunks):
            path = folder / f"shard-{number:06d}.tar"
            with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
                for i in range(start, stop):
                    record = image_set.records[i]
                    key = f"{i:08d}"
                    row = {**record.to_row(), "label_index": image_set.class_to_index[record.label]}
                    members = [(".png", image_set.read_bytes(i, decode=True)),
                               (".cls", str(row["label_index"]).encode()),
                               (".txt", record.caption.encode("utf-8")),
                               (".json", json.dumps(row, sort_keys=True, default=str).encode("utf-8"))]
                    for suffix, data in members:
                        tar.addfile(_tar_info(key + suffix, len(data)), io.BytesIO(data))
            paths.append(path)
        (folder / "classes.json").write_text(json.dumps(image_set.classes) + "\n", encoding="utf-8")
        return paths

    return _atomic_folder(Path(out), write)


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _chunks(n: int, per_chunk: int) -> list[tuple[int, int]]:
    if per_chunk < 1:
        raise ValueError(f"rows per file must be at least 1, got {per_chunk}")
    return [(start, min(start + per_chunk, n)) for start in range(0, n, per_chunk)]


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, default=str)


@locks_output("out")
def _atomic_folder(out: Path, write: Callable[[Path], list[Path]]) -> list[Path]:
    """Run ``write`` into a hidden sibling folder, then rename it to ``out`` (which must not hold anything)."""
    out = out.absolute()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ImageSetError(f"{out}: already exists; remove it or choose another folder for the export")
    partial = out.parent / f".{out.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        names = [p.name for p in write(partial)]
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if out.exists():
        out.rmdir()
    os.rename(partial, out)
    return [out / name for name in names]


def export(image_set: ImageSet, fmt: str, out: str | os.PathLike | None = None) -> list[Path]:
    """Export in ``fmt`` (parquet | webdataset | croissant); croissant defaults to ``<set>/croissant.json``."""
    if fmt == "parquet" or fmt == "webdataset":
        if out is None:
            raise ImageSetError(f"export --format {fmt} needs an OUT folder")
        return (export_parquet if fmt == "parquet" else export_webdataset)(image_set, out)
    if fmt == "croissant":
        from imgsynth.provenance import write_croissant

        return [write_croissant(image_set, out)]
    raise ImageSetError(f"unknown export format {fmt!r}; choose one of {EXPORT_FORMATS}")


def iter_webdataset(shard: str | os.PathLike) -> Iterator[dict[str, bytes]]:
    """Group a tar shard's members by key (the WebDataset convention), for tests and quick reads."""
    current: dict[str, bytes] = {}
    with tarfile.open(shard) as tar:
        for member in tar:
            key, _, suffix = member.name.partition(".")
            if current and current["__key__"] != key.encode():
                yield current
                current = {}
            current["__key__"] = key.encode()
            current[suffix] = tar.extractfile(member).read()
    if current:
        yield current
