"""The ImageSet: a labeled image collection on disk, the unit every stage of imgsynth hands to the next.

Layout (see ARCHITECTURE.md)::

    <set>/
      images/<label>/<image_id>.png   torchvision ImageFolder reads this as it is
      metadata.jsonl                  one row per image; Hugging Face "imagefolder" reads it as it is
      imageset.json                   the manifest

Writes go to a hidden sibling folder ``.<name>.partial`` in shards; each shard's metadata is written
atomically after its images, so a killed writer resumes from the last whole shard. ``finalize`` writes
the manifest and renames the folder into place, so a half-written set is never mistaken for a whole one.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import threading
import warnings
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
from PIL import Image

from imgsynth.errors import ImageSetError
from imgsynth.notes import Note
from imgsynth.image_files import ImageFileError, check_sha256, decode_image, read_regular_file
from imgsynth.locking import FolderLock, acquire, release
from imgsynth.dataset_card import CARD, card_classes, card_text, column_types
from imgsynth.set_schema import (KINDS, SORTED, check_manifest, class_order, label_order, label_problem,
                                 manifest_problems, parse_json, row_problems)
from imgsynth.provenance import content_id, license_record, sha256_bytes, sha256_file, software_versions

FORMAT_VERSION = 1
MANIFEST = "imageset.json"
METADATA = "metadata.jsonl"
IMAGES = "images"
# Columns every metadata row carries, in this order; generators add their own after these.
BASE_COLUMNS = ("file_name", "label", "caption", "seed", "sha256")
JOB = "job.json"  # inside the partial folder: what the unfinished write is for
# Files a finished set may hold at its root besides images/ (verify reports anything else as stray).
ROOT_FILES = (MANIFEST, METADATA, "croissant.json", CARD)


@dataclass(frozen=True)
class Sample:
    """One image to be written: pixels (a PIL image or already-encoded PNG bytes) and its labels."""

    image: Image.Image | bytes
    label: str
    caption: str = ""
    seed: int | None = None
    image_id: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ImageRecord:
    """One row of ``metadata.jsonl``."""

    file_name: str
    label: str
    caption: str
    seed: int | None
    sha256: str
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_row(self) -> dict[str, Any]:
        return {"file_name": self.file_name, "label": self.label, "caption": self.caption,
                "seed": self.seed, "sha256": self.sha256, **self.extra}

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> ImageRecord:
        extra = {k: v for k, v in row.items() if k not in BASE_COLUMNS}
        return cls(file_name=row["file_name"], label=row["label"], caption=row.get("caption") or "",
                   seed=row.get("seed"), sha256=row["sha256"], extra=extra)


# --------------------------------------------------------------------------------------------- names

def check_label(label: Any, where: str) -> str:
    """Return ``label`` if it can name a folder inside the set, else raise naming ``where``."""
    problem = label_problem(label)
    if problem:
        raise ImageSetError(f"{where}: {problem}")
    return label


def check_image_id(image_id: str, where: str) -> str:
    if not image_id or image_id in (".", "..") or any(c in image_id for c in "/\\\x00"):
        raise ImageSetError(f"{where}: image id {image_id!r} is not a plain file name")
    return image_id


def resolve_inside(root: Path, file_name: Any, where: str, real_root: str | None = None,
                   known_real_folders: set[str] | None = None) -> Path:
    """The path a metadata ``file_name`` names, refusing names that escape the set or pass a symbolic link.

    ``real_root`` is ``os.path.realpath(root)`` when the caller knows it (it is the same for every row);
    ``known_real_folders`` remembers folders already found free of links, so a set's few class folders
    are resolved once and each file costs one ``lstat``.
    """
    if not isinstance(file_name, str) or not file_name or "\x00" in file_name:
        raise ImageSetError(f"{where}: file_name must be a non-empty string without NUL, got {file_name!r}")
    if file_name.startswith(("/", "\\")) or os.path.isabs(file_name) or "\\" in file_name:
        raise ImageSetError(f"{where}: file_name {file_name!r} is absolute; it must be relative to the set")
    parts = Path(file_name).parts
    if ".." in parts or not parts or parts[0] != IMAGES:
        raise ImageSetError(f"{where}: file_name {file_name!r} escapes the set's {IMAGES}/ folder")
    real_root = real_root or os.path.realpath(root)
    lexical = os.path.normpath(os.path.join(real_root, file_name))
    folder = os.path.dirname(lexical)
    linked = False
    if known_real_folders is None or folder not in known_real_folders:
        linked = os.path.realpath(folder) != folder
        if not linked and known_real_folders is not None:
            known_real_folders.add(folder)
    if linked or os.path.islink(lexical):
        # A link could point anywhere, and torchvision's ImageFolder would follow it too.
        real = os.path.realpath(lexical)
        where_to = "that resolves outside the set" if not real.startswith(real_root + os.sep) else "inside the set"
        raise ImageSetError(f"{where}: file_name {file_name!r} is a symbolic link (or lies behind one) {where_to}; "
                            "an ImageSet holds regular files only")
    return root / file_name


# --------------------------------------------------------------------------------------------- encoding

def encode_png(image: Image.Image) -> bytes:
    """Encode deterministically: no metadata chunks, fixed compression, so equal pixels give equal bytes."""
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def _atomic_write_text(path: Path, text: str) -> None:
    # A name of its own per writer process: workers of one job may commit into the same folder at once.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _partial_dir(root: Path) -> Path:
    return root.parent / f".{root.name}.partial"


def _shard_name(index: int) -> str:
    return f"shard-{index:06d}.jsonl"


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# --------------------------------------------------------------------------------------------- writer

class ImageSetWriter:
    """Write an ImageSet shard by shard, resumable, finalized atomically.

    Callers split their work into fixed shards (shard ``i`` always holds the same items) and call
    ``write_shard(i, samples)`` for each index not in ``done_shards``; after a crash a new writer on the
    same path sees the finished shards and the caller skips them. ``finalize()`` checks the shards are
    contiguous, writes ``metadata.jsonl``, ``imageset.json`` and the dataset card ``README.md``, and
    renames the folder into place.

    ``classes`` may come in any order: label index i is always the i-th of the sorted names
    (:func:`~imgsynth.set_schema.label_order`), the order torchvision's ``ImageFolder``, the card's
    ``ClassLabel`` and the exports use too. This is the one place that order is decided, so no writer
    can number a set differently from its readers. An order that differs from the sorted one is kept
    as the manifest's ``display_order``, for showing classes as the caller listed them (a source's
    own label order, a prompt bank's); nothing indexes by it.
    """

    def __init__(self, root: str | os.PathLike, classes: Sequence[str], *, kind: str = "real",
                 parents: Sequence[Any] = (), generator: Mapping[str, Any] | None = None,
                 config: Mapping[str, Any] | None = None, license: Mapping[str, Any] | str | None = None,
                 annotations: Mapping[str, Any] | None = None, locked_by_driver: bool = False) -> None:
        self.root = Path(root).absolute()
        if kind not in KINDS:
            raise ImageSetError(f"{self.root}: kind must be one of {KINDS}, got {kind!r}")
        if not classes:
            raise ImageSetError(f"{self.root}: an ImageSet needs at least one class")
        given = [check_label(c, str(self.root)) for c in classes]
        if len(set(given)) != len(given):
            raise ImageSetError(f"{self.root}: duplicate class names in {given}")
        self.classes = label_order(given)
        self.display_order = given if given != self.classes else None
        self.kind = kind
        self.parents = [_parent_entry(p, self.root) for p in parents]
        self.generator = dict(generator or {})
        self.config = dict(config or {})
        self.license = license_record(license)
        self.annotations = dict(annotations or {})
        self.partial = _partial_dir(self.root)
        self._classes_set = set(self.classes)
        # Workers of one job (Ray actors, accelerate ranks) write into the partial their driver holds.
        self._joined = locked_by_driver
        self._lock: FolderLock | None = None if locked_by_driver else acquire(self.root)
        try:
            if self.root.exists() and not (self.root / MANIFEST).is_file() and any(self.root.iterdir()):
                raise ImageSetError(f"{self.root}: folder exists and is not an ImageSet; refusing to write into it")
            self._claim_partial()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Give back the folder lock (``finalize`` and ``abort`` do this themselves); the partial stays."""
        if self._lock is not None:
            release(self._lock)
            self._lock = None

    def __enter__(self) -> ImageSetWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: the process exit drops the lock anyway
            pass

    def _claim_partial(self) -> None:
        """Reuse an unfinished write of the same job, or discard one left by a different job.

        Shards are only interchangeable between writers doing the same job (same classes, kind,
        parents, generator and config); resuming from another job's shards would silently mix two sets.
        Only the lock holder may discard: a worker that finds another job's partial stops instead.
        """
        job = json.dumps({"classes": self.classes, "kind": self.kind, "parents": self.parents,
                          "generator": self.generator, "config": self.config},
                         sort_keys=True, default=_json_default)
        job_path = self.partial / JOB
        if self.partial.exists():
            previous = job_path.read_text(encoding="utf-8") if job_path.is_file() else None
            if previous != job:
                if self._joined:
                    raise ImageSetError(f"{self.partial}: holds an unfinished write of a different job than "
                                        "this worker's driver started")
                warnings.warn(f"{self.partial}: discarding an unfinished write of a different job", Note,
                              stacklevel=3)
                shutil.rmtree(self.partial)
        (self.partial / "shards").mkdir(parents=True, exist_ok=True)
        if not job_path.is_file():
            _atomic_write_text(job_path, job)

    @property
    def done_shards(self) -> set[int]:
        """Indices of shards whose images and metadata were completely written."""
        return {int(p.name[6:12]) for p in (self.partial / "shards").glob("shard-*.jsonl")}

    def write_shard(self, index: int, samples: Iterable[Sample]) -> list[ImageRecord]:
        """Write one shard's images, then its metadata file atomically (the shard's commit point)."""
        records: list[ImageRecord] = []
        for position, sample in enumerate(samples):
            label = check_label(sample.label, f"{self.root} shard {index}")
            if label not in self._classes_set:
                raise ImageSetError(f"{self.root}: shard {index} has label {label!r} not in classes {self.classes}")
            image_id = check_image_id(sample.image_id or f"{index:06d}-{position:05d}", str(self.root))
            data = sample.image if isinstance(sample.image, bytes) else encode_png(sample.image)
            file_name = f"{IMAGES}/{label}/{image_id}.png"
            path = self.partial / file_name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            records.append(ImageRecord(file_name, label, sample.caption,
                                       None if sample.seed is None else int(sample.seed),
                                       sha256_bytes(data), dict(sample.extra)))
        lines = "".join(json.dumps(r.to_row(), default=_json_default) + "\n" for r in records)
        _atomic_write_text(self.partial / "shards" / _shard_name(index), lines)
        return records

    def write_all(self, samples: Iterable[Sample], shard_size: int = 1024) -> None:
        """Write an iterable in consecutive shards, skipping shards already done (for cheap sources)."""
        done = self.done_shards
        batch: list[Sample] = []
        index = 0
        for sample in samples:
            batch.append(sample)
            if len(batch) == shard_size:
                if index not in done:
                    self.write_shard(index, batch)
                batch, index = [], index + 1
        if batch and index not in done:
            self.write_shard(index, batch)

    def finalize(self) -> ImageSet:
        """Assemble metadata and manifest, and rename the set into place; returns the opened set.

        The folder lock is given back afterwards, whether or not finalizing succeeded.
        """
        try:
            return self._finalize()
        finally:
            self.close()

    def _finalize(self) -> ImageSet:
        shard_indices = sorted(self.done_shards)
        if shard_indices != list(range(len(shard_indices))):
            missing = sorted(set(range(max(shard_indices, default=-1) + 1)) - set(shard_indices))
            raise ImageSetError(f"{self.partial}: shards {missing} were never written; cannot finalize")
        rows: list[dict[str, Any]] = []
        for i in shard_indices:
            text = (self.partial / "shards" / _shard_name(i)).read_text(encoding="utf-8")
            rows.extend(json.loads(line) for line in text.splitlines() if line.strip())
        if not rows:
            raise ImageSetError(f"{self.root}: no images were written; an ImageSet cannot be empty")
        names = Counter(r["file_name"] for r in rows)
        clashes = [n for n, c in names.items() if c > 1]
        if clashes:
            raise ImageSetError(f"{self.root}: image ids repeat: {clashes[:5]}")
        # Every row carries every column, so tabular readers see one schema.
        columns = list(BASE_COLUMNS) + sorted({k for r in rows for k in r} - set(BASE_COLUMNS))
        rows = [{c: r.get(c) for c in columns} for r in rows]
        records = [ImageRecord.from_row(r) for r in rows]
        self._remove_unlisted_images({r.file_name for r in records})
        manifest = self._manifest(records)
        if self.root.exists() and any(self.root.iterdir()):
            return self._settle_existing(manifest["id"])
        _atomic_write_text(self.partial / METADATA,
                           "".join(json.dumps(r, default=_json_default) + "\n" for r in rows))
        _atomic_write_text(self.partial / MANIFEST, json.dumps(manifest, indent=2, default=_json_default))
        _atomic_write_text(self.partial / CARD, card_text(manifest["id"], self.classes, column_types(rows, columns)))
        shutil.rmtree(self.partial / "shards")
        (self.partial / JOB).unlink()
        self.root.parent.mkdir(parents=True, exist_ok=True)
        if self.root.exists():  # an empty folder made by the caller: rename cannot replace it portably
            self.root.rmdir()
        os.rename(self.partial, self.root)
        return ImageSet.open(self.root)

    def _settle_existing(self, new_id: str) -> ImageSet:
        """The target already holds something: the same content is a no-op, anything else an error.

        Either way the partial write is removed, so no half-written output is left behind.
        """
        try:
            existing = ImageSet.open(self.root)
        except ImageSetError as exc:
            self.abort()
            raise ImageSetError(f"{self.root}: already exists and is not a readable ImageSet ({exc}); "
                                "remove it or choose another folder") from exc
        self.abort()
        if existing.id != new_id:
            raise ImageSetError(f"{self.root}: already holds a different ImageSet (id {existing.id[:12]}, "
                                f"new {new_id[:12]}); remove it or choose another folder")
        return existing

    def _remove_unlisted_images(self, listed: set[str]) -> None:
        """Delete images an interrupted shard wrote but never committed, so they cannot become strays."""
        images = self.partial / IMAGES
        if not images.is_dir():
            return
        for path in sorted(images.rglob("*"), reverse=True):  # children before their folders
            relative = path.relative_to(self.partial).as_posix()
            if path.is_file() and relative not in listed:
                path.unlink()
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()

    def abort(self) -> None:
        """Throw away everything written so far and give back the folder lock."""
        shutil.rmtree(self.partial, ignore_errors=True)
        self.close()

    def _manifest(self, records: Sequence[ImageRecord]) -> dict[str, Any]:
        counts = Counter(r.label for r in records)
        with Image.open(self.partial / records[0].file_name) as first:
            first_size, first_mode = first.size, first.mode
        sizes, modes = {first_size}, {first_mode}
        for r in records[:: max(1, len(records) // 64)]:
            with Image.open(self.partial / r.file_name) as image:
                sizes.add(image.size)
                modes.add(image.mode)
        return {
            "format_version": FORMAT_VERSION,
            "id": content_id((r.sha256, r.label) for r in records),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "kind": self.kind,
            "classes": self.classes,
            **({"display_order": self.display_order} if self.display_order else {}),
            "counts": {c: counts.get(c, 0) for c in self.classes},
            "num_images": len(records),
            "image_size": list(first_size[::-1]) if len(sizes) == 1 else None,
            "image_mode": first_mode if len(modes) == 1 else None,  # readers check it on every image
            "parents": self.parents,
            "generator": self.generator,
            "config": self.config,
            "software": software_versions(),
            "license": self.license,
            **self.annotations,
        }


def _parent_entry(parent: Any, root: Path) -> dict[str, Any]:
    """A parents[] entry: id, path relative to the new set (so moved run folders keep their lineage)."""
    if isinstance(parent, ImageSet):
        return {"id": parent.id, "path": os.path.relpath(parent.root, root), "kind": parent.kind}
    if isinstance(parent, Mapping):
        return dict(parent)
    raise TypeError(f"parent must be an ImageSet or a mapping, got {type(parent).__name__}")


# --------------------------------------------------------------------------------------------- reader

class ImageSet:
    """An opened, finalized ImageSet; also a ``torch.utils.data.Dataset`` of (image, label index, caption).

    Items are float tensors in [0, 1] of shape (C, H, W) unless a ``transform`` is given, which receives
    the PIL image. Labels index ``classes`` in manifest order, never filesystem order: sorted names for
    every set imgsynth writes now (what ``ImageFolder`` gives too), the order written for sets from
    before that rule (``class_order`` says which).
    """

    def __init__(self, root: Path, manifest: dict[str, Any], records: list[ImageRecord],
                 transform: Callable[[Image.Image], Any] | None = None) -> None:
        self.root = root
        self.manifest = manifest
        self.records = records
        self.transform = transform
        self.class_to_index = {c: i for i, c in enumerate(self.classes)}
        self._real_root = os.path.realpath(root)
        self._real_folders: set[str] = set()  # folders of the set already checked to hold no link

    # ---- opening
    @classmethod
    def open(cls, path: str | os.PathLike, transform: Callable[[Image.Image], Any] | None = None) -> ImageSet:
        """Open a finalized set, checking manifest and metadata structure (not pixels: see ``verify``)."""
        root = Path(path).absolute()
        if not root.is_dir():
            partial = _partial_dir(root)
            hint = f" (an unfinished write is in {partial})" if partial.exists() else ""
            raise ImageSetError(f"{root}: no such ImageSet folder{hint}")
        manifest_path = root / MANIFEST
        if not manifest_path.is_file():
            raise ImageSetError(f"{manifest_path}: missing; {root} is not a finished ImageSet")
        manifest = dict(check_manifest(parse_json(read_set_file(root, MANIFEST), str(manifest_path)),
                                       str(manifest_path)))
        records = read_metadata(root, set(manifest["classes"]))
        counts = Counter(r.label for r in records)
        expected = {c: n for c, n in manifest["counts"].items() if n}
        if dict(counts) != expected:
            raise ImageSetError(f"{root / METADATA}: per-class counts {dict(counts)} disagree with "
                                f"{MANIFEST} counts {expected}")
        return cls(root, manifest, records, transform)

    # ---- properties
    @property
    def id(self) -> str:
        return self.manifest["id"]

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    @property
    def class_order(self) -> str:
        """``"sorted"`` (label indices follow sorted class names, as ImageFolder's do) or ``"as written"``
        (a set from before imgsynth sorted classes: indices follow its manifest, ImageFolder's differ)."""
        return class_order(self.classes)

    @property
    def display_order(self) -> list[str]:
        """The classes in the order they were given when the set was written (for display only)."""
        return list(self.manifest.get("display_order") or self.classes)

    def imagefolder_difference(self) -> str | None:
        """Why ``torchvision.datasets.ImageFolder(set/images)`` would give some image another label index
        than this set does, or None when it agrees on every image.

        ImageFolder numbers the class folders it finds in sorted order, so it differs for a set whose
        classes are not sorted, and for one where a class without images sorts before a class with them.
        """
        present = label_order([c for c in self.classes if self.counts.get(c)])
        if all(self.class_to_index[c] == i for i, c in enumerate(present)):
            return None
        if self.class_order != SORTED:
            return (f"its classes are in the order written ({', '.join(self.classes)}), ImageFolder numbers them "
                    "in sorted order; read labels through the manifest, or re-write the set (e.g. imgsynth data "
                    "import) to get sorted indices")
        empty = [c for c in self.classes if not self.counts.get(c)]
        return (f"class(es) {', '.join(empty)} have no images: ImageFolder finds no folder for them and numbers "
                "the classes after them one lower")

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def parents(self) -> list[dict[str, Any]]:
        return list(self.manifest.get("parents", []))

    @property
    def image_size(self) -> tuple[int, int] | None:
        size = self.manifest.get("image_size")
        return tuple(size) if size else None

    @property
    def labels(self) -> list[int]:
        """Label index of every image, in metadata order."""
        return [self.class_to_index[r.label] for r in self.records]

    @property
    def counts(self) -> dict[str, int]:
        return {c: int(self.manifest["counts"].get(c, 0)) for c in self.classes}

    # ---- Dataset protocol
    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[Any, int, str]:
        record = self.records[index]
        image = self.load_image(index)
        if self.transform is not None:
            item = self.transform(image)
        else:
            item = _to_tensor(image)
        return item, self.class_to_index[record.label], record.caption

    def __iter__(self) -> Iterator[tuple[Any, int, str]]:
        for i in range(len(self)):
            yield self[i]

    def __repr__(self) -> str:
        return f"ImageSet({str(self.root)!r}, id={self.id[:12]}, kind={self.kind}, n={len(self)}, classes={len(self.classes)})"

    def path_of(self, index: int) -> Path:
        return self.root / self.records[index].file_name

    def load_image(self, index: int) -> Image.Image:
        """The image at ``index`` as a loaded PIL image (mode as stored: 'L' or 'RGB'), checked as it is read.

        The bytes must hash to the recorded sha256 and decode to the manifest's mode and size
        (:mod:`imgsynth.image_files`); anything else is an ImageSetError naming the file.
        """
        return self._decode(index, self.read_bytes(index))

    def read_bytes(self, index: int, *, decode: bool = False) -> bytes:
        """The file's bytes, only if it is a regular file inside the set whose sha256 is the recorded one.

        With ``decode`` the bytes must also decode to the manifest's mode and size, for callers that
        hand the bytes on without reading the pixels themselves (exports).
        """
        record = self.records[index]
        data = read_regular_file(self.root, record.file_name, self._real_root, self._real_folders)
        check_sha256(data, record.sha256, self.root, record.file_name)
        if decode:
            self._decode(index, data)
        return data

    def _decode(self, index: int, data: bytes) -> Image.Image:
        return decode_image(data, self.path_of(index), mode=self.manifest.get("image_mode"), size_hw=self.image_size)

    def check_files(self) -> None:
        """Read and hash every image file (no decoding), raising at the first one that is not as recorded.

        For readers that skip the pixels, such as a feature-cache hit, so that a changed file is still
        refused rather than answered with the features of what the file used to be.
        """
        for index in range(len(self)):
            self.read_bytes(index)

    def with_transform(self, transform: Callable[[Image.Image], Any] | None) -> ImageSet:
        """The same set with another per-item transform (no files are touched)."""
        return ImageSet(self.root, self.manifest, self.records, transform)

    def as_array(self) -> np.ndarray:
        """All images as one uint8 array (N, H, W) for grayscale or (N, H, W, 3) for RGB."""
        return np.stack([np.asarray(self.load_image(i)) for i in range(len(self))])

    def verify(self) -> VerifyReport:
        """Check every image of this set against its metadata and manifest (see :func:`verify`)."""
        return verify(self.root)

    def indices_of_class(self, label: str) -> list[int]:
        return [i for i, r in enumerate(self.records) if r.label == label]

    # ---- derived sets
    def subset(self, indices: Sequence[int], out: str | os.PathLike, *, kind: str | None = None,
               config: Mapping[str, Any] | None = None, annotations: Mapping[str, Any] | None = None,
               classes: Sequence[str] | None = None) -> ImageSet:
        """Write the images at ``indices`` (bytes copied, hashes kept) as a new set whose parent is this one."""
        writer = ImageSetWriter(out, classes or self.display_order, kind=kind or self.kind, parents=[self],
                                generator=self.manifest.get("generator"), config=config,
                                license=self.manifest.get("license"), annotations=annotations)
        writer.write_all(self._samples(indices))
        return writer.finalize()

    def split(self, fraction: float, seed: int, out_first: str | os.PathLike,
              out_second: str | os.PathLike) -> tuple[ImageSet, ImageSet]:
        """Stratified, seeded split: ``fraction`` of every class goes to the second set (e.g. test)."""
        first, second = stratified_split_indices(self.labels, fraction, seed)
        config = {"split": {"fraction": fraction, "seed": seed}}
        return (self.subset(first, out_first, config={**config, "part": "first"}),
                self.subset(second, out_second, config={**config, "part": "second"}))

    def _samples(self, indices: Iterable[int], prefix: str = "") -> Iterator[Sample]:
        for i in indices:
            r = self.records[i]
            yield Sample(self.read_bytes(i), r.label, r.caption, r.seed,
                         prefix + Path(r.file_name).stem, r.extra)


def _to_tensor(image: Image.Image) -> Any:
    import torch

    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[None]
    else:
        array = array.transpose(2, 0, 1)
    return torch.from_numpy(array.copy()).float().div_(255.0)


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


# --------------------------------------------------------------------------------------------- verify

@dataclass(frozen=True)
class Problem:
    """One thing wrong with a set on disk: the file (or ``metadata.jsonl:LINE``) and what is wrong."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass
class VerifyReport:
    """Everything :func:`verify` found; ``ok`` when nothing."""

    root: Path
    problems: list[Problem] = field(default_factory=list)
    images_checked: int = 0
    set_id: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, where: str | os.PathLike, message: str) -> None:
        self.problems.append(Problem(str(where), message))

    def summary(self) -> str:
        if self.ok:
            return f"{self.root}: ok ({self.images_checked} images, id {self.set_id})"
        return f"{self.root}: {len(self.problems)} problem(s) found"

    def raise_for_problems(self) -> None:
        """Raise one ImageSetError listing every problem (for callers that need a valid set)."""
        if self.problems:
            raise ImageSetError("\n".join([self.summary(), *map(str, self.problems)]))


def verify(path: str | os.PathLike) -> VerifyReport:
    """Check a set on disk completely and report every problem rather than stopping at the first.

    Checks the manifest (present, valid JSON, fields, classes), every metadata line (JSON, fields,
    known label, ``file_name`` inside ``images/<label>/``, no repeats), every listed image (present,
    sha256 as recorded, a PNG that decodes to the end, size as in the manifest), files on disk that
    metadata does not list, and the manifest's id and counts against the metadata.
    """
    root = Path(path).absolute()
    report = VerifyReport(root)
    if not root.exists():
        partial = _partial_dir(root)
        hint = f" (an unfinished write is in {partial})" if partial.exists() else ""
        report.add(root, f"no such ImageSet folder{hint}")
        return report
    if not root.is_dir():
        report.add(root, "not a folder")
        return report
    if not any(root.iterdir()):
        report.add(root, f"empty folder: no {MANIFEST}, {METADATA} or {IMAGES}/; not an ImageSet")
        return report
    manifest = _verify_manifest(root, report)
    classes = set(manifest["classes"]) if manifest and isinstance(manifest.get("classes"), list) else None
    problems_before = len(report.problems)
    claimed: set[str] = set()
    rows = _verify_metadata_lines(root, classes, report, claimed)
    metadata_whole = len(report.problems) == problems_before
    real_root, folders = os.path.realpath(root), set()
    for where, row in rows:
        _verify_image(root, where, row, manifest, report, real_root, folders)
    _verify_no_strays(root, claimed, report)
    if manifest is not None and isinstance(manifest.get("classes"), list):
        _verify_card(root, manifest["classes"], report)
    # With broken metadata lines the id and counts cannot agree; saying so again would only be noise.
    if manifest is not None and metadata_whole:
        _verify_manifest_agrees(root, manifest, [row for _, row in rows], report)
    report.images_checked = len(rows)
    report.set_id = manifest.get("id") if manifest else None
    return report


def _verify_manifest(root: Path, report: VerifyReport) -> dict[str, Any] | None:
    """The manifest if it parses (its broken fields set to None so later checks skip them), else None."""
    path = root / MANIFEST
    if not path.is_file() and not path.is_symlink():
        report.add(path, "missing; this folder is not a finished ImageSet")
        return None
    try:
        manifest = parse_json(read_set_file(root, MANIFEST), str(path))
    except ImageSetError as exc:
        report.add(path, str(exc).removeprefix(f"{path}: "))
        return None
    problems = manifest_problems(manifest)
    for problem in problems:
        report.add(path, problem)
    if not isinstance(manifest, dict):
        return None
    for key in ("classes", "counts", "image_size", "image_mode"):
        if any(problem.startswith(f"'{key}'") for problem in problems):
            manifest[key] = None
    return manifest


_FILE_NAME_IN_TEXT = re.compile(rb'"file_name"\s*:\s*"([^"]+)"')


def _verify_metadata_lines(root: Path, classes: set[str] | None, report: VerifyReport,
                           claimed: set[str]) -> list[tuple[str, dict[str, Any]]]:
    """Every structurally sound metadata row with its ``file:line``; problems for the others.

    ``claimed`` receives every file name a line mentions, sound or not, so that the files of broken
    lines are not reported a second time as strays.
    """
    path = root / METADATA
    if not path.is_file() and not path.is_symlink():
        report.add(path, "missing")
        return []
    try:
        lines = metadata_lines(root)
    except ImageSetError as exc:
        report.add(path, str(exc).removeprefix(f"{path}: "))
        return []
    rows: list[tuple[str, dict[str, Any]]] = []
    seen: dict[str, str] = {}
    real_root, folders = os.path.realpath(root), set()
    for where, line in lines:
        named = _FILE_NAME_IN_TEXT.search(line)
        if named:
            claimed.add(named.group(1).decode("utf-8", "replace"))
        try:
            row = parse_metadata_line(root, where, line, classes, real_root, folders)
        except ImageSetError as exc:
            report.add(where, str(exc).removeprefix(f"{where}: "))
            continue
        if row["file_name"] in seen:
            report.add(where, f"file_name {row['file_name']!r} already listed at {seen[row['file_name']]}")
            continue
        seen[row["file_name"]] = where
        rows.append((where, row))
    if not lines:
        report.add(path, "no images listed; an ImageSet cannot be empty")
    return rows


def _verify_image(root: Path, where: str, row: Mapping[str, Any], manifest: Mapping[str, Any] | None,
                  report: VerifyReport, real_root: str, known_real_folders: set[str]) -> None:
    """Check one listed image as every reader would read it, then its hash, reporting each problem."""
    path = root / row["file_name"]
    try:
        data = read_regular_file(root, row["file_name"], real_root, known_real_folders)
    except ImageFileError as exc:
        report.add(path, f"{str(exc).split(': ', 1)[1]} (listed at {where})")
        return
    try:
        check_sha256(data, row["sha256"], root, row["file_name"])
    except ImageFileError as exc:
        report.add(path, f"sha256 mismatch: {where} records {str(row['sha256'])[:16]}…, the file hashes to "
                         f"{sha256_bytes(data)[:16]}…")
    manifest = manifest or {}
    try:
        decode_image(data, path, mode=manifest.get("image_mode"), size_hw=manifest.get("image_size"),
                     check_crc=True)
    except ImageSetError as exc:
        report.add(path, str(exc).removeprefix(f"{path}: "))


def _verify_no_strays(root: Path, listed: set[str], report: VerifyReport) -> None:
    """Files metadata does not list would be read by ImageFolder/imagefolder but not by ImageSet; links
    would let either read files outside the set."""
    for entry in sorted(root.iterdir()):
        if entry.is_symlink():
            report.add(entry, f"a symbolic link (to {os.readlink(entry)}); an ImageSet holds regular files only")
        elif entry.name == IMAGES and entry.is_dir():
            continue
        elif entry.name not in ROOT_FILES:
            report.add(entry, f"stray {'folder' if entry.is_dir() else 'file'}: not part of an ImageSet")
    images = root / IMAGES
    if images.is_symlink() or not images.is_dir():
        if listed and not images.is_symlink():
            report.add(images, "missing")
        return
    for folder, dirs, files in os.walk(images):
        dirs.sort()
        for name in list(dirs):
            if (Path(folder) / name).is_symlink():
                report.add(Path(folder) / name, "a symbolic link to a folder; ImageFolder would read files "
                                                "outside the set")
                dirs.remove(name)
        if not dirs and not files:
            report.add(folder, "empty folder (torchvision ImageFolder fails on empty class folders)")
        for name in sorted(files):
            relative = (Path(folder) / name).relative_to(root).as_posix()
            if (Path(folder) / name).is_symlink() and relative not in listed:
                report.add(Path(folder) / name, "a symbolic link; an ImageSet holds regular files only")
            elif relative not in listed:
                report.add(Path(folder) / name, f"stray file: on disk but not listed in {METADATA}")


def _verify_card(root: Path, classes: Sequence[str], report: VerifyReport) -> None:
    """The dataset card imgsynth wrote must name the manifest's classes in its order, or ``datasets``
    would give images other label indices than every other reader (a user's own card is not checked)."""
    path = root / CARD
    if not path.is_file() or path.is_symlink():
        return  # sets written before cards existed have none; a link is reported as one above
    try:
        declared = card_classes(read_set_file(root, CARD).decode("utf-8", "replace"))
    except ImageSetError as exc:
        report.add(path, str(exc).removeprefix(f"{path}: "))
        return
    except ValueError as exc:
        report.add(path, str(exc))
        return
    if declared is not None and declared != list(classes):
        report.add(path, f"declares label classes {declared}, but {MANIFEST} has {list(classes)}; "
                         "datasets would give images other label indices")


def _verify_manifest_agrees(root: Path, manifest: Mapping[str, Any], rows: Sequence[Mapping[str, Any]],
                            report: VerifyReport) -> None:
    path = root / MANIFEST
    if not rows:
        return
    actual_id = content_id((str(r["sha256"]), r["label"]) for r in rows)
    if "id" in manifest and manifest["id"] != actual_id:
        report.add(path, f"id {str(manifest['id'])[:16]}… does not match the content listed in {METADATA} "
                         f"(which hashes to {actual_id[:16]}…)")
    counts = Counter(r["label"] for r in rows)
    if isinstance(manifest.get("counts"), dict):
        try:
            expected = {c: int(n) for c, n in manifest["counts"].items() if int(n)}
        except (TypeError, ValueError):
            report.add(path, f"'counts' must map class names to integers, got {manifest['counts']}")
        else:
            if dict(counts) != expected:
                report.add(path, f"counts {expected} disagree with {METADATA}, which lists {dict(sorted(counts.items()))}")
    if "num_images" in manifest and manifest["num_images"] != len(rows):
        report.add(path, f"num_images {manifest['num_images']} but {METADATA} lists {len(rows)} valid rows")


# --------------------------------------------------------------------------------------------- operations

def stratified_split_indices(labels: Sequence[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split indices so each class sends round(fraction * n_c) items (at least 1 when n_c ≥ 2) to the second part."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"split fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    labels_arr = np.asarray(labels)
    first: list[int] = []
    second: list[int] = []
    for label in sorted(set(labels_arr.tolist())):
        members = np.flatnonzero(labels_arr == label)
        members = members[rng.permutation(len(members))]
        k = int(round(fraction * len(members)))
        if len(members) >= 2:
            k = min(max(k, 1), len(members) - 1)
        second.extend(members[:k].tolist())
        first.extend(members[k:].tolist())
    return sorted(first), sorted(second)


def concatenate(sets: Sequence[ImageSet], out: str | os.PathLike, *, kind: str = "mixed",
                config: Mapping[str, Any] | None = None) -> ImageSet:
    """Join sets (e.g. real + all earlier generations for ``accumulate`` loops) into a new set.

    Classes are the union (indexed in sorted order, displayed in first-seen order); image ids are
    prefixed with the parent's short id so files from different parents never clash.
    """
    if not sets:
        raise ImageSetError(f"{out}: nothing to concatenate")
    classes: list[str] = []
    for s in sets:
        classes.extend(c for c in s.display_order if c not in classes)
    licenses = [s.manifest.get("license") for s in sets]
    writer = ImageSetWriter(out, classes, kind=kind, parents=list(sets), config=config,
                            license={"name": "mixed", "parts": licenses})

    def samples() -> Iterator[Sample]:
        for s in sets:
            yield from s._samples(range(len(s)), prefix=f"{s.id[:8]}_")

    writer.write_all(samples())
    return writer.finalize()
