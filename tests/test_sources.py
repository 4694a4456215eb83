"""Real-data sources: digits, class folders, HF imagefolder/parquet, torchvision datasets on disk."""

from __future__ import annotations

import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgsynth.exports import export_parquet
from imgsynth.imageset import ImageSetError
from imgsynth.provenance import content_id
from imgsynth.sources import import_source, load_source


def pooled_id(train, test) -> str:
    return content_id([(r.sha256, r.label) for s in (train, test) for r in s.records])


# --------------------------------------------------------------------------------------------- digits

def test_digits_import_is_deterministic_per_seed(digits_sets, tmp_path):
    """``digits_sets`` is the same import (seed 0, 16 px) done once per session."""
    same = import_source("digits", tmp_path / "same", size=16, test_fraction=0.2, seed=0)
    other = import_source("digits", tmp_path / "other", size=16, test_fraction=0.2, seed=1)
    assert (same[0].id, same[1].id) == (digits_sets[0].id, digits_sets[1].id)
    assert other[0].id != same[0].id and other[1].id != same[1].id
    assert pooled_id(*other) == pooled_id(*same)  # the same images, split differently
    assert len(same[0]) + len(same[1]) == 1797 and same[0].image_size == (16, 16)
    assert same[0].parents[0]["id"] == "source:digits" and same[0].manifest["license"]["name"] == "CC-BY-4.0"


def test_unknown_source_is_a_clear_error():
    with pytest.raises(ImageSetError, match="unknown source 'nope:x'; known: \\['digits', 'folder', 'gaussian', 'hf', 'torchvision'\\]"):
        load_source("nope:x")


# --------------------------------------------------------------------------------------------- folder

def noise(mode: str, size: tuple[int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"L": (), "RGB": (3,), "RGBA": (4,)}[mode]
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], *channels), dtype=np.uint8), mode=mode)


@pytest.fixture
def class_folders(tmp_path) -> Path:
    """Classes created in non-sorted order, mixed formats, sizes and modes, plus files to ignore."""
    root = tmp_path / "photos"
    for name, files in [("zebra", [("1.png", "RGBA"), ("2.jpg", "RGB")]),
                        ("Ant", [("a.bmp", "RGB"), ("b.gif", "L"), ("sub/c.webp", "RGB")]),
                        ("moth", [("x.tiff", "L")])]:
        for i, (file, mode) in enumerate(files):
            path = root / name / file
            path.parent.mkdir(parents=True, exist_ok=True)
            noise(mode, (20 + i, 12), i).save(path)
    (root / "zebra" / "notes.txt").write_text("not an image")
    (root / "moth" / ".hidden.png").write_bytes(b"ignored")
    (root / "README.md").write_text("---\nlicense: cc-by-nc-4.0\n---\nmy photos\n")
    return root


def test_folder_source_sorts_classes_and_converts_every_image(class_folders):
    data = load_source(f"folder:{class_folders}", size=10, mode="RGB")
    assert data.classes == ["Ant", "moth", "zebra"]  # sorted by name (code point order)
    assert Counter(data.labels) == {"Ant": 3, "zebra": 2, "moth": 1}
    assert all(im.size == (10, 10) and im.mode == "RGB" for im in data.images)
    assert data.license["name"] == "cc-by-nc-4.0"


def test_folder_source_composites_alpha_on_white(tmp_path):
    (tmp_path / "c").mkdir()
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(tmp_path / "c" / "clear.png")
    data = load_source(f"folder:{tmp_path}", size=None, mode="L")
    assert np.asarray(data.images[0]).min() == 255


def test_folder_import_records_license_and_lineage(class_folders, tmp_path):
    train, test = import_source(f"folder:{class_folders}", tmp_path / "out", size=8, mode="L", test_fraction=0.3)
    assert train.classes == ["Ant", "moth", "zebra"] and len(train) + len(test) == 6
    assert train.manifest["license"]["name"] == "cc-by-nc-4.0"
    assert train.parents[0]["location"] == str(class_folders)
    assert train.verify().ok


def test_folder_source_license_falls_back_to_the_option(tmp_path):
    (tmp_path / "src" / "c").mkdir(parents=True)
    noise("L", (4, 4), 0).save(tmp_path / "src" / "c" / "0.png")
    noise("L", (4, 4), 1).save(tmp_path / "src" / "c" / "1.png")
    train, _ = import_source(f"folder:{tmp_path / 'src'}", tmp_path / "out", size=4, license="mit")
    assert train.manifest["license"] == {"name": "mit", "from": "--license"}


