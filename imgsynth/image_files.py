"""Reading one image file of a set safely: a regular file inside the set, its hash checked, decoded in bounds.

Every stage reads pixels through :meth:`imgsynth.imageset.ImageSet.read_bytes` / ``load_image``, which
use these functions, so no stage sees bytes the metadata does not vouch for:

* the path must be a regular file reached without symbolic links (no links, FIFOs, sockets or
  folders; a FIFO is opened non-blocking so it cannot hang a reader);
* the bytes must hash to the sha256 in ``metadata.jsonl`` (hashing is cheap next to decoding:
  ``benchmarks/README.md``, "Hash on read"), which is what lets the feature cache trust a set's id;
* the header's pixel count is bounded before any pixel is decoded, and the decoded mode and size
  must be the manifest's.

Each failure is an :class:`ImageFileError` (an ``ImageSetError``) whose message starts with the file's path.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import posixpath
import stat
from pathlib import Path
from typing import Collection, Sequence

from PIL import Image, UnidentifiedImageError

from imgsynth.errors import ImageSetError

# Refuse anything larger before decoding: 2^26 pixels is an 8192 x 8192 image, far beyond what any
# imgsynth generator writes, and well below PIL's own decompression-bomb limit.
MAX_PIXELS = 1 << 26
# A PNG of MAX_PIXELS RGB pixels that does not compress at all, plus chunk overhead.
MAX_FILE_BYTES = 3 * MAX_PIXELS + (1 << 20)


class ImageFileError(ImageSetError):
    """An image file of a set cannot be used; the message names the file and the problem."""


def read_regular_file(root: Path, file_name: str, real_root: str | None = None,
                      known_real_folders: set[str] | None = None, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of ``root/file_name`` (``file_name`` relative and normalised), which must be a regular
    file reached from the root without symbolic links: links inside a set would let it read (or let
    ImageFolder read) files that are not part of it.

    ``real_root`` is ``os.path.realpath(root)``, if known. ``known_real_folders`` remembers folders
    already found free of links, so a set's few class folders are resolved once, not once per image
    (resolving a path costs more than reading and hashing a small PNG).
    """
    real_root = real_root or os.path.realpath(root)
    folder = posixpath.dirname(file_name)
    if known_real_folders is None or folder not in known_real_folders:
        lexical = os.path.normpath(os.path.join(real_root, folder))
        if os.path.realpath(lexical) != lexical:
            raise ImageFileError(f"{root / file_name}: lies behind a symbolic link; an ImageSet holds regular "
                                 "files only")
        if known_real_folders is not None:
            known_real_folders.add(folder)
    try:
        descriptor = os.open(os.path.join(real_root, file_name), os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise ImageFileError(f"{root / file_name}: missing") from None
    except OSError as exc:
        what = "a symbolic link" if exc.errno == errno.ELOOP else f"cannot be opened ({exc.strerror})"
        raise ImageFileError(f"{root / file_name}: {what}; an ImageSet holds regular files only") from None
    info = os.fstat(descriptor)  # before fdopen, which refuses folders with a message naming the descriptor
    if not stat.S_ISREG(info.st_mode):
        os.close(descriptor)
        what = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file (a FIFO, socket or device)"
        raise ImageFileError(f"{root / file_name}: {what}; an ImageSet holds regular files only")
    with os.fdopen(descriptor, "rb", buffering=0) as handle:
        if info.st_size > limit:
            raise ImageFileError(f"{root / file_name}: {info.st_size} bytes, over the {limit}-byte limit for one file")
        return handle.read(info.st_size + 1)  # +1: a file that grew since fstat is read as it is now, to EOF


def check_sha256(data: bytes, expected: str, root: Path, file_name: str) -> None:
    """Raise unless ``data`` (of ``root/file_name``) hashes to ``expected``, the value in ``metadata.jsonl``."""
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise ImageFileError(f"{root / file_name}: content changed since the set was written (sha256 {actual[:16]}…, "
                             f"metadata.jsonl records {str(expected)[:16]}…); the set cannot be trusted — "
                             "restore the file or rebuild the set")


def decode_image(data: bytes, path: Path | str, *, mode: str | None = None,
                 size_hw: Sequence[int] | None = None, max_pixels: int = MAX_PIXELS,
                 check_crc: bool = False, formats: Collection[str] = ("PNG",)) -> Image.Image:
    """Decode PNG bytes to a loaded PIL image, checking pixel count, format, mode and (H, W) size first.

    ``formats``: the PIL format names accepted (a set holds PNGs only; a plain folder of images handed to
    ``imgsynth metrics`` may also hold JPEGs and the other formats image-metric tools read).

    ``check_crc`` also checks every chunk's checksum (PIL's ``verify``), for ``imgsynth data verify``;
    readers need not, since the sha256 of the whole file was checked before decoding.
    """
    if not data:
        raise ImageFileError(f"{path}: not a readable image (empty file)")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageFileError(f"{path}: not a readable image (unrecognised data, {len(data)} bytes)") from None
    except Exception as exc:  # PIL raises a zoo of types for broken headers
        raise ImageFileError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageFileError(f"{path}: {width}x{height} pixels, over the limit of {max_pixels} pixels per image")
    if image.format not in formats:
        expected = "a PNG image" if tuple(formats) == ("PNG",) else f"an image in {', '.join(formats)}"
        raise ImageFileError(f"{path}: expected {expected}, found {image.format}")
    if mode is not None and image.mode != mode:
        raise ImageFileError(f"{path}: image mode {image.mode}, but the set's manifest says {mode}")
    if size_hw and [height, width] != [int(s) for s in size_hw]:
        raise ImageFileError(f"{path}: image is {height}x{width} (HxW); the manifest says {size_hw[0]}x{size_hw[1]}")
    try:
        if check_crc:
            with Image.open(io.BytesIO(data)) as probe:
                probe.verify()
        image.load()
    except Exception as exc:  # truncated or corrupt pixel data
        raise ImageFileError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from None
    return image
