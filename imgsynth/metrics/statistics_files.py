"""Feature-statistics files (``.npz``): the one place that writes and reads them.

What ``imgsynth stats`` writes and ``imgsynth metrics`` reads on either side::

    mu        float64 (d,)      mean of the features
    sigma     float64 (d, d)    covariance, divisor n − 1 (numpy.cov's and pytorch-fid's)
    features  float32 (n, d)    optional (``--with-features``): what KID and precision/recall need
    header    uint8 (bytes,)    UTF-8 JSON: format, version, extractor, extractor_id, weights_sha256,
                                resize_convention, preprocessing, image_size, image_mode, n, dims, source

The header is a plain byte array, never an object array, so every reader loads the file with
``allow_pickle=False``; pytorch-fid (``np.load(path)['mu']``) and clean-fid read ``mu`` and ``sigma`` of it
as they read their own. Their files (``mu`` and ``sigma`` only) are read too: such a file does not say
which extractor made it, so whoever passes it vouches for it (``FeatureStatistics.header`` is None).

Reading never unpickles and never allocates what the file merely claims: the zip members' ``.npy``
headers are parsed first (``np.lib.format``), dtypes and shapes checked against each other and against
bounds (``MAX_DIMS``, ``MAX_FEATURE_BYTES``) and each member's size against what its shape needs; only
then is an array read (``np.lib.format.read_array(..., allow_pickle=False)``). NaN or infinite values, a
non-symmetric covariance, a header that contradicts the arrays: each is one ``StatisticsFileError`` (a
``ValueError``) naming the file and the member.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from imgsynth.atomic_files import atomic_path
from imgsynth.metrics.extractors.registry import DEFAULT_RESIZE_MODE
from imgsynth.structured_files import parse_json

FORMAT = "imgsynth-feature-statistics"
VERSION = 1
# Widest feature space a file may hold: sigma is d² float64 (16384² is 2 GiB). Every extractor here is far
# below it (Inception 2048, CLIP ≤ 1024, DINOv2 ≤ 1536), and so are pixel features of 64 × 64 RGB images.
MAX_DIMS = 16384
# Largest features array: 50,000 Inception features in float32 are 0.4 GB.
MAX_FEATURE_BYTES = 8 << 30
MAX_HEADER_BYTES = 1 << 20
MAX_MEMBERS = 64
MAX_DEFLATE_RATIO = 1032  # the most deflate can expand its input
FLOAT_KINDS = "f"
MEMBERS = ("mu", "sigma", "features", "header")
HEADER_FIELDS = {"format": str, "version": int, "extractor": str, "extractor_id": str,
                 "weights_sha256": (str, type(None)), "resize_convention": str, "preprocessing": str,
                 "image_size": (list, type(None)), "image_mode": (str, type(None)), "n": int, "dims": int,
                 "source": str}


class StatisticsFileError(ValueError):
    """A statistics file cannot be used; the message starts with the file's path and names the problem."""


@dataclass
class FeatureStatistics:
    """What a statistics file holds: ``mu`` (d,) and ``sigma`` (d, d) in float64, optionally ``features``
    (n, d) float32, and the ``header`` (None for a foreign file: pytorch-fid's, clean-fid's)."""

    path: Path
    mu: np.ndarray
    sigma: np.ndarray
    features: np.ndarray | None
    header: dict[str, Any] | None

    @property
    def n(self) -> int | None:
        """Images the statistics were computed from (None when the file does not say)."""
        if self.features is not None:
            return int(self.features.shape[0])
        return int(self.header["n"]) if self.header else None

    @property
    def image_size(self) -> tuple[int, int] | None:
        """The (H, W) of the images the file describes, when its header says and they were of one size."""
        size = self.header.get("image_size") if self.header else None
        return (int(size[0]), int(size[1])) if size else None

    @property
    def image_mode(self) -> str | None:
        return self.header.get("image_mode") if self.header else None


# ------------------------------------------------------------------------------------------- extractors

def resize_convention(extractor: Any) -> str:
    """The resize convention an extractor applies (``clean``, ``pytorch-fid``, ``torch-fidelity``): its
    ``resize_mode``; an extractor without modes (its preprocessing is its own) counts as the default,
    ``clean``. Every header and check asks here."""
    mode = getattr(extractor, "resize_mode", None)
    return str(mode) if mode else DEFAULT_RESIZE_MODE


