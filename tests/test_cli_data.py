"""`imgsynth data verify` on every kind of bad input (the message a user sees), and `data export`."""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgsynth.exports import iter_webdataset
from imgsynth.imageset import ImageSet, ImageSetWriter, Sample, encode_png, verify


@pytest.fixture
def tiny_set(tmp_path) -> ImageSet:
    """Two classes, three 8x8 noise images each; a fresh copy per test, free to damage."""
    rng = np.random.default_rng(0)
    writer = ImageSetWriter(tmp_path / "set", ["cat", "dog"])
    writer.write_all(Sample(Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)), label,
                            f"a {label}", i, f"{label}-{i}")
                     for i in range(3) for label in ("cat", "dog"))
    return writer.finalize()


def metadata_rows(s: ImageSet) -> list[dict]:
    return [json.loads(line) for line in (s.root / "metadata.jsonl").read_text().splitlines()]


def write_rows(s: ImageSet, rows: list[dict]) -> None:
    (s.root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def verify_cli(run_cli, s: ImageSet) -> tuple[int, str, str]:
    code, out, err = run_cli("data", "verify", s.root)
    assert code == 1, out
    assert "problem(s) found" in err
    return code, out, err


# --------------------------------------------------------------------------------------------- verify

def test_verify_passes_a_good_set(run_cli, tiny_set):
    code, out, _ = run_cli("data", "verify", tiny_set.root)
    assert code == 0 and "ok (6 images" in out and tiny_set.id in out


def test_verify_reports_a_corrupt_png(run_cli, tiny_set):
    path = tiny_set.path_of(0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    _, out, _ = verify_cli(run_cli, tiny_set)
    assert f"{path}: not a readable image" in out
    assert f"{path}: sha256 mismatch" in out


def test_verify_reports_a_truncated_png_even_when_its_hash_was_updated(run_cli, tiny_set):
    path = tiny_set.path_of(1)
    truncated = path.read_bytes()[:-30]
    path.write_bytes(truncated)
    rows = metadata_rows(tiny_set)
    rows[1]["sha256"] = hashlib.sha256(truncated).hexdigest()
    write_rows(tiny_set, rows)
    _, out, _ = verify_cli(run_cli, tiny_set)
    assert f"{path}: not a readable image" in out
    assert "sha256 mismatch" not in out


def test_verify_reports_a_hash_mismatch(run_cli, tiny_set):
    path = tiny_set.path_of(2)
    path.write_bytes(encode_png(Image.new("L", (8, 8), 7)))  # a valid PNG, different pixels
    _, out, _ = verify_cli(run_cli, tiny_set)
    assert f"{path}: sha256 mismatch: {tiny_set.root / 'metadata.jsonl'}:3 records" in out
    assert out.count("\n") == 1  # the only problem


def test_verify_reports_a_missing_metadata_line(run_cli, tiny_set):
    rows = metadata_rows(tiny_set)
    write_rows(tiny_set, rows[1:])
    _, out, _ = verify_cli(run_cli, tiny_set)
    assert f"{tiny_set.root / rows[0]['file_name']}: stray file: on disk but not listed in metadata.jsonl" in out
    assert "imageset.json: id" in out and "does not match the content" in out
    assert "imageset.json: counts {'cat': 3, 'dog': 3} disagree with metadata.jsonl" in out


@pytest.mark.parametrize("bad_line, message", [
    ("{not json", "malformed JSON"),
    ('["a list"]', "expected a JSON object"),
    ('{"label": "cat", "sha256": "00"}', "missing field(s) ['file_name']"),
    ("", "blank line"),
])
def test_verify_reports_a_malformed_metadata_line(run_cli, tiny_set, bad_line, message):
    lines = (tiny_set.root / "metadata.jsonl").read_text().splitlines()
    lines.insert(2, bad_line)
    (tiny_set.root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    _, out, _ = verify_cli(run_cli, tiny_set)
    assert f"{tiny_set.root / 'metadata.jsonl'}:3: {message}" in out


def test_verify_reports_an_unknown_label(run_cli, tiny_set):
    rows = metadata_rows(tiny_set)
    rows[0]["label"] = "zebra"
    write_rows(tiny_set, rows)
    _, out, _ = verify_cli(run_cli, tiny_set)
    assert "metadata.jsonl:1: label 'zebra' is not one of the manifest's classes ['cat', 'dog']" in out


def test_verify_reports_an_image_filed_under_another_label(run_cli, tiny_set):
    rows = metadata_rows(tiny_set)
    rows[0]["label"] = "dog" if rows[0]["label"] == "cat" else "cat"
    write_rows(tiny_set, rows)
    _, out, _ = verify_cli(run_cli, tiny_set)
    assert f"metadata.jsonl:1: file {rows[0]['file_name']!r} is not in the folder of its label" in out


@pytest.mark.parametrize("field, value, message", [
    ("file_name", "../../outside.png", "escapes the set's images/ folder"),
    ("file_name", "images/cat/../../../outside.png", "escapes the set's images/ folder"),
    ("file_name", "/etc/passwd", "is absolute; it must be relative to the set"),
    ("label", "../cat", "cannot be a folder name inside the set"),
    ("label", "/cat", "cannot be a folder name inside the set"),
])
def test_verify_reports_names_that_escape_the_set(run_cli, tiny_set, field, value, message):
    rows = metadata_rows(tiny_set)
    rows[3][field] = value
    write_rows(tiny_set, rows)
    _, out, _ = verify_cli(run_cli, tiny_set)
    assert f"metadata.jsonl:4: {field} {value!r} {message}" in out or (
        field == "label" and f"metadata.jsonl:4: label {value!r} {message}" in out)


def test_verify_reports_a_symlink_that_leaves_the_set(run_cli, tiny_set, tmp_path):
    outside = tmp_path / "outside.png"
    outside.write_bytes(tiny_set.read_bytes(0))
    tiny_set.path_of(0).unlink()
    os.symlink(outside, tiny_set.path_of(0))
    _, out, _ = verify_cli(run_cli, tiny_set)
    assert "metadata.jsonl:1: file_name" in out and "resolves outside the set" in out


def test_verify_reports_an_empty_folder(run_cli, tmp_path):
    (tmp_path / "empty").mkdir()
    code, out, err = run_cli("data", "verify", tmp_path / "empty")
    assert code == 1 and f"{tmp_path / 'empty'}: empty folder" in out and "not an ImageSet" in out


def test_verify_reports_a_missing_folder_and_an_unfinished_write(run_cli, tmp_path):
    writer = ImageSetWriter(tmp_path / "set", ["cat"])
    writer.write_shard(0, [Sample(Image.new("L", (4, 4)), "cat")])
    code, out, _ = run_cli("data", "verify", tmp_path / "set")
    assert code == 1 and "no such ImageSet folder (an unfinished write is in" in out


def test_verify_reports_manifest_id_and_count_mismatch(run_cli, tiny_set):
    manifest = json.loads((tiny_set.root / "imageset.json").read_text())
    manifest["id"] = "0" * 64
    manifest["counts"]["cat"] = 5
    manifest["num_images"] = 8
    (tiny_set.root / "imageset.json").write_text(json.dumps(manifest))
    _, out, _ = verify_cli(run_cli, tiny_set)
    assert "imageset.json: id 0000000000000000… does not match the content listed in metadata.jsonl" in out
    assert "imageset.json: counts {'cat': 5, 'dog': 3} disagree with metadata.jsonl" in out
    assert "imageset.json: num_images 8 but metadata.jsonl lists 6" in out


def test_verify_reports_a_malformed_or_missing_manifest(run_cli, tiny_set):
    (tiny_set.root / "imageset.json").write_text("{broken")
    _, out, _ = verify_cli(run_cli, tiny_set)
    assert f"{tiny_set.root / 'imageset.json'}: malformed JSON" in out
    (tiny_set.root / "imageset.json").unlink()
    _, out, _ = verify_cli(run_cli, tiny_set)
    assert f"{tiny_set.root / 'imageset.json'}: missing; this folder is not a finished ImageSet" in out


def test_verify_reports_stray_and_missing_files(run_cli, tiny_set):
    stray = tiny_set.root / "images" / "cat" / "extra.png"
    stray.write_bytes(tiny_set.read_bytes(0))
    (tiny_set.root / "notes.txt").write_text("hello")
    missing = tiny_set.path_of(4)
    missing.unlink()
    _, out, _ = verify_cli(run_cli, tiny_set)
    assert f"{stray}: stray file: on disk but not listed in metadata.jsonl" in out
    assert f"{tiny_set.root / 'notes.txt'}: stray file: not part of an ImageSet" in out
    assert f"{missing}: missing (listed at {tiny_set.root / 'metadata.jsonl'}:5)" in out


def test_verify_lists_every_problem_not_just_the_first(tiny_set):
    tiny_set.path_of(0).write_bytes(b"junk")
    tiny_set.path_of(5).unlink()
    (tiny_set.root / "images" / "dog" / "stray.png").write_bytes(b"x")
    report = tiny_set.verify()
    assert not report.ok
    where = {Path(p.where).name for p in report.problems}
    assert {tiny_set.path_of(0).name, tiny_set.path_of(5).name, "stray.png"} <= where
    with pytest.raises(ValueError, match="problem"):
        report.raise_for_problems()


def test_info_on_a_malformed_metadata_line_names_the_line(run_cli, tiny_set):
    lines = (tiny_set.root / "metadata.jsonl").read_text().splitlines()
    lines[1] = lines[1][:-5]
    (tiny_set.root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    code, _, err = run_cli("data", "info", tiny_set.root)
    assert code == 2 and f"error: {tiny_set.root / 'metadata.jsonl'}:2: malformed JSON" in err


# --------------------------------------------------------------------------------------------- export

def test_export_parquet_holds_every_image_with_its_labels(run_cli, tiny_set, tmp_path):
    import pyarrow.parquet as pq

    code, out, err = run_cli("data", "export", tiny_set.root, tmp_path / "pq", "--format", "parquet")
    assert code == 0, err
    files = sorted((tmp_path / "pq").iterdir())
    assert [f.name for f in files] == ["data-00000-of-00001.parquet"] and str(files[0]) in out
    table = pq.read_table(files[0])
    assert table.num_rows == len(tiny_set)
    rows = table.to_pylist()
    for row, record in zip(rows, tiny_set.records):
        assert hashlib.sha256(row["image"]["bytes"]).hexdigest() == row["sha256"] == record.sha256
        assert (row["label_name"], row["caption"], row["seed"]) == (record.label, record.caption, record.seed)
        assert tiny_set.classes[row["label"]] == record.label
    assert json.loads(table.schema.metadata[b"imgsynth"])["id"] == tiny_set.id


def test_export_parquet_reads_back_in_hf_datasets_with_class_names(tiny_set, tmp_path):
    datasets = pytest.importorskip("datasets")
    from imgsynth.exports import export_parquet

    export_parquet(tiny_set, tmp_path / "pq")
    loaded = datasets.load_dataset("parquet", data_dir=str(tmp_path / "pq"), split="train",
                                   cache_dir=str(tmp_path / "cache"))
    assert loaded.features["label"].names == tiny_set.classes
    assert type(loaded.features["image"]).__name__ == "Image"
    assert np.array_equal(np.asarray(loaded[0]["image"]), np.asarray(tiny_set.load_image(0)))


def test_export_webdataset_is_deterministic_and_complete(run_cli, tiny_set, tmp_path):
    for name in ("wds1", "wds2"):
        code, _, err = run_cli("data", "export", tiny_set.root, tmp_path / name, "--format", "webdataset")
        assert code == 0, err
    shard1, shard2 = tmp_path / "wds1" / "shard-000000.tar", tmp_path / "wds2" / "shard-000000.tar"
    assert shard1.read_bytes() == shard2.read_bytes()
    with tarfile.open(shard1) as tar:
        members = tar.getmembers()
    assert [m.name for m in members[:4]] == ["00000000.png", "00000000.cls", "00000000.txt", "00000000.json"]
    assert all(m.mtime == 0 and m.uid == 0 and m.uname == "" for m in members)
    samples = list(iter_webdataset(shard1))
    assert len(samples) == len(tiny_set)
    for sample, record in zip(samples, tiny_set.records):
        assert hashlib.sha256(sample["png"]).hexdigest() == record.sha256
        assert tiny_set.classes[int(sample["cls"])] == record.label
        assert sample["txt"].decode() == record.caption
        assert json.loads(sample["json"])["file_name"] == record.file_name
    assert json.loads((tmp_path / "wds1" / "classes.json").read_text()) == tiny_set.classes


def test_export_refuses_an_occupied_folder_and_leaves_it_alone(run_cli, tiny_set, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    code, _, err = run_cli("data", "export", tiny_set.root, out, "--format", "parquet")
    assert code == 2 and f"error: {out}: already exists" in err
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    assert not (tmp_path / ".taken.partial").exists()


def test_export_unknown_format_and_missing_out_are_clear_errors(run_cli, tiny_set):
    code, _, err = run_cli("data", "export", tiny_set.root, "x", "--format", "zip")
    assert code == 2 and "unknown export format 'zip'" in err
    code, _, err = run_cli("data", "export", tiny_set.root, "--format", "webdataset")
    assert code == 2 and "needs an OUT folder" in err


def test_export_croissant_into_the_set_keeps_it_valid(run_cli, tiny_set):
    code, out, err = run_cli("data", "export", tiny_set.root, "--format", "croissant")
    assert code == 0, err
    assert out.strip() == str(tiny_set.root / "croissant.json")
    assert json.loads((tiny_set.root / "croissant.json").read_text())["identifier"] == tiny_set.id
    assert verify(tiny_set.root).ok and ImageSet.open(tiny_set.root).id == tiny_set.id
