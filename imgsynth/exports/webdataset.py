"""The WebDataset export: tar shards of ``<key>.png/.cls/.txt/.json`` members, byte-identical for one set."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Iterator

from imgsynth.exports.formats import ExportFormat
from imgsynth.exports.output import DEFAULT_ROWS_PER_FILE, row_ranges, write_folder_atomically
from imgsynth.imageset import ImageSet


def export_webdataset(image_set: ImageSet, out: str | os.PathLike,
                      samples_per_shard: int = DEFAULT_ROWS_PER_FILE) -> list[Path]:
    """Write ``out/shard-000000.tar`` …: per image ``<key>.png``, ``<key>.cls``, ``<key>.txt``, ``<key>.json``.

    Keys are the zero-padded position in the set; ``.cls`` is the class index, ``.txt`` the caption,
    ``.json`` the metadata row plus the class name list. Members are in key order with mtime 0 and
    no owner, so the same set always gives byte-identical tars.
    """
    chunks = row_ranges(len(image_set), samples_per_shard)

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

    return write_folder_atomically(Path(out), write)


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


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


WEBDATASET = ExportFormat(write=export_webdataset)
