"""The two sides of one set on disk: :class:`ImageSetWriter` makes a set, :class:`ImageSet` is an opened one.

They share a module because each needs the other: ``finalize`` opens the set it wrote, and
``subset``/``split`` write the sets they select. Kept apart they would import each other, and
modules of imgsynth do not import in circles.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
from PIL import Image

from imgsynth.atomic_files import write_text_atomic
from imgsynth.dataset_card import CARD, card_text, column_types
from imgsynth.errors import ImageSetError
from imgsynth.image_files import check_sha256, decode_image, read_regular_file
from imgsynth.imageset.layout import FORMAT_VERSION, IMAGES, JOB, MANIFEST, METADATA, partial_dir, shard_name
from imgsynth.imageset.metadata import read_metadata, read_set_file
from imgsynth.imageset.names import check_image_id, check_label, check_labels
from imgsynth.imageset.png import encode_generated, encode_png
from imgsynth.imageset.records import BASE_COLUMNS, ImageRecord, Sample, training_weights
from imgsynth.imageset.splitting import stratified_split_indices
from imgsynth.imageset.verification import VerifyReport, verify
from imgsynth.locking import FolderLock, acquire, release
from imgsynth.notes import Note
from imgsynth.provenance import content_id, license_record, sha256_bytes, software_versions
from imgsynth.provenance.markers import Marking, image_fields
from imgsynth.safe_paths import LinkedPathError, make_dirs_inside, refuse_links_below, write_file_inside
from imgsynth.set_schema import KINDS, SORTED, check_manifest, class_order, label_order, parse_json


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
                 annotations: Mapping[str, Any] | None = None, locked_by_driver: bool = False,
                 marking: Marking | None = None) -> None:
        self.root = Path(root).absolute()
        if kind not in KINDS:
            raise ImageSetError(f"{self.root}: kind must be one of {KINDS}, got {kind!r}")
        if not classes:
            raise ImageSetError(f"{self.root}: an ImageSet needs at least one class")
        given = check_labels(classes, str(self.root))
        self.classes = label_order(given)
        self.display_order = given if given != self.classes else None
        self.kind = kind
        self.parents = [_parent_entry(p, self.root) for p in parents]
        self.generator = dict(generator or {})
        self.config = dict(config or {})
        self.license = license_record(license)
        self.annotations = dict(annotations or {})
        # Images this writer encodes itself (PIL images, not bytes) of a generated set carry the markers of
        # imgsynth.provenance.markers; bytes (curated, mixed, copies) are kept as they are.
        self.marking = marking or Marking()
        self._records_markers = marking is not None  # a generator's job (SetSpec) says what it marks
        if self.marking.any and kind != "generated":
            raise ImageSetError(f"{self.root}: watermarks and C2PA signing apply to generated sets, not {kind!r} ones")
        self._skipped_watermark: str | None = None
        self.partial = partial_dir(self.root)
        self._classes_set = set(self.classes)
        self._made_folders: set[str] = set()  # class folders of the partial made and found free of links
        # Workers of one job (Ray actors, accelerate ranks) write into the partial their driver holds.
        self._joined = locked_by_driver
        self._lock: FolderLock | None = None if locked_by_driver else acquire(self.root)
        try:
            if self.root.exists() and not (self.root / MANIFEST).is_file() and any(self.root.iterdir()):
                raise ImageSetError(f"{self.root}: folder exists and is not an ImageSet; refusing to write into it")
            if self.root.is_symlink() and not (self.root / MANIFEST).is_file():
                # The finished set is renamed into place: it would replace the link, not fill what it points at.
                raise LinkedPathError(f"{self.root}: a symbolic link (to {os.readlink(self.root)}); a set is renamed "
                                      "into place, so give the folder the link points at, or another folder")
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
        identity = {"classes": self.classes, "kind": self.kind, "parents": self.parents,
                    "generator": self.generator, "config": self.config}
        if self.kind == "generated":  # images written with other markers must not be mixed in by a resume
            identity["markers"] = {"xmp": 1, **self.marking.identity()}
        job = json.dumps(identity, sort_keys=True, default=_json_default)
        job_path = self.partial / JOB
        if self.partial.is_symlink():
            raise LinkedPathError(f"{self.partial}: a symbolic link (to {os.readlink(self.partial)}) where "
                                  f"imgsynth writes {self.root}; imgsynth never writes through links — remove it")
        if self.partial.exists():
            previous = job_path.read_text(encoding="utf-8") if job_path.is_file() else None
            if previous != job:
                if self._joined:
                    raise ImageSetError(f"{self.partial}: holds an unfinished write of a different job than "
                                        "this worker's driver started")
                warnings.warn(f"{self.partial}: discarding an unfinished write of a different job", Note,
                              stacklevel=3)
                shutil.rmtree(self.partial)
        # Resuming: nothing an earlier write left may lead this write out of the partial folder.
        refuse_links_below(self.partial)
        make_dirs_inside(self.partial, "shards")
        if not job_path.is_file():
            write_text_atomic(job_path, job)

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
            file_name = f"{IMAGES}/{label}/{image_id}.png"
            extra = dict(sample.extra)
            if isinstance(sample.image, bytes):
                data = sample.image
            elif self.kind == "generated":
                data, mark = encode_generated(
                    sample.image, image_fields(self.generator, seed=sample.seed, label=label, extra=sample.extra),
                    self.marking, title=f"{image_id}.png",
                    parents=tuple(str(p.get("id")) for p in self.parents if p.get("id")))
                if self.marking.watermark:
                    extra["watermarked"] = mark is not None
                    if mark is None:
                        self._note_unwatermarked(sample.image)
            else:
                data = encode_png(sample.image)
            if label not in self._made_folders:  # once per class: a link there is refused, not written through
                make_dirs_inside(self.partial, f"{IMAGES}/{label}")
                self._made_folders.add(label)
            write_file_inside(self.partial / file_name, data)
            records.append(ImageRecord(file_name, label, sample.caption,
                                       None if sample.seed is None else int(sample.seed),
                                       sha256_bytes(data), extra))
        lines = "".join(json.dumps(r.to_row(), default=_json_default) + "\n" for r in records)
        write_text_atomic(self.partial / "shards" / shard_name(index), lines)
        return records

    def _note_unwatermarked(self, image: Image.Image) -> None:
        """One note per writer when an image cannot carry the watermark (too small, or grayscale)."""
        from imgsynth.provenance.markers.watermark import why_not_watermarkable

        if self._skipped_watermark is None:
            self._skipped_watermark = why_not_watermarkable(image) or "cannot carry it"
            warnings.warn(f"{self.root}: no invisible watermark embedded: {self._skipped_watermark} (the XMP "
                          "marker and any C2PA manifest are written as asked)", Note, stacklevel=3)

    def markers_record(self, records: Sequence[ImageRecord] = ()) -> dict[str, Any] | None:
        """What the manifest records about the markers inside this set's generated images (None for sets of
        other kinds, whose images imgsynth does not mark, and for copies of generated images)."""
        if self.kind != "generated" or not self._records_markers:
            return None
        from imgsynth.provenance.markers.watermark import record as watermark_record
        from imgsynth.provenance.markers.xmp import TRAINED_ALGORITHMIC_MEDIA

        return {"xmp": {"digital_source_type": TRAINED_ALGORITHMIC_MEDIA,
                        "fields": ["generatorKind", "pipeline", "weightsSha256", "seed", "generation", "label"]},
                "watermark": {**watermark_record(), "images": sum(bool(r.extra.get("watermarked")) for r in records)}
                if self.marking.watermark else None,
                "c2pa": None if self.marking.c2pa is None else self.marking.c2pa.identity()}

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
            text = (self.partial / "shards" / shard_name(i)).read_text(encoding="utf-8")
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
        write_text_atomic(self.partial / METADATA,
                          "".join(json.dumps(r, default=_json_default) + "\n" for r in rows))
        write_text_atomic(self.partial / MANIFEST, json.dumps(manifest, indent=2, default=_json_default))
        write_text_atomic(self.partial / CARD, card_text(manifest["id"], self.classes, column_types(rows, columns)))
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
            **({"markers": markers} if (markers := self.markers_record(records)) is not None else {}),
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
            partial = partial_dir(root)
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
        _check_manifest_agrees(manifest_path, manifest, records)
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
    def weights(self) -> np.ndarray | None:
        """Every image's training weight (the ``weight`` column), or None for a set without one."""
        return training_weights(self.records, str(self.root / METADATA))

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


def _check_manifest_agrees(path: Path, manifest: Mapping[str, Any], records: Sequence[ImageRecord]) -> None:
    """The manifest's ``num_images`` and ``id`` against the rows just read (cheap: no pixels), so a reader
    never takes a set for another one; ``verify`` reports the same problems with the rest."""
    if "num_images" in manifest and manifest["num_images"] != len(records):
        raise ImageSetError(f"{path}: num_images {manifest['num_images']} but {METADATA} lists {len(records)} images")
    actual = content_id((r.sha256, r.label) for r in records)
    if manifest["id"] != actual:
        raise ImageSetError(f"{path}: id {manifest['id'][:16]}… does not match the content listed in {METADATA} "
                            f"(which hashes to {actual[:16]}…)")
