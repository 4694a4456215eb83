"""What ``imgsynth metrics`` and ``imgsynth stats`` accept on either side, opened and checked before any work.

``open_metric_source(spec)`` returns one of:

* an :class:`~imgsynth.imageset.ImageSet` (a folder with ``imageset.json``);
* an :class:`ImageFolder`: a plain folder of images, read recursively. When every image lies in a
  sub-folder, the first sub-folder's name is its label (per-class metrics work, and class names follow
  the ImageSet naming rules); otherwise there are no labels and ``why_unlabeled`` says why;
* an :class:`HFImages`: ``hf:<path>``, a Hugging Face imagefolder or parquet dataset read offline as
  ``imgsynth data import`` reads it (``imgsynth.sources.load_hf_source``), images kept at their own size
  and converted to RGB;
* a :class:`~imgsynth.metrics.statistics_files.FeatureStatistics`: a ``.npz`` statistics file.

A folder is read through the same checks as a set's images (``imgsynth.image_files``): no symbolic links
anywhere below it, regular files only (a FIFO is refused at once, never waited on), the byte and pixel
limits before decoding. Its content is hashed when it is opened; ``id`` is a hash of every file's sha256
and label in order, so its features are cached by content as a set's are (``metrics/feature_cache.py``),
and each file must still hash to what was read when it is decoded.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from imgsynth.errors import ImageSetError
from imgsynth.image_files import (
    MAX_PIXELS,
    ImageFileError,
    check_sha256,
    decode_image,
    read_regular_file,
)
from imgsynth.imageset import ImageSet, check_labels
from imgsynth.metrics.statistics_files import FeatureStatistics, read_statistics

# What pytorch-fid and clean-fid read from a folder (their IMAGE_EXTENSIONS), by file extension and PIL format.
IMAGE_EXTENSIONS = frozenset({".bmp", ".jpg", ".jpeg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp"})
IMAGE_FORMATS = ("PNG", "JPEG", "MPO", "BMP", "PPM", "TIFF", "WEBP")
# Images a folder may hold before anything is read: ten times the field's 50,000-image evaluations.
MAX_FOLDER_IMAGES = 10_000_000
HF_MODE = "RGB"


@dataclass(frozen=True)
class SourceRecord:
    """One image of a folder or dataset: where it is, its sha256, its label ("" when unlabeled), caption."""

    file_name: str
    sha256: str
    label: str
    caption: str


def _content_id(kind: str, records: list[SourceRecord]) -> str:
    digest = hashlib.sha256(kind.encode())
    for record in records:
        digest.update(f"\n{record.sha256}\t{record.label}".encode())
    return f"{kind}:{digest.hexdigest()}"


def _one(values: set) -> object | None:
    return next(iter(values)) if len(values) == 1 else None


class ImageFolder:
    """A plain folder of images, opened for metrics (see the module docstring). Rows in sorted path order."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self._real_root = os.path.realpath(self.root)
        files = self._scan()
        if not files:
            raise ImageSetError(f"{self.root}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) below it")
        nested = [f for f in files if "/" in f]
        if len(nested) == len(files):
            labels = [f.split("/", 1)[0] for f in files]
            self.classes = sorted(set(labels))
            check_labels(self.classes, f"{self.root} (class sub-folders)")
            self.why_unlabeled: str | None = None
        else:
            labels = [""] * len(files)
            self.classes = []
            self.why_unlabeled = (f"{self.root} has no class sub-folders (images lie directly in it), so its images "
                                  "carry no labels" if not nested else
                                  f"{self.root} has images both directly in it and in sub-folders, so its images "
                                  "carry no labels (put every image in a class sub-folder for per-class metrics)")
        records, sizes, modes = [], set(), set()
        known: set[str] = set()
        for file_name, label in zip(files, labels):
            data = read_regular_file(self.root, file_name, self._real_root, known)
            try:
                with Image.open(io.BytesIO(data)) as probe:
                    width, height = probe.size
                    sizes.add((height, width))
                    modes.add(probe.mode)
            except Exception as exc:  # noqa: BLE001 - PIL raises a zoo of types for broken headers
                raise ImageFileError(f"{self.root / file_name}: not a readable image ({type(exc).__name__}: "
                                     f"{exc})") from None
            if width * height > MAX_PIXELS:
                raise ImageFileError(f"{self.root / file_name}: {width}x{height} pixels, over the limit of "
                                     f"{MAX_PIXELS} pixels per image")
            records.append(SourceRecord(file_name, hashlib.sha256(data).hexdigest(), label, label))
        self.records = records
        self.image_size = _one(sizes)
        self.image_mode = _one(modes)
        self.id = _content_id("folder", records)
        self._known_folders = known

    def _scan(self) -> list[str]:
        """Relative paths of the image files below the root, sorted; links and special files refused."""
        try:
            info = os.stat(self.root)  # the folder given may be a link; nothing below it may
        except FileNotFoundError:
            raise ImageSetError(f"{self.root}: no such folder") from None
        if not stat.S_ISDIR(info.st_mode):
            raise ImageSetError(f"{self.root}: not a folder of images, an ImageSet, hf:<dataset> or a .npz "
                                "statistics file")
        found: list[str] = []
        stack = [""]
        while stack:
            relative = stack.pop()
            with os.scandir(os.path.join(self.root, relative)) as entries:
                for entry in entries:
                    if entry.name.startswith("."):
                        continue  # hidden files and folders (.DS_Store, .ipynb_checkpoints, a partial write)
                    name = f"{relative}/{entry.name}" if relative else entry.name
                    if entry.is_symlink():
                        raise ImageFileError(f"{self.root / name}: a symbolic link; a folder of images is read "
                                             "without following links — copy the file in instead")
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(name)
                    elif Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS:
                        if not entry.is_file(follow_symlinks=False):
                            raise ImageFileError(f"{self.root / name}: not a regular file (a FIFO, socket or "
                                                 "device); a folder of images holds regular files only")
                        found.append(name)
                        if len(found) > MAX_FOLDER_IMAGES:
                            raise ImageSetError(f"{self.root}: more than {MAX_FOLDER_IMAGES} images")
        return sorted(found)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Image.Image:
        return self.load_image(index)

    def load_image(self, index: int) -> Image.Image:
        """The image at ``index``, read through the checked reader, its bytes those hashed when opened."""
        record = self.records[index]
        data = read_regular_file(self.root, record.file_name, self._real_root, self._known_folders)
        check_sha256(data, record.sha256, self.root, record.file_name)
        return decode_image(data, self.root / record.file_name, formats=IMAGE_FORMATS)

    def check_files(self) -> None:
        """Every file was read and hashed when the folder was opened; ``load_image`` checks each again."""

    def __repr__(self) -> str:
        return f"ImageFolder({str(self.root)!r}, n={len(self)}, classes={len(self.classes)})"


