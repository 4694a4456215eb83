"""evaluate / evaluate_features, bootstrap intervals, and the `imgsynth metrics` command."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from imgsynth.imageset import ImageSet, ImageSetWriter, Sample
from imgsynth.metrics import (EvaluationNote, clip_diversity, clip_score, cmmd, evaluate, evaluate_features,
                              frechet_distance, kid, precision_recall_density_coverage, rows_to_frame,
                              vendi_score)
from imgsynth.metrics.bootstrap import bootstrap_intervals, bootstrap_replicates
from imgsynth.metrics.features import ClipExtractor

CLIP_SUPPLIES = ClipExtractor.supplies  # features and a text encoder

TINY_CLIP = {"embed_dim": 16,
             "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
             "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def features_and_labels(seed: int = 0):
    rng = np.random.default_rng(seed)
    candidate = torch.tensor(rng.standard_normal((40, 4)))
    reference = torch.tensor(rng.standard_normal((36, 4)) + 0.3)
    candidate_labels = ["a"] * 20 + ["b"] * 17 + ["c"] * 3  # 'c' is tiny and absent from the reference
    reference_labels = ["a"] * 18 + ["b"] * 18
    return candidate, reference, candidate_labels, reference_labels


def run(candidate, reference, candidate_labels, reference_labels, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = evaluate_features(candidate, reference, candidate_labels=candidate_labels,
                                 reference_labels=reference_labels, extractor="test", **kwargs)
    return rows, [str(w.message) for w in caught if issubclass(w.category, EvaluationNote)]


# --------------------------------------------------------------------------------------------- evaluate_features

def test_rows_overall_and_per_class_equal_the_metrics_on_the_subsets():
    candidate, reference, cl, rl = features_and_labels()
    rows, _ = run(candidate, reference, cl, rl)
    value = {(r.metric, r.class_name): r for r in rows}
    assert value["fid", "all"].value == pytest.approx(frechet_distance(candidate, reference), rel=1e-12)
    assert value["kid", "all"].value == pytest.approx(kid(candidate, reference), rel=1e-12)
    assert value["diversity", "all"].value == pytest.approx(clip_diversity(candidate), rel=1e-12)
    assert value["vendi", "all"].value == pytest.approx(vendi_score(candidate), rel=1e-12)
    a_c, a_r = candidate[:20], reference[:18]
    prdc = precision_recall_density_coverage(a_r, a_c, k=5)
    for name in ("precision", "recall", "density", "coverage"):
        assert value[name, "a"].value == pytest.approx(prdc[name], rel=1e-12)
    # KID on a class shrinks its subsets to the class size: here min(20, 18) = 18.
    assert value["kid", "a"].value == pytest.approx(kid(a_c, a_r, subset_size=18), rel=1e-12)
    assert value["fid", "b"].n == 17 and value["fid", "all"].n == 40
    assert [r.class_name for r in rows][0] == "all"
    assert all(r.ci_low is None and r.ci_high is None for r in rows)
    assert all(r.extractor == "test" for r in rows)


def test_impossible_metrics_are_skipped_with_a_note_never_nan():
    candidate, reference, cl, rl = features_and_labels()
    rows, notes = run(candidate, reference, cl, rl)
    assert all(math.isfinite(r.value) for r in rows)
    c_metrics = {r.metric for r in rows if r.class_name == "c"}
    assert c_metrics == {"diversity", "vendi"}  # one-sample metrics still run for the 3 candidates
    assert any("fid skipped for class 'c': 3 candidate / 0 reference images, needs 2 / 2" in n for n in notes)
    assert any("precision/recall/density/coverage skipped for class 'c'" in n for n in notes)
    # A class that the candidate lacks entirely (a collapsed generator) is noted too.
    rows, notes = run(candidate[:20], reference, cl[:20], rl)
    assert not [r for r in rows if r.class_name == "b"]
    assert any("class 'b': 0 candidate" in n for n in notes)


def test_fewer_samples_than_dimensions_is_noted_once():
    rng = np.random.default_rng(1)
    candidate, reference = torch.tensor(rng.standard_normal((30, 40))), torch.tensor(rng.standard_normal((30, 40)))
    labels = ["a"] * 15 + ["b"] * 15
    rows, notes = run(candidate, reference, labels, labels, metrics=["fid"])
    assert len(rows) == 3 and all(math.isfinite(r.value) for r in rows)
    biased = [n for n in notes if "biased" in n]
    assert len(biased) == 1 and "'all', 'a', 'b'" in biased[0]


def test_metric_selection_and_bad_requests():
    candidate, reference, cl, rl = features_and_labels()
    rows, _ = run(candidate, reference, cl, rl, metrics=["fid", "precision", "clip_diversity"], per_class=False)
    assert [r.metric for r in rows] == ["fid", "precision", "diversity"]  # not a CLIP space: 'diversity'
    with pytest.raises(ValueError, match=r"unknown metrics \['fidd'\]"):
        run(candidate, reference, cl, rl, metrics=["fidd"])
    with pytest.raises(ValueError, match="cmmd need CLIP embeddings"):
        run(candidate, reference, cl, rl, metrics=["cmmd"])
    with pytest.raises(ValueError, match="labels do not match features"):
        run(candidate, reference, cl[:-1], rl)
    with pytest.raises(ValueError, match="bootstrap must be ≥ 0"):
        run(candidate, reference, cl, rl, bootstrap=-1)


def test_clip_metrics_need_text_and_use_clip_names():
    candidate, reference, cl, rl = features_and_labels()
    text = candidate.flip(1)
    rows, _ = run(candidate, reference, cl, rl, supplies=CLIP_SUPPLIES, candidate_text=text, per_class=False)
    value = {r.metric: r.value for r in rows}
    assert value["clip_score"] == pytest.approx(clip_score(candidate, text), rel=1e-12)
    assert value["cmmd"] == pytest.approx(cmmd(candidate, reference), rel=1e-12)
    assert "clip_diversity" in value and "diversity" not in value
    rows, notes = run(candidate, reference, cl, rl, supplies=CLIP_SUPPLIES, per_class=False)
    assert "clip_score" not in {r.metric for r in rows} and any("clip_score skipped" in n for n in notes)


def test_bootstrap_rows_are_seeded_and_contain_the_value():
    candidate, reference, cl, rl = features_and_labels()
    options = {"bootstrap": 8, "per_class": False, "kid_subsets": 5}
    first, _ = run(candidate, reference, cl, rl, seed=3, **options)
    again, _ = run(candidate, reference, cl, rl, seed=3, **options)
    other, _ = run(candidate, reference, cl, rl, seed=4, **options)
    assert first == again and first != other
    for row in first:
        assert row.ci_low <= row.value <= row.ci_high
    coverage = next(r for r in first if r.metric == "coverage")
    assert 0.0 <= coverage.ci_low and coverage.ci_high <= 1.0


def test_rows_to_frame_is_tidy():
    candidate, reference, cl, rl = features_and_labels()
    rows, _ = run(candidate, reference, cl, rl, bootstrap=2, kid_subsets=5)
    frame = rows_to_frame(rows)
    assert list(frame.columns) == ["metric", "class", "value", "ci_low", "ci_high", "n", "extractor"]
    assert len(frame) == len(rows) and set(frame["class"]) == {"all", "a", "b", "c"}


# --------------------------------------------------------------------------------------------- bootstrap

def mean_of(x: torch.Tensor) -> dict[str, float]:
    return {"mean": float(x[:, 0].mean())}


def test_percentile_bootstrap_of_a_mean_matches_normal_theory():
    x = torch.tensor(np.random.default_rng(0).standard_normal((400, 1)))
    low, high = bootstrap_intervals(mean_of, x, replicates=400, seed=0, method="percentile")["mean"]
    half_width = 1.96 * float(x.std()) / math.sqrt(400)
    assert high - low == pytest.approx(2 * half_width, rel=0.15)
    assert low < float(x.mean()) < high


def test_bootstrap_resamples_reference_and_pairs_extra_rows():
    candidate = torch.arange(10.0)[:, None]
    reference = torch.arange(100.0, 130.0)[:, None]
    samples = bootstrap_replicates(lambda c, r: {"c": float(c.mean()), "r": float(r.mean())}, candidate, reference,
                                   replicates=20, seed=0)
    assert samples["r"].std() > 0 and samples["c"].std() > 0
    paired = bootstrap_replicates(lambda c, e: {"gap": float((c - e).abs().max())}, candidate, replicates=10,
                                  extra=(candidate.clone(),))
    assert np.all(paired["gap"] == 0)  # extra rows follow the candidate's indices


def test_recentred_interval_is_centred_on_the_estimate_and_clipped():
    x = torch.tensor(np.random.default_rng(1).uniform(0.9, 1.0, (50, 1)))
    interval = bootstrap_intervals(mean_of, x, replicates=50, seed=0, estimate={"mean": 0.999},
                                   bounds={"mean": (0.0, 1.0)})["mean"]
    assert interval[0] < 0.999 and interval[1] == 1.0


@pytest.mark.parametrize("kwargs, message", [({"replicates": 0}, "at least one replicate"),
                                             ({"replicates": 2, "confidence": 1.0}, "confidence"),
                                             ({"replicates": 2, "method": "bca"}, "method")])
def test_bootstrap_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        bootstrap_intervals(mean_of, torch.zeros(3, 1), **kwargs)


# --------------------------------------------------------------------------------------------- ImageSets, CLI

@pytest.fixture(scope="module")
def sets_and_clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[ImageSet, ImageSet, Path]:
    import open_clip
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("evaluate")
    rng = np.random.default_rng(0)

    def write(name: str, n: int, offset: int) -> ImageSet:
        writer = ImageSetWriter(root / name, ["zero", "one"])
        writer.write_all(Sample(Image.fromarray(np.clip(rng.integers(0, 200, (16, 16, 3)) + offset, 0, 255)
                                                .astype(np.uint8)), ["zero", "one"][i % 2],
                                caption=f"a picture of {['zero', 'one'][i % 2]}" if i % 3 else "")
                         for i in range(n))
        return writer.finalize()

    reference, candidate = write("reference", 16, 0), write("candidate", 14, 40)
    folder = root / "tiny-clip"
    folder.mkdir()
    torch.manual_seed(0)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP, "preprocess_cfg": {}}))
    save_file({k: v.contiguous() for k, v in open_clip.CLIP(**TINY_CLIP).state_dict().items()},
              str(folder / "open_clip_model.safetensors"))
    return reference, candidate, folder


def test_evaluate_image_sets_with_a_clip_extractor(sets_and_clip, tmp_path):
    from imgsynth.metrics.features import cached_features, create_extractor

    reference, candidate, clip_dir = sets_and_clip
    extractor = create_extractor(f"clip:{clip_dir}", device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EvaluationNote)
        rows = evaluate(candidate, reference, extractor, per_class=True, cache_dir=str(tmp_path), k=3)
    metrics = {r.metric for r in rows}
    assert {"fid", "kid", "precision", "cmmd", "clip_diversity", "vendi", "clip_score"} <= metrics
    assert {r.class_name for r in rows} == {"all", "zero", "one"}
    # CLIP score pairs each image with its caption, or its class name when the caption is empty.
    texts = [r.caption or r.label for r in candidate.records]
    image_features = cached_features(candidate, extractor, tmp_path)
    expected = clip_score(image_features, extractor.encode_text(texts))
    got = next(r.value for r in rows if r.metric == "clip_score" and r.class_name == "all")
    assert got == pytest.approx(expected, rel=1e-9)
    assert len(list(tmp_path.glob("*.safetensors"))) == 2  # one entry per set


def test_cli_writes_csv_and_prints_table(sets_and_clip, tmp_path, run_cli):
    reference, candidate, clip_dir = sets_and_clip
    out = tmp_path / "metrics.csv"
    code, stdout, stderr = run_cli("metrics", reference.root, candidate.root, "--features", f"clip:{clip_dir}",
                                   "--per-class", "--bootstrap", "2", "--out", out, "--cache-dir", tmp_path / "cache",
                                   "--device", "cpu", "--metrics", "fid,vendi,clip_score")
    assert code == 0, stderr
    frame = pd.read_csv(out)
    assert list(frame.columns) == ["metric", "class", "value", "ci_low", "ci_high", "n", "extractor"]
    assert set(frame["metric"]) == {"fid", "vendi", "clip_score"} and set(frame["class"]) == {"all", "zero", "one"}
    assert frame[["ci_low", "ci_high"]].notna().all().all()
    assert "clip_score" in stdout and "ci_low" in stdout and f"wrote {out}" in stdout
    assert "biased" in stderr  # 14 images in 16 dimensions: FD is noted as biased


def test_cli_errors_are_one_clear_line(sets_and_clip, tmp_path, run_cli, monkeypatch):
    reference, candidate, _ = sets_and_clip
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    code, _, stderr = run_cli("metrics", reference.root, candidate.root, "--features", "inception",
                              "--out", tmp_path / "x.csv")
    assert code == 2 and "error: Inception FID weights not found" in stderr
    code, _, stderr = run_cli("metrics", reference.root, tmp_path / "missing", "--features", "inception",
                              "--out", tmp_path / "x.csv")
    assert code == 2 and "error:" in stderr and "missing" in stderr
    assert not (tmp_path / "x.csv").exists()


def _tiny_set(root: Path, mode: str, size: int) -> ImageSet:
    rng = np.random.default_rng(size)
    shape = (size, size) if mode == "L" else (size, size, 3)
    writer = ImageSetWriter(root, ["a", "b"])
    writer.write_all(Sample(Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)), label, "", i, f"{label}{i}")
                     for i in range(4) for label in ("a", "b"))
    return writer.finalize()


def test_evaluate_refuses_sets_of_another_size_or_mode_before_loading_any_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no Inception weights: loading them would fail
    reference, candidate = _tiny_set(tmp_path / "ref", "L", 8), _tiny_set(tmp_path / "cand", "RGB", 12)
    with pytest.raises(ValueError, match=r"cand holds 12x12 \(HxW\) RGB images but the reference .*ref holds 8x8 "
                                         r"\(HxW\) L images"):
        evaluate(candidate, reference, "inception", cache_dir=str(tmp_path / "cache"))
    assert not (tmp_path / "cache").exists()


def test_evaluate_with_resize_sees_the_candidate_at_the_references_size_and_mode(tmp_path):
    reference, candidate = _tiny_set(tmp_path / "ref", "L", 8), _tiny_set(tmp_path / "cand", "RGB", 12)
    rows = evaluate(candidate, reference, "pixels", per_class=False, metrics=["vendi"], resize=True,
                    cache_dir=str(tmp_path / "cache"))
    # Independently: the candidate's pixels after PIL convert("L") and a bicubic resize to 8x8, as documented.
    pixels = np.stack([np.asarray(candidate.load_image(i).convert("L").resize((8, 8), Image.Resampling.BICUBIC),
                                  dtype=np.float32).reshape(-1) / 255 for i in range(len(candidate))])
    assert rows[0].value == pytest.approx(vendi_score(torch.from_numpy(pixels)), rel=1e-6)