def weights_sha256(extractor: Any) -> str | None:
    """The full sha256 of the extractor's weights where it is known (an ``weights_sha256`` attribute, or
    the Inception weights file), else None (the ``extractor_id`` still names a prefix of it)."""
    digest = getattr(extractor, "weights_sha256", None)
    if digest:
        return str(digest)
    name = str(getattr(extractor, "name", ""))
    if name == "inception" or name.startswith("inception:"):
        from imgsynth.metrics.extractors.digests import file_digest
        from imgsynth.metrics.extractors.inception import default_inception_weights

        path = Path(name.partition(":")[2]).expanduser() if ":" in name else default_inception_weights()
        return file_digest(path) if path.is_file() else None
    return None


def statistics_header(extractor: Any, *, n: int, dims: int, source: str, image_size: tuple[int, int] | None,
                      image_mode: str | None) -> dict[str, Any]:
    """The header ``imgsynth stats`` records for features of ``n`` images of ``source`` by ``extractor``."""
    return {"format": FORMAT, "version": VERSION, "extractor": str(extractor.name), "extractor_id": str(extractor.id),
            "weights_sha256": weights_sha256(extractor), "resize_convention": resize_convention(extractor),
            "preprocessing": str(extractor.preprocessing),
            "image_size": list(image_size) if image_size else None, "image_mode": image_mode,
            "n": int(n), "dims": int(dims), "source": source}


def check_extractor(statistics: FeatureStatistics, extractor: Any) -> str | None:
    """Refuse statistics another extractor (or another resize convention) made, naming both; for a
    foreign file, which does not say, return the note that the user vouches for it (else None)."""
    header = statistics.header
    if header is None:
        return (f"{statistics.path}: a statistics file without imgsynth's header (pytorch-fid or clean-fid "
                f"format): it does not say which extractor made it; using it as {extractor.name!r} features "
                f"({statistics.mu.shape[0]}-d) on your word")
    if header["extractor_id"] != extractor.id:
        raise StatisticsFileError(
            f"{statistics.path}: made by extractor {header['extractor']!r} (id {header['extractor_id']}), but "
            f"--features {extractor.name!r} is {extractor.id}; compare features of one extractor only")
    wanted = resize_convention(extractor)
    if header["resize_convention"] != wanted:
        raise StatisticsFileError(
            f"{statistics.path}: made with resize convention {header['resize_convention']!r}, but the extractor "
            f"asked for uses {wanted!r}; the convention moves FID by points, so the numbers would not compare")
    return None


# ------------------------------------------------------------------------------------------- writing

def write_statistics(path: str | os.PathLike, mu: np.ndarray, sigma: np.ndarray, header: Mapping[str, Any],
                     features: np.ndarray | None = None) -> Path:
    """Write a statistics file atomically (nothing half-written is ever left at ``path``); returns ``path``."""
    path = Path(path)
    arrays: dict[str, np.ndarray] = {
        "mu": np.ascontiguousarray(mu, dtype=np.float64), "sigma": np.ascontiguousarray(sigma, dtype=np.float64),
        "header": np.frombuffer(json.dumps(dict(header), sort_keys=True).encode("utf-8"), dtype=np.uint8)}
    if features is not None:
        arrays["features"] = np.ascontiguousarray(features, dtype=np.float32)
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as handle:  # a handle: np.savez would append .npz to a name without it
            np.savez(handle, **arrays)
    return path


# ------------------------------------------------------------------------------------------- reading

def _refuse(path: Path, problem: str) -> StatisticsFileError:
    return StatisticsFileError(f"{path}: {problem}")


