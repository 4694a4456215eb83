"""Corpus (issue 22, item 3): a malformed or hostile statistics file handed to `imgsynth metrics` is one `error:`
line naming it, within the corpus limits (``cli_checks.run_limited``: 2 GiB of private memory), and never
runs code: a pickle in it is never unpickled, a header claiming 10⁹ dimensions is refused before anything
is allocated, and nothing is written."""

from __future__ import annotations

import io
import os
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from cli_checks import assert_refused_within_limits, nothing_written, run_limited
from PIL import Image

from imgsynth.imageset import ImageSetWriter, Sample
from imgsynth.metrics.statistics_files import statistics_header, write_statistics

D = 16


class _Planted:
    """Unpickling this creates the file ``marker``: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # pickle's protocol
        return (open, (str(self.marker), "w"))


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def _claiming(shape: tuple[int, ...], payload: bytes = b"\0" * 64) -> bytes:
    """A .npy member whose header claims ``shape`` of float64 but holds only ``payload``."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f8", "fortran_order": False, "shape": shape})
    return buffer.getvalue() + payload


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(f"{name}.npy", data)
    return path


def _directory_lies(path: Path) -> Path:
    """A zip whose central directory claims 'sigma' is 100 times the bytes stored."""
    _zip(path, {"mu": _npy(np.zeros(D)), "sigma": _npy(np.eye(D))})
    raw = bytearray(path.read_bytes())
    entry = raw.rfind(b"PK\x01\x02")  # the last central-directory entry: sigma.npy
    size = struct.unpack("<I", raw[entry + 24:entry + 28])[0]
    raw[entry + 24:entry + 28] = struct.pack("<I", size * 100)
    path.write_bytes(bytes(raw))
    return path


def _good(path: Path) -> Path:
    header = statistics_header(type("E", (), {"name": "pixels", "id": "pixels:v1", "preprocessing": "x"})(),
                               n=20, dims=D, source="s", image_size=(4, 4), image_mode="L")
    return write_statistics(path, np.zeros(D), np.eye(D), header)


def _cases(tmp: Path, marker: Path) -> dict[str, tuple[Path, str]]:
    sigma_nan = np.eye(D)
    sigma_nan[3, 3] = np.nan
    good = _good(tmp / "good.npz").read_bytes()
    return {
        "pickled-object-array": (_zip(tmp / "pickle.npz", {"mu": _npy(np.zeros(D)),
                                                          "sigma": _npy(np.array([_Planted(marker)], dtype=object))}),
                                 "object array"),
        "pickled-header": (_zip(tmp / "pickled-header.npz", {"mu": _npy(np.zeros(D)), "sigma": _npy(np.eye(D)),
                                                             "header": _npy(np.array([_Planted(marker)], dtype=object))}),
                           "object array"),
        "wrong-shapes": (_zip(tmp / "shapes.npz", {"mu": _npy(np.zeros(D)), "sigma": _npy(np.eye(D)[:, :8])}),
                         "'sigma' [16, 8]"),
        "nan": (_zip(tmp / "nan.npz", {"mu": _npy(np.zeros(D)), "sigma": _npy(sigma_nan)}), "NaN"),
        "billion-dimensions": (_zip(tmp / "billion.npz", {"mu": _claiming((10**9,)), "sigma": _claiming((10**9, 10**9))}),
                               "over the limit"),
        "size-lies": (_zip(tmp / "lies.npz", {"mu": _claiming((D,), b"\0" * 8), "sigma": _npy(np.eye(D))}),
                      "truncated or altered"),
        "truncated": ((tmp / "truncated.npz"), "not a readable .npz"),
        "no-sigma": (_zip(tmp / "no-sigma.npz", {"mu": _npy(np.zeros(D))}), "no 'sigma'"),
        "not-a-zip": ((tmp / "text.npz"), "not a readable .npz"),
        "fifo": ((tmp / "fifo.npz"), "not a regular file"),
        "zip-directory-lies": (_directory_lies(tmp / "directory.npz"), "claims"),
    }, good


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    writer = ImageSetWriter(tmp_path_factory.mktemp("corpus-stats") / "set", ["a"], kind="real")
    rng = np.random.default_rng(0)
    writer.write_all(Sample(Image.fromarray(rng.integers(0, 256, (4, 4), dtype=np.uint8), mode="L"), "a", "", None,
                            f"i{i}") for i in range(20))
    return writer.finalize().root


NAMES = ["pickled-object-array", "pickled-header", "wrong-shapes", "nan", "billion-dimensions", "size-lies",
         "truncated", "no-sigma", "not-a-zip", "fifo", "zip-directory-lies"]


@pytest.mark.parametrize("name", NAMES)
def test_a_hostile_statistics_file_is_one_error_line_and_runs_no_code(name, tiny, tmp_path):
    marker = tmp_path / "code-ran"
    cases, good = _cases(tmp_path, marker)
    path, says = cases[name]
    if name == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif name == "fifo":
        os.mkfifo(path)  # opened without blocking: refused at once, never waited on
    elif name == "not-a-zip":
        path.write_text("mu,sigma\n1,2\n", encoding="utf-8")
    out = tmp_path / "m.csv"
    both = name in ("pickled-object-array", "billion-dimensions")  # the others are read by the same code either side
    for args in (("metrics", path, tiny), ("metrics", tiny, path))[: 2 if both else 1]:
        ran = run_limited(*args, "--features", "pixels", "--device", "cpu", "--out", out, "--cache-dir",
                          tmp_path / "cache")
        assert_refused_within_limits(ran, str(path), says)
        assert nothing_written(out)
    assert not marker.exists(), "a pickle in the file was unpickled"