@pytest.mark.parametrize("setup, message", [
    (lambda root: None, "empty folder"),
    (lambda root: (root / "loose.png").write_bytes(b""), "no class sub-folders"),
    (lambda root: (root / "cls").mkdir(), "class folder holds no image files"),
    (lambda root: ((root / "cls").mkdir(), (root / "cls" / "bad.png").write_bytes(b"\x89PNG broken")),
     "bad.png: not a readable image"),
])
def test_folder_source_bad_input(tmp_path, run_cli, setup, message):
    root = tmp_path / "src"
    root.mkdir()
    setup(root)
    code, _, err = run_cli("data", "import", f"folder:{root}", tmp_path / "out")
    assert code == 2 and message in err and str(root) in err
    assert not (tmp_path / "out").exists()


def test_folder_source_missing_folder(tmp_path):
    with pytest.raises(ImageSetError, match="no such folder"):
        load_source(f"folder:{tmp_path / 'nope'}")


# --------------------------------------------------------------------------------------------- hf

def test_hf_imagefolder_with_metadata(tmp_path):
    root = tmp_path / "hf"
    rows = []
    for i, label in enumerate(["b", "a", "b", "c", "a"]):
        (root / "train").mkdir(parents=True, exist_ok=True)
        noise("RGB", (6, 6), i).save(root / "train" / f"{i}.png")
        rows.append(f'{{"file_name": "{i}.png", "label": "{label}", "caption": "picture {i}"}}')
    (root / "train" / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    (root / "README.md").write_text("---\nlicense: apache-2.0\n---\n")
    data = load_source(f"hf:{root}", size=4, mode="L")
    assert data.classes == ["a", "b", "c"] and sorted(data.labels) == ["a", "a", "b", "b", "c"]
    assert sorted(data.captions) == [f"picture {i}" for i in range(5)]
    assert all(im.size == (4, 4) and im.mode == "L" for im in data.images)
    assert data.license["name"] == "apache-2.0"


def test_hf_source_reads_an_imgsynth_set_and_its_parquet_export(digits_sets, tmp_path):
    original = digits_sets[1].subset(range(0, 359, 9), tmp_path / "small")
    for spec in (f"hf:{original.root}", None):
        if spec is None:
            export_parquet(original, tmp_path / "pq")
            spec = f"hf:{tmp_path / 'pq'}"
        train, test = import_source(spec, tmp_path / spec.replace("/", "_"), size=16, mode="L")
        assert train.classes == original.classes
        assert pooled_id(train, test) == original.id  # same pixels, same labels


def test_hf_imagefolder_without_labels_points_to_folder_source(tmp_path):
    (tmp_path / "hf" / "cat").mkdir(parents=True)
    noise("L", (4, 4), 0).save(tmp_path / "hf" / "cat" / "0.png")
    with pytest.raises(ImageSetError, match="need an image and a label column.*folder:"):
        load_source(f"hf:{tmp_path / 'hf'}")


# --------------------------------------------------------------------------------------------- torchvision

def write_idx(path: Path, array: np.ndarray) -> None:
    """The IDX format of the MNIST files: magic (0, 0, ubyte=8, ndim), big-endian dims, bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_torchvision_mnist_from_disk(tmp_path):
    rng = np.random.default_rng(0)
    raw = tmp_path / "tv" / "MNIST" / "raw"
    for prefix, n in (("train", 12), ("t10k", 6)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 3)
    train, test = import_source(f"torchvision:MNIST:{tmp_path / 'tv'}", tmp_path / "out", size=8, test_fraction=0.25)
    assert train.classes[:3] == ["0 - zero", "1 - one", "2 - two"] and len(train.classes) == 10
    assert len(train) + len(test) == 18
    assert Counter(r.label for s in (train, test) for r in s.records) == {"0 - zero": 6, "1 - one": 6, "2 - two": 6}
    assert train.manifest["license"]["name"] == "CC-BY-SA-3.0"


def test_torchvision_missing_data_says_what_to_put_where(tmp_path, run_cli):
    code, _, err = run_cli("data", "import", f"torchvision:CIFAR10:{tmp_path / 'cifar'}", tmp_path / "out")
    assert code == 2
    assert "imgsynth never downloads" in err and f"{tmp_path / 'cifar'}/cifar-10-batches-py/" in err
    assert "data_batch_1" in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("spec, message", [("torchvision:NotADataset:/x", "not a torchvision dataset"),
                                           ("torchvision:CIFAR10", "use torchvision:<Name>:<root>")])
def test_torchvision_bad_specs(spec, message):
    with pytest.raises(ImageSetError, match=message):
        load_source(spec)