def _array_header(handle: IO[bytes], path: Path, name: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """The shape, order and dtype a ``.npy`` member declares, read without reading its data."""
    try:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(handle)
        if version in ((2, 0), (3, 0)):
            return np.lib.format.read_array_header_2_0(handle)
    except Exception as exc:  # noqa: BLE001 - numpy raises ValueError or others for a mangled header
        raise _refuse(path, f"member {name!r} is not a readable .npy array ({type(exc).__name__}: {exc})") from None
    raise _refuse(path, f"member {name!r}: unsupported .npy version {version}")


def _check_declared(path: Path, name: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
    if dtype.hasobject:
        raise _refuse(path, f"member {name!r} is an object array (pickled Python objects); statistics files "
                      "hold numbers only, and pickles are never loaded")
    if name == "header":
        if dtype != np.uint8 or len(shape) != 1 or shape[0] > MAX_HEADER_BYTES:
            raise _refuse(path, f"member 'header' must be UTF-8 JSON bytes (uint8, at most {MAX_HEADER_BYTES} "
                          f"bytes), found {dtype} of shape {list(shape)}")
        return
    if dtype.kind not in FLOAT_KINDS or dtype.itemsize > 8:
        raise _refuse(path, f"member {name!r} has dtype {dtype}; expected floating-point numbers")
    wanted = {"mu": 1, "sigma": 2, "features": 2}[name]
    if len(shape) != wanted:
        raise _refuse(path, f"member {name!r} has shape {list(shape)}; expected {wanted} dimension(s)")
    if any(s > MAX_DIMS for s in shape[-1:]) or (name == "sigma" and shape[0] > MAX_DIMS):
        raise _refuse(path, f"member {name!r} declares shape {list(shape)}, over the limit of {MAX_DIMS} "
                      "feature dimensions")
    if name == "features" and int(np.prod(shape, dtype=np.float64)) * dtype.itemsize > MAX_FEATURE_BYTES:
        raise _refuse(path, f"member 'features' declares shape {list(shape)}, over the limit of "
                      f"{MAX_FEATURE_BYTES >> 30} GiB of features")


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path, name: str) -> np.ndarray:
    """One member's array: header checked, size checked against the shape, then read without pickle.

    The uncompressed size the zip directory claims is itself checked against the bytes stored (numpy writes
    members stored or deflated; deflate expands at most 1032-fold), so a directory entry that lies cannot
    make the reader allocate more than the file can fill."""
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise _refuse(path, f"member {name!r} uses zip compression method {info.compress_type}; numpy writes "
                      "stored or deflated members only")
    stored = info.compress_type == zipfile.ZIP_STORED
    if (stored and info.file_size != info.compress_size) or info.file_size > MAX_DEFLATE_RATIO * info.compress_size + 1024:
        raise _refuse(path, f"member {name!r} claims {info.file_size} bytes from {info.compress_size} stored "
                      "(truncated or altered)")
    with archive.open(info) as handle:
        shape, _fortran, dtype = _array_header(handle, path, name)
        _check_declared(path, name, shape, dtype)
        needed = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        offset = handle.tell()
    if info.file_size - offset != needed:
        raise _refuse(path, f"member {name!r} declares shape {list(shape)} of {dtype} ({needed} bytes) but holds "
                      f"{info.file_size - offset} bytes (truncated or altered)")
    try:
        with archive.open(info) as handle:
            array = np.lib.format.read_array(handle, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - truncated deflate stream, bad CRC, short read
        raise _refuse(path, f"member {name!r} cannot be read ({type(exc).__name__}: {exc})") from None
    if array.shape != tuple(shape) or array.dtype != dtype:
        raise _refuse(path, f"member {name!r} read as {array.dtype} {list(array.shape)}, not as declared")
    return array


@contextlib.contextmanager
def _open_archive(path: Path) -> Iterator[zipfile.ZipFile]:
    """The zip archive of a regular file (opened without blocking: a FIFO is refused, never waited on)."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise _refuse(path, "no such file") from None
    except IsADirectoryError:
        raise _refuse(path, "a folder, not a statistics file") from None
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise _refuse(path, "not a regular file (a FIFO, socket or device)")
    with os.fdopen(descriptor, "rb") as handle:
        try:
            archive = zipfile.ZipFile(handle)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            raise _refuse(path, f"not a readable .npz file ({type(exc).__name__}: {exc}); a statistics file is "
                          "written by `imgsynth stats`, pytorch-fid or clean-fid") from None
        with archive:
            yield archive


def _parse_header(raw: np.ndarray, path: Path) -> dict[str, Any]:
    header = parse_json(raw.tobytes(), f"{path} (member 'header')", StatisticsFileError)
    if not isinstance(header, dict):
        raise _refuse(path, "member 'header' is not a JSON object")
    if header.get("format") != FORMAT:
        raise _refuse(path, f"member 'header' has format {header.get('format')!r}, not {FORMAT!r}")
    for field, kinds in HEADER_FIELDS.items():
        value = header.get(field)
        if field not in header or not isinstance(value, kinds) or isinstance(value, bool):
            raise _refuse(path, f"header field {field!r} is missing or of the wrong type ({value!r})")
    if header["version"] > VERSION:
        raise _refuse(path, f"header version {header['version']} is newer than this imgsynth reads ({VERSION}); "
                      "upgrade imgsynth")
    size = header["image_size"]
    if size is not None and not (len(size) == 2 and all(isinstance(s, int) and 0 < s <= 1 << 20 for s in size)):
        raise _refuse(path, f"header field 'image_size' must be [height, width], got {size!r}")
    return header


def written_by_stats(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a statistics file ``imgsynth stats`` wrote (a zip with imgsynth's header), which a
    rerun may replace; reads the header member only, never the arrays. Anything else is not ours: False."""
    path = Path(path)
    try:
        with _open_archive(path) as archive:
            infos = archive.infolist()
            info = next((i for i in infos if i.filename == "header.npy"), None)
            if info is None or len(infos) > MAX_MEMBERS:  # read_statistics refuses it too
                return False
            _parse_header(_read_member(archive, info, path, "header"), path)
    except (StatisticsFileError, OSError):
        return False
    return True


def read_statistics(path: str | os.PathLike) -> FeatureStatistics:
    """Read and check a statistics file (ours, pytorch-fid's or clean-fid's); see the module docstring."""
    path = Path(path)
    with _open_archive(path) as archive:
        infos = archive.infolist()
        if len(infos) > MAX_MEMBERS:
            raise _refuse(path, f"{len(infos)} members; a statistics file has a handful")
        members = {info.filename[:-4]: info for info in infos if info.filename.endswith(".npy")}
        missing = [name for name in ("mu", "sigma") if name not in members]
        if missing:
            raise _refuse(path, f"no {' and no '.join(map(repr, missing))} array; found "
                          f"{sorted(members) or 'no arrays'} (a statistics file holds 'mu' and 'sigma')")
        arrays = {name: _read_member(archive, members[name], path, name) for name in MEMBERS if name in members}
    header = _parse_header(arrays["header"], path) if "header" in arrays else None
    mu, sigma = arrays["mu"].astype(np.float64), arrays["sigma"].astype(np.float64)
    d = mu.shape[0]
    if d == 0 or sigma.shape != (d, d):
        raise _refuse(path, f"'mu' has shape {list(mu.shape)} and 'sigma' {list(sigma.shape)}; expected (d,) and "
                      "(d, d) with d ≥ 1")
    features = arrays.get("features")
    if features is not None and features.shape[1] != d:
        raise _refuse(path, f"'features' are {features.shape[1]}-dimensional but 'mu' is {d}-dimensional")
    for name, array in (("mu", mu), ("sigma", sigma), ("features", features)):
        if array is not None and not bool(np.isfinite(array).all()):
            raise _refuse(path, f"'{name}' holds NaN or infinite values")
    asymmetry = float(np.abs(sigma - sigma.T).max())
    if asymmetry > 1e-8 * max(float(np.abs(sigma).max()), 1e-300):
        raise _refuse(path, f"'sigma' is not symmetric (max |Σ − Σᵀ| = {asymmetry:.3g}); it is not a covariance")
    if header is not None:
        if header["dims"] != d:
            raise _refuse(path, f"header says {header['dims']} dimensions but 'mu' has {d}")
        if features is not None and header["n"] != features.shape[0]:
            raise _refuse(path, f"header says n = {header['n']} but 'features' has {features.shape[0]} rows")
        if header["n"] < 2:
            raise _refuse(path, f"header says n = {header['n']}; a covariance needs at least 2 images")
    return FeatureStatistics(path, mu, sigma, None if features is None else features.astype(np.float32), header)
