"""Issue 22, items 1–2: `imgsynth metrics` takes ImageSets, plain image folders, hf: datasets and statistics
files on either side, and gives the same numbers for the same images whatever form they come in.

The data: small_digits at 8 × 8 (64-d pixel features, 120 reference images) against 80 other digits, so
every covariance has full rank and FID from statistics is the same quantity as FID from features.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cli_checks import nothing_written, refused
from PIL import Image

from imgsynth.imageset import ImageSet, ImageSetWriter, Sample
from imgsynth.metrics.evaluate import EvaluationNote, evaluate, evaluate_sources
from imgsynth.metrics.metric_sources import ImageFolder, open_metric_source
from imgsynth.metrics.statistics_files import read_statistics

RTOL = 1e-7


def _at_8px(image_set: ImageSet, indices: list[int], out: Path) -> ImageSet:
    writer = ImageSetWriter(out, image_set.classes, kind="real")
    writer.write_all(Sample(image_set.load_image(i).resize((8, 8), Image.Resampling.BICUBIC), image_set.records[i].label,
                            image_set.records[i].caption, None, f"img-{i}") for i in indices)
    return writer.finalize()


@pytest.fixture(scope="module")
def sets(digits_sets, small_digits, tmp_path_factory) -> tuple[ImageSet, ImageSet]:
    """(reference, candidate): 120 and 80 digits at 8 × 8."""
    root = tmp_path_factory.mktemp("sources")
    train = digits_sets[0]
    candidate = [i for c in train.classes for i in train.indices_of_class(c)[:8]]
    return (_at_8px(small_digits, list(range(len(small_digits))), root / "reference"),
            _at_8px(train, candidate, root / "candidate"))


def _as_folder(image_set: ImageSet, out: Path, classes: bool = True) -> Path:
    """The set's PNG files, byte for byte, in class sub-folders (or all in one folder)."""
    for i, record in enumerate(image_set.records):
        target = out / record.label if classes else out
        target.mkdir(parents=True, exist_ok=True)
        (target / f"{record.label}-{i:04d}.png").write_bytes(image_set.read_bytes(i))
    return out