class HFImages:
    """``hf:<path>``: a Hugging Face dataset read offline as ``imgsynth data import`` reads it, in memory."""

    def __init__(self, spec: str) -> None:
        from imgsynth.sources import load_hf_source

        self.root = spec
        location = spec.partition(":")[2]
        data = load_hf_source(location, size=None, mode=HF_MODE)
        self.images = data.images
        captions = data.captions or [f"a photo of {label}" for label in data.labels]
        self.records = [SourceRecord(f"{i}", hashlib.sha256(_pixel_bytes(image)).hexdigest(), label, caption)
                        for i, (image, label, caption) in enumerate(zip(data.images, data.labels, captions))]
        self.classes = list(data.classes)
        self.why_unlabeled = None
        self.image_size = _one({(image.height, image.width) for image in data.images})
        self.image_mode = HF_MODE
        self.id = _content_id("hf", self.records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Image.Image:
        return self.images[index]

    def load_image(self, index: int) -> Image.Image:
        return self.images[index]

    def check_files(self) -> None:
        """The images were read and hashed when the dataset was loaded."""

    def __repr__(self) -> str:
        return f"HFImages({self.root!r}, n={len(self)})"


def _pixel_bytes(image: Image.Image) -> bytes:
    return f"{image.mode}:{image.width}x{image.height}:".encode() + image.tobytes()


Images = ImageSet | ImageFolder | HFImages
MetricSource = ImageSet | ImageFolder | HFImages | FeatureStatistics


def source_name(source: MetricSource) -> str:
    """How messages name a side: its folder, dataset spec or file."""
    return str(source.path if isinstance(source, FeatureStatistics) else source.root)


def open_metric_source(spec: str | os.PathLike) -> MetricSource:
    """Open one side of ``imgsynth metrics`` (or the source of ``imgsynth stats``), checked; see the module
    docstring. An unfinished set, a model or run folder, or a folder of imported train/test sets is refused
    with one line saying what it is."""
    from imgsynth.outputs import IMAGESET, IMPORTED, folder_kind

    text = os.fspath(spec)
    if text.startswith("hf:"):
        return HFImages(text)
    path = Path(text).expanduser()
    if path.suffix.lower() == ".npz" or path.is_file():
        return read_statistics(path)
    kind = folder_kind(path) if path.is_dir() else None
    if kind == IMAGESET or ((path / "metadata.jsonl").is_file() and (path / "images").is_dir()):
        return ImageSet.open(path)  # a set being written is refused there, as "not a finished ImageSet"
    if kind == IMPORTED:
        raise ImageSetError(f"{path}: an {kind}; give {path / 'train'} or {path / 'test'}")
    if kind is not None:
        raise ImageSetError(f"{path}: a {kind}, not images: give an ImageSet, a folder of images, hf:<dataset> "
                            "or a .npz statistics file")
    return ImageFolder(path)
