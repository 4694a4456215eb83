"""ImageSet format: writing in shards, crash and resume, target-folder rules, reading, derived sets,
and that the folder loads unchanged in Hugging Face datasets and torchvision."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import imgsynth.imageset.sets as imageset_module  # the module whose writer commits shards
from imgsynth.imageset import (ImageSet, ImageSetError, ImageSetWriter, Sample, concatenate,
                               stratified_split_indices, verify)
from imgsynth.provenance import content_id, sha256_file

CLASSES = ["b", "a"]  # deliberately not sorted: label indices follow sorted names, the given order is display only


def tiny_samples(n_per_class: int = 4, seed: int = 0, size: int = 8) -> list[Sample]:
    """Distinct noise images, classes interleaved, ids unique."""
    rng = np.random.default_rng(seed)
    return [Sample(Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8), mode="L"),
                   label, f"noise of class {label}", 1000 * k + i, f"{label}-{i:03d}")
            for i in range(n_per_class) for k, label in enumerate(CLASSES)]


def write_set(root: Path, samples: list[Sample], shard_size: int = 3, **kwargs) -> ImageSet:
    writer = ImageSetWriter(root, CLASSES, **kwargs)
    writer.write_all(samples, shard_size=shard_size)
    return writer.finalize()


class Crash(RuntimeError):
    pass


def crashing(samples: list[Sample], after: int):
    """Yield ``after`` samples, then die as a killed job would."""
    for i, sample in enumerate(samples):
        if i == after:
            raise Crash("killed")
        yield sample


# --------------------------------------------------------------------------------------------- writing

def test_written_set_round_trips_pixels_labels_and_manifest(tmp_path):
    samples = tiny_samples()
    s = write_set(tmp_path / "set", samples)
    assert len(s) == len(samples) and s.classes == sorted(CLASSES) and s.display_order == CLASSES
    assert s.counts == {"b": 4, "a": 4} and s.image_size == (8, 8)
    assert s.id == content_id((r.sha256, r.label) for r in s.records)
    for i, sample in enumerate(samples):
        image, label, caption = s[i]
        assert image.shape == (1, 8, 8)
        assert np.array_equal((image[0].numpy() * 255).round().astype(np.uint8), np.asarray(sample.image))
        assert s.classes[label] == sample.label and caption == sample.caption
        assert s.records[i].seed == sample.seed
        assert sha256_file(s.path_of(i)) == s.records[i].sha256
    assert verify(s.root).ok
    assert not (tmp_path / ".set.partial").exists()


def test_id_depends_on_content_not_on_order_or_sharding(tmp_path):
    samples = tiny_samples()
    a = write_set(tmp_path / "a", samples, shard_size=3)
    b = write_set(tmp_path / "b", list(reversed(samples)), shard_size=5)
    c = write_set(tmp_path / "c", tiny_samples(seed=1))
    assert a.id == b.id != c.id


def test_killed_writer_leaves_no_set_and_resume_matches_uninterrupted(tmp_path, monkeypatch, run_cli):
    samples = tiny_samples(n_per_class=5)  # 10 samples, shards of 3 -> 4 shards
    whole = write_set(tmp_path / "whole", samples)

    root = tmp_path / "set"
    writer = ImageSetWriter(root, CLASSES)
    with pytest.raises(Crash):
        writer.write_all(crashing(samples, after=7), shard_size=3)  # shards 0 and 1 done, 2 half-fed
    with pytest.raises(ImageSetError, match="no such ImageSet folder.*unfinished write"):
        ImageSet.open(root)
    code, _, err = run_cli("data", "info", root)
    assert code == 2 and str(root) in err and "unfinished write" in err

    partial = tmp_path / ".set.partial"
    done_mtimes = {p.name: p.stat().st_mtime_ns for p in (partial / "shards").iterdir()}
    image_mtimes = {p: p.stat().st_mtime_ns for p in (partial / "images").rglob("*.png")}
    assert sorted(done_mtimes) == ["shard-000000.jsonl", "shard-000001.jsonl"]

    rewritten: list[int] = []
    original = ImageSetWriter.write_shard
    monkeypatch.setattr(ImageSetWriter, "write_shard",
                        lambda self, index, batch: rewritten.append(index) or original(self, index, batch))
    resumed = ImageSetWriter(root, CLASSES)
    assert resumed.done_shards == {0, 1}
    resumed.write_all(samples, shard_size=3)
    assert rewritten == [2, 3]
    assert {p.name: p.stat().st_mtime_ns for p in (partial / "shards").iterdir()
            if p.name in done_mtimes} == done_mtimes
    assert all(p.stat().st_mtime_ns == t for p, t in image_mtimes.items())
    result = resumed.finalize()
    assert result.id == whole.id and len(result) == 10
    assert verify(root).ok


def test_half_written_shard_is_redone_cleanly(tmp_path, monkeypatch):
    """Images of a shard whose metadata never committed are rewritten, and leftovers removed."""
    samples = tiny_samples()
    root = tmp_path / "set"
    real_commit = imageset_module.write_text_atomic

    def die_on_shard_1(path, text):
        if path.name == "shard-000001.jsonl":
            raise Crash("killed before the shard's metadata was committed")
        real_commit(path, text)

    writer = ImageSetWriter(root, CLASSES)
    writer.write_shard(0, samples[:3])
    monkeypatch.setattr(imageset_module, "write_text_atomic", die_on_shard_1)
    # The doomed attempt wrote one more image (an id the rerun will not produce) than the real shard.
    leftover = Sample(samples[0].image, "a", "", None, "left-behind")
    with pytest.raises(Crash):
        writer.write_shard(1, [*samples[3:6], leftover])
    monkeypatch.setattr(imageset_module, "write_text_atomic", real_commit)
    assert (tmp_path / ".set.partial" / "images" / "a" / "left-behind.png").exists()

    rerun = ImageSetWriter(root, CLASSES)
    assert rerun.done_shards == {0}
    rerun.write_shard(1, samples[3:6])
    rerun.write_shard(2, samples[6:])
    result = rerun.finalize()
    assert len(result) == len(samples)
    assert not (root / "images" / "a" / "left-behind.png").exists()
    assert result.id == write_set(tmp_path / "whole", samples).id
    assert verify(root).ok


def test_finalize_refuses_gaps_between_shards(tmp_path):
    writer = ImageSetWriter(tmp_path / "set", CLASSES)
    samples = tiny_samples()
    writer.write_shard(0, samples[:2])
    writer.write_shard(2, samples[2:4])
    with pytest.raises(ImageSetError, match=r"shards \[1\] were never written"):
        writer.finalize()


def test_partial_of_a_different_job_is_not_resumed(tmp_path):
    root = tmp_path / "set"
    first = ImageSetWriter(root, CLASSES, config={"seed": 1})
    first.write_shard(0, tiny_samples(seed=1)[:2])
    with pytest.warns(UserWarning, match="different job"):
        second = ImageSetWriter(root, CLASSES, config={"seed": 2})
    assert second.done_shards == set()
    assert ImageSetWriter(root, CLASSES, config={"seed": 2}).done_shards == set()


def test_target_holding_a_different_set_is_an_error_and_leaves_nothing(tmp_path):
    root = tmp_path / "set"
    first = write_set(root, tiny_samples(seed=0))
    manifest_before = (root / "imageset.json").read_bytes()
    with pytest.raises(ImageSetError) as info:
        write_set(root, tiny_samples(seed=1))
    message = str(info.value)
    assert str(root) in message and "already holds a different ImageSet" in message and first.id[:12] in message
    assert not (tmp_path / ".set.partial").exists()
    assert (root / "imageset.json").read_bytes() == manifest_before and verify(root).ok


def test_same_content_rewrite_is_a_no_op(tmp_path):
    root = tmp_path / "set"
    first = write_set(root, tiny_samples())
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    again = write_set(root, tiny_samples(), shard_size=2)
    assert again.id == first.id and again.manifest["created"] == first.manifest["created"]
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == stamps
    assert not (tmp_path / ".set.partial").exists()


def test_folder_that_is_not_a_set_is_refused_and_empty_folder_is_used(tmp_path):
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    with pytest.raises(ImageSetError, match="occupied: folder exists and is not an ImageSet"):
        ImageSetWriter(occupied, CLASSES)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert len(write_set(empty, tiny_samples())) == 8


@pytest.mark.parametrize("label, match", [("../up", "cannot be a folder name"), ("/abs", "cannot be a folder name"),
                                          ("zebra", "not in classes")])
def test_writer_refuses_labels_that_escape_or_are_unknown(tmp_path, label, match):
    writer = ImageSetWriter(tmp_path / "set", CLASSES)
    with pytest.raises(ImageSetError, match=match):
        writer.write_shard(0, [Sample(tiny_samples()[0].image, label)])


def test_writer_refuses_an_image_id_with_a_path(tmp_path):
    writer = ImageSetWriter(tmp_path / "set", CLASSES)
    with pytest.raises(ImageSetError, match="not a plain file name"):
        writer.write_shard(0, [Sample(tiny_samples()[0].image, "a", image_id="../../evil")])


def test_empty_set_cannot_be_finalized(tmp_path):
    writer = ImageSetWriter(tmp_path / "set", CLASSES)
    writer.write_all([])
    with pytest.raises(ImageSetError, match="no images were written"):
        writer.finalize()


# --------------------------------------------------------------------------------------------- opening

def test_open_reports_the_file_and_line_of_a_bad_metadata_row(tmp_path):
    s = write_set(tmp_path / "set", tiny_samples())
    lines = (s.root / "metadata.jsonl").read_text().splitlines()
    lines[2] = lines[2].replace('"label": "b"', '"label": "zebra"')
    (s.root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ImageSetError, match=r"metadata.jsonl:3: label 'zebra' is not one of the manifest's classes"):
        ImageSet.open(s.root)


# --------------------------------------------------------------------------------------------- derived sets

def test_split_is_stratified_seeded_and_disjoint(tmp_path):
    labels = [0] * 10 + [1] * 5 + [2] * 2
    first, second = stratified_split_indices(labels, 0.2, seed=3)
    assert sorted(first + second) == list(range(len(labels)))
    assert Counter(labels[i] for i in second) == {0: 2, 1: 1, 2: 1}
    assert stratified_split_indices(labels, 0.2, seed=3) == (first, second)
    assert stratified_split_indices(labels, 0.2, seed=4) != (first, second)


def test_subset_split_and_concatenate_keep_bytes_and_record_parents(tmp_path):
    s = write_set(tmp_path / "set", tiny_samples())
    train, test = s.split(0.25, seed=0, out_first=tmp_path / "train", out_second=tmp_path / "test")
    assert len(train) + len(test) == len(s) and test.counts == {"b": 1, "a": 1}
    assert {r.sha256 for r in train.records} | {r.sha256 for r in test.records} == {r.sha256 for r in s.records}
    assert train.parents[0]["id"] == s.id and (train.root / train.parents[0]["path"]).resolve() == s.root
    both = concatenate([train, test], tmp_path / "both")
    assert both.id == s.id and both.kind == "mixed"
    assert [p["id"] for p in both.parents] == [train.id, test.id]


# --------------------------------------------------------------------------------------------- other readers

def test_hf_imagefolder_loads_the_set_unchanged(digits_sets, tmp_path):
    datasets = pytest.importorskip("datasets")
    small = digits_sets[1].subset(range(0, 359, 7), tmp_path / "small")
    loaded = datasets.load_dataset("imagefolder", data_dir=str(small.root), split="train",
                                   cache_dir=str(tmp_path / "cache"))
    assert {"image", "label", "caption"} <= set(loaded.column_names)
    assert len(loaded) == len(small)
    assert Counter(loaded["label"]) == Counter({c: n for c, n in small.counts.items() if n})
    by_hash = {r.sha256: r for r in small.records}
    raw = loaded.cast_column("image", datasets.Image(decode=False))
    for row in raw:
        record = by_hash[row["sha256"]]
        assert sha256_file(row["image"]["path"]) == record.sha256  # the image file is the one listed
        assert (row["label"], row["caption"]) == (record.label, record.caption)


def test_torchvision_image_folder_loads_the_set_unchanged(digits_sets):
    from torchvision.datasets import ImageFolder

    train = digits_sets[1]  # the test split: smaller, same layout
    folder = ImageFolder(str(train.root / "images"))
    assert len(folder) == len(train)
    assert Counter(folder.classes[t] for t in folder.targets) == Counter(train.counts)
    labels_by_file = {str(train.root / r.file_name): r.label for r in train.records}
    assert {path: folder.classes[t] for path, t in folder.samples} == labels_by_file