def _run(candidate, reference, tmp_path, extractor="pixels", **kwargs) -> tuple[pd.DataFrame, list[str]]:
    kwargs.setdefault("per_class", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", EvaluationNote)
        rows = evaluate_sources(candidate, reference, extractor, cache_dir=str(tmp_path / "cache"), device="cpu",
                                **kwargs)
    frame = pd.DataFrame([r.__dict__ for r in rows])
    return frame, [str(w.message) for w in caught if issubclass(w.category, EvaluationNote)]


def _pixels(image: Image.Image) -> np.ndarray:
    """What the pixels extractor computes (float32 values / 255), independently, in float64."""
    return (np.asarray(image, dtype=np.float32).reshape(-1) / np.float32(255.0)).astype(np.float64)


def _value(frame: pd.DataFrame, metric: str, scope: str = "all") -> float:
    return float(frame[(frame.metric == metric) & (frame.class_name == scope)].value.iloc[0])


def test_folders_sets_and_statistics_files_give_the_same_fid(sets, tmp_path, run_cli):
    reference, candidate = sets
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EvaluationNote)
        base = pd.DataFrame([r.__dict__ for r in evaluate(candidate, reference, "pixels", per_class=True,
                                                          cache_dir=str(tmp_path / "cache"), device="cpu")])
    fid = _value(base, "fid")
    assert fid > 0.1  # two different samples: a test that could fail
    ref_folder = ImageFolder(_as_folder(reference, tmp_path / "ref-folder"))
    cand_folder = ImageFolder(_as_folder(candidate, tmp_path / "cand-folder"))
    assert ref_folder.classes == reference.classes and len(ref_folder) == len(reference)

    # Folder vs set and folder vs folder: the same features, so every number, per class too, is the same.
    for cand, ref in ((cand_folder, reference), (cand_folder, ref_folder), (candidate, ref_folder)):
        frame, notes = _run(cand, ref, tmp_path, per_class=True)
        assert not [n for n in notes if "skipped" in n], notes
        assert frame[["metric", "class_name", "n"]].values.tolist() == base[["metric", "class_name", "n"]].values.tolist()
        np.testing.assert_allclose(frame.value, base.value, rtol=1e-12)

    # Set vs our statistics file (written by `imgsynth stats`) and vs a pytorch-fid-format one.
    ours = tmp_path / "reference.npz"
    code, _, err = run_cli("stats", reference.root, ours, "--features", "pixels", "--device", "cpu",
                           "--cache-dir", tmp_path / "cache")
    assert code == 0, err
    features = np.stack([_pixels(reference.load_image(i))
                         for i in range(len(reference))])
    foreign = tmp_path / "pytorch-fid.npz"
    np.savez(foreign, mu=features.mean(axis=0), sigma=np.cov(features, rowvar=False))
    for npz, says in ((ours, None), (foreign, "on your word")):
        frame, notes = _run(candidate, open_metric_source(npz), tmp_path, metrics=["fid"])
        assert frame.metric.tolist() == ["fid"]
        assert _value(frame, "fid") == pytest.approx(fid, rel=RTOL)
        assert (says is None) == (not any(says in n for n in notes if says)), notes

    # The reader pytorch-fid itself uses gets the same mu and sigma out of our file.
    from pytorch_fid.fid_score import (
        calculate_frechet_distance,
        compute_statistics_of_path,
    )

    mu, sigma = compute_statistics_of_path(str(ours), None, 50, 2048, "cpu")
    np.testing.assert_allclose(mu, features.mean(axis=0), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(sigma, np.cov(features, rowvar=False), rtol=1e-9, atol=1e-15)
    cand_features = np.stack([_pixels(candidate.load_image(i))
                              for i in range(len(candidate))])
    theirs = calculate_frechet_distance(cand_features.mean(axis=0), np.cov(cand_features, rowvar=False), mu, sigma)
    assert fid == pytest.approx(theirs, rel=1e-5)


def test_metrics_a_statistics_file_cannot_serve_are_skipped_with_a_note(sets, tmp_path, run_cli):
    reference, candidate = sets
    bare, full = tmp_path / "bare.npz", tmp_path / "full.npz"
    for out, extra in ((bare, []), (full, ["--with-features"])):
        code, _, err = run_cli("stats", reference.root, out, "--features", "pixels", "--device", "cpu",
                               "--cache-dir", tmp_path / "cache", *extra)
        assert code == 0, err
    base, _ = _run(candidate, reference, tmp_path)
    frame, notes = _run(candidate, read_statistics(bare), tmp_path, per_class=True)
    # FID from the statistics; the one-sample metrics from the candidate; KID and PRDC need the features.
    assert frame.metric.tolist() == ["fid", "diversity", "vendi"]
    np.testing.assert_allclose(frame.value, base.set_index("metric").loc[frame.metric, "value"], rtol=RTOL)
    for metric in ("kid", "precision", "recall", "density", "coverage"):
        assert sum(n.startswith(f"{metric} skipped: {bare} holds statistics (mu, sigma) only") for n in notes) == 1
    assert sum("per-class metrics skipped" in n and "no labels" in n for n in notes) == 1
    # With --with-features every metric is there, with the numbers of set vs set.
    frame, notes = _run(candidate, read_statistics(full), tmp_path)
    assert frame.metric.tolist() == base.metric.tolist()
    np.testing.assert_allclose(frame.value, base.value, rtol=1e-12)
    # Statistics on both sides: FID alone, and notes for the rest.
    frame, notes = _run(read_statistics(bare), read_statistics(full), tmp_path)
    assert frame.metric.tolist() == ["fid"] and _value(frame, "fid") == pytest.approx(0.0, abs=1e-9)
    assert any(n.startswith("vendi skipped: the candidate") for n in notes)


def test_a_folder_without_class_sub_folders_gives_overall_metrics_and_says_why_not_per_class(sets, tmp_path):
    reference, candidate = sets
    flat = ImageFolder(_as_folder(candidate, tmp_path / "flat", classes=False))
    assert flat.classes == [] and "no class sub-folders" in flat.why_unlabeled
    base, _ = _run(candidate, reference, tmp_path)
    frame, notes = _run(flat, reference, tmp_path, per_class=True)
    assert set(frame.class_name) == {"all"}
    np.testing.assert_allclose(frame.value, base.value, rtol=1e-12)
    assert [n for n in notes if "per-class" in n] == [
        (f"per-class metrics skipped: {flat.root} has no class sub-folders (images lie directly in it), so its "
         "images carry no labels; overall metrics only")]


def test_a_folders_features_are_cached_by_content(sets, tmp_path, run_cli):
    _, candidate = sets
    first = ImageFolder(_as_folder(candidate, tmp_path / "one"))
    moved = ImageFolder(shutil.copytree(first.root, tmp_path / "two"))
    assert moved.id == first.id
    code, printed, err = run_cli("features", first.root, "--features", "pixels", "--device", "cpu", "--cache-dir",
                                 tmp_path / "cache")
    assert code == 0, err
    (entry,) = (tmp_path / "cache").iterdir()
    assert str(entry) in printed
    _run(first, first, tmp_path, metrics=["fid"])
    _run(moved, moved, tmp_path, metrics=["fid"])
    assert len(list((tmp_path / "cache").iterdir())) == 1
    changed = next((tmp_path / "two").rglob("*.png"))
    changed.write_bytes(candidate.read_bytes(len(candidate) - 1))
    assert ImageFolder(tmp_path / "two").id != first.id


def test_an_hf_dataset_gives_the_numbers_of_the_same_images_in_a_folder(tmp_path):
    rng = np.random.default_rng(0)
    for root, shift in (("real", 0), ("fake", 30)):
        for label in ("a", "b"):
            (tmp_path / root / label).mkdir(parents=True)
            for i in range(12):
                pixels = rng.normal(100 + shift + 50 * (label == "b"), 40, (4, 4, 3))
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(tmp_path / root / label / f"{i}.png")
    hf = open_metric_source(f"hf:{tmp_path / 'real'}")
    assert hf.classes == ["a", "b"] and len(hf) == 24
    candidate = ImageFolder(tmp_path / "fake")
    by_folder, _ = _run(candidate, ImageFolder(tmp_path / "real"), tmp_path, per_class=True)
    by_hf, _ = _run(candidate, hf, tmp_path, per_class=True)
    assert by_hf[["metric", "class_name"]].values.tolist() == by_folder[["metric", "class_name"]].values.tolist()
    np.testing.assert_allclose(by_hf.value, by_folder.value, rtol=1e-9)


def test_cli_prints_without_out_and_writes_csv_or_json(sets, tmp_path, run_cli):
    reference, candidate = sets
    folder = _as_folder(candidate, tmp_path / "samples")
    common = ("--features", "pixels", "--device", "cpu", "--cache-dir", tmp_path / "cache", "--metrics", "fid,kid")
    code, out, err = run_cli("metrics", reference.root, folder, *common)
    assert code == 0, err
    assert out.splitlines()[0] == f"{folder} vs {reference.root}  [pixels]" and "fid" in out and "wrote" not in out
    code, out, err = run_cli("metrics", reference.root, folder, *common, "--format", "json", "--out",
                             tmp_path / "m.json")
    assert code == 0, err
    printed = json.loads(out)
    assert [r["metric"] for r in printed["rows"]] == ["fid", "kid"]
    assert json.loads((tmp_path / "m.json").read_text(encoding="utf-8")) == printed
    code, _, err = run_cli("metrics", reference.root, folder, *common, "--format", "json", "--out",
                           tmp_path / "m.json")  # a rerun replaces what this command wrote
    assert code == 0, err
    code, out, err = run_cli("metrics", reference.root, folder, *common, "--format", "csv", "--out", tmp_path / "m.csv")
    assert code == 0, err
    assert pd.read_csv(tmp_path / "m.csv").equals(pd.read_csv(pd.io.common.StringIO(out)))
    # A JSON request cannot overwrite an unrelated file.
    (tmp_path / "notes.json").write_text("{}", encoding="utf-8")
    refused(run_cli("metrics", reference.root, folder, *common, "--format", "json", "--out", tmp_path / "notes.json"),
            "notes.json", "already exists")
    refused(run_cli("metrics", reference.root, folder, *common, "--format", "xml"), "xml", "table, csv, json")


def test_two_sets_write_the_same_file_as_before(sets, tmp_path, run_cli):
    reference, candidate = sets
    out = tmp_path / "m.csv"
    code, printed, err = run_cli("metrics", reference.root, candidate.root, "--features", "pixels", "--device", "cpu",
                                 "--out", out, "--cache-dir", tmp_path / "cache", "--per-class")
    assert code == 0, err
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EvaluationNote)
        from imgsynth.metrics.evaluate import rows_to_frame

        expected = rows_to_frame(evaluate(candidate, reference, "pixels", per_class=True,
                                          cache_dir=str(tmp_path / "cache"), device="cpu"))
    assert out.read_text(encoding="utf-8") == expected.to_csv(index=False, float_format="%.10g")
    assert printed.splitlines()[-1] == f"wrote {out}"


@pytest.mark.parametrize("plant, says", [
    (lambda root, png: os.symlink(png, root / "a" / "link.png"), "a symbolic link"),
    (lambda root, png: os.symlink(root / "a", root / "c"), "a symbolic link"),
    (lambda root, png: os.mkfifo(root / "a" / "fifo.png"), "not a regular file"),
    (lambda root, png: (root / "a" / "huge.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 8), "not a readable image"),
], ids=["link-to-a-file", "link-to-a-folder", "fifo", "broken"])
def test_a_folder_is_read_through_the_checked_reader(plant, says, sets, tmp_path, run_cli):
    reference, _ = sets
    root = _as_folder(reference, tmp_path / "folder")
    outside = tmp_path / "outside.png"
    outside.write_bytes(reference.read_bytes(0))
    (root / "a").mkdir()
    shutil.copy(outside, root / "a" / "fine.png")
    plant(root, outside)
    out = tmp_path / "m.csv"
    refused(run_cli("metrics", reference.root, root, "--features", "pixels", "--device", "cpu", "--out", out,
                    "--cache-dir", tmp_path / "cache"), str(root), says)
    assert nothing_written(out)


def test_folders_that_are_not_images_are_refused_saying_what_they_are(sets, tmp_path, run_cli):
    reference, _ = sets
    imported = tmp_path / "imported"
    shutil.copytree(reference.root, imported / "train")
    shutil.copytree(reference.root, imported / "test")
    refused(run_cli("metrics", reference.root, imported, "--features", "pixels"), str(imported / "train"))
    unfinished = shutil.copytree(reference.root, tmp_path / "unfinished")
    (unfinished / "imageset.json").unlink()
    refused(run_cli("metrics", reference.root, unfinished, "--features", "pixels"), "not a finished ImageSet")
    empty = tmp_path / "empty"
    empty.mkdir()
    refused(run_cli("metrics", reference.root, empty, "--features", "pixels"), str(empty), "no image files")


def test_captions_come_from_class_folders_and_a_flat_folder_notes_their_absence(sets, tmp_path):
    import open_clip
    import torch
    from safetensors.torch import save_file

    from imgsynth.metrics.alignment import clip_score
    from imgsynth.metrics.features import cached_features, create_extractor

    tiny = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16,
                                            "head_width": 16},
            "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    clip_dir = tmp_path / "tiny-clip"
    clip_dir.mkdir()
    torch.manual_seed(0)
    (clip_dir / "open_clip_config.json").write_text(json.dumps({"model_cfg": tiny, "preprocess_cfg": {}}))
    save_file({k: v.contiguous() for k, v in open_clip.CLIP(**tiny).state_dict().items()},
              str(clip_dir / "open_clip_model.safetensors"))
    extractor = create_extractor(f"clip:{clip_dir}", device="cpu")
    reference, candidate = sets
    labelled = ImageFolder(_as_folder(candidate, tmp_path / "labelled"))
    flat = ImageFolder(_as_folder(candidate, tmp_path / "flat", classes=False))
    metrics = ["fid", "clip_score", "cmmd"]
    frame, _ = _run(labelled, reference, tmp_path, metrics=metrics, extractor=extractor)
    # Each image's caption is its class folder's name (what a set uses when its caption is empty).
    expected = clip_score(cached_features(labelled, extractor, tmp_path / "cache"),
                          extractor.encode_text([r.label for r in labelled.records]))
    assert _value(frame, "clip_score") == pytest.approx(expected, rel=1e-9)
    frame, notes = _run(flat, reference, tmp_path, metrics=metrics, extractor=extractor)
    assert frame.metric.tolist() == ["fid", "cmmd"]
    assert [n for n in notes if n.startswith("clip_score")] == [
        f"clip_score skipped: {flat.root} has no captions (nor class labels to stand in for them)"]


def test_a_training_set_adds_its_metrics_for_a_folder_candidate_as_for_a_set(sets, tmp_path):
    reference, candidate = sets
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EvaluationNote)
        base = pd.DataFrame([r.__dict__ for r in evaluate(candidate, reference, "pixels", per_class=False,
                                                          cache_dir=str(tmp_path / "cache"), device="cpu",
                                                          train_set=reference)])
    assert {"memorisation_rate", "knn_entropy"} <= set(base.metric)
    folder = ImageFolder(_as_folder(candidate, tmp_path / "samples"))
    frame, _ = _run(folder, reference, tmp_path, train_set=reference)
    assert frame.metric.tolist() == base.metric.tolist()
    np.testing.assert_allclose(frame.value, base.value, rtol=1e-12)
