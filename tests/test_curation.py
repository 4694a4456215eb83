"""Curation filters: each rule against an independent oracle, provenance in imageset.json, determinism, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from imgsynth.curation import PixelEmbedding, curate, curation_record, greedy_dedup, nearest_neighbours
from imgsynth.curation.filters import keep_aligned, keep_confident, rebalance
from imgsynth.imageset import ImageSet, ImageSetError, ImageSetWriter, Sample, verify

PLANTED = {"0": 3, "4": 2, "7": 1}  # class → number of near-copies planted in it


@pytest.fixture(scope="module")
def samples(digits_sets, tmp_path_factory) -> ImageSet:
    """20 real digits per class written as a 'generated' set, plus near-copies (brightness/contrast
    changed, so the bytes differ) of the first image of a few classes, placed at the end."""
    train, _ = digits_sets
    rows = []
    for label in train.classes:
        members = train.indices_of_class(label)[:20]
        rows += [(train.load_image(i), label, f"{label}-{n:02d}") for n, i in enumerate(members)]
        for copy in range(PLANTED.get(label, 0)):
            original = np.asarray(train.load_image(members[0]), dtype=np.float32)
            changed = np.clip(original * (0.9 - 0.05 * copy) + 12, 0, 255).astype(np.uint8)
            rows.append((Image.fromarray(changed), label, f"{label}-copy{copy}"))
    writer = ImageSetWriter(tmp_path_factory.mktemp("samples") / "samples", train.classes, kind="generated",
                            generator={"pipeline": "test"})
    writer.write_all(Sample(image, label, f"a handwritten digit {label}", seed=n, image_id=name)
                     for n, (image, label, name) in enumerate(rows))
    return writer.finalize()


def _pixels(image_set: ImageSet, indices) -> np.ndarray:
    """Independent oracle for pixels:16 on 16 px images: mean-centred, unit-length raw pixels."""
    x = np.stack([np.asarray(image_set.load_image(i), dtype=np.float64).ravel() for i in indices])
    x -= x.mean(axis=1, keepdims=True)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# --------------------------------------------------------------------------------------------- pure rules

def _reference_dedup(x: np.ndarray, threshold: float) -> tuple[list[bool], list[int]]:
    kept: list[int] = []
    mask, dup = [], []
    for i in range(len(x)):
        hits = [j for j in kept if float(x[i] @ x[j]) >= threshold]
        mask.append(not hits)
        dup.append(hits[0] if hits else -1)
        if not hits:
            kept.append(i)
    return mask, dup


@pytest.mark.parametrize("chunk", [1, 3, 7, 1000])
def test_greedy_dedup_matches_a_brute_force_reference(chunk):
    rng = np.random.default_rng(0)
    base = rng.normal(size=(30, 8))
    x = np.concatenate([base, base[[2, 5, 5, 11]] + rng.normal(scale=0.05, size=(4, 8))])
    x = x[rng.permutation(len(x))]
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    kept, duplicate_of, similarity = greedy_dedup(x, 0.9, chunk=chunk)
    mask, dup = _reference_dedup(x, 0.9)
    assert kept.tolist() == mask
    assert sum(mask) <= 31
    for i in np.flatnonzero(~kept):
        # Which earlier kept image is named may differ from the reference; that it is a kept one above threshold may not.
        assert kept[duplicate_of[i]] and duplicate_of[i] < i
        assert similarity[i] == pytest.approx(float(x[i] @ x[duplicate_of[i]]), abs=1e-5) and similarity[i] >= 0.9


def test_greedy_dedup_keeps_both_ends_of_a_chain():
    a, c = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    b = (a + c) / np.linalg.norm(a + c)  # cos(a, b) = cos(b, c) ≈ 0.707, cos(a, c) = 0
    kept, duplicate_of, _ = greedy_dedup(np.stack([a, b, c]).astype(np.float32), 0.7)
    assert kept.tolist() == [True, False, True] and duplicate_of.tolist() == [-1, 0, -1]


def test_nearest_neighbours_in_chunks_equals_the_full_argmax():
    rng = np.random.default_rng(1)
    q, r = rng.normal(size=(13, 5)), rng.normal(size=(17, 5))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    r /= np.linalg.norm(r, axis=1, keepdims=True)
    index, sim = nearest_neighbours(q.astype(np.float32), r.astype(np.float32), chunk=4)
    full = q @ r.T
    assert index.tolist() == full.argmax(axis=1).tolist()
    np.testing.assert_allclose(sim, full.max(axis=1), atol=1e-6)


def test_pixel_embedding_is_a_thumbnail_correlation():
    rng = np.random.default_rng(2)
    image = Image.fromarray(rng.integers(0, 200, size=(16, 16), dtype=np.uint8))
    brighter = Image.fromarray((np.asarray(image, dtype=np.uint16) + 40).astype(np.uint8))
    embed = PixelEmbedding(8)
    x, y = embed.extract([image, brighter])
    assert x.shape == (64,) and np.linalg.norm(x) == pytest.approx(1.0, abs=1e-5)
    assert float(x @ y) == pytest.approx(1.0, abs=1e-5)  # brightness shifts do not change correlation
    thumb = np.asarray(image.resize((8, 8), Image.Resampling.BILINEAR), dtype=np.float64).ravel()
    thumb -= thumb.mean()
    np.testing.assert_allclose(x, thumb / np.linalg.norm(thumb), atol=1e-5)
    flat = embed.extract([Image.new("L", (16, 16), 77)])
    assert not flat.any()  # a flat image has no structure and matches nothing
    with pytest.raises(ValueError, match="at least 2"):
        PixelEmbedding(1)


def test_keep_aligned_threshold_and_top_fraction_per_class():
    scores = np.array([5.0, 1.0, 3.0, 3.0, 9.0, 2.0, 3.0])
    labels = np.array([0, 0, 0, 1, 1, 1, 1])
    assert keep_aligned(scores, labels, min_score=3.0).tolist() == [True, False, True, True, True, False, True]
    # Top half: class 0 keeps ceil(1.5) = 2 (5 and 3); class 1 keeps 2 (9, then the first of the tied 3s).
    assert keep_aligned(scores, labels, top_fraction=0.5).tolist() == [True, False, True, True, True, False, False]
    both = keep_aligned(scores, labels, min_score=4.0, top_fraction=0.5)
    assert both.tolist() == [True, False, False, False, True, False, False]
    with pytest.raises(ValueError, match="top fraction"):
        keep_aligned(scores, labels, top_fraction=0.0)


def test_keep_confident_is_inclusive():
    assert keep_confident(np.array([0.79, 0.8, 0.95]), 0.8).tolist() == [False, True, True]
    with pytest.raises(ValueError, match="min_confidence"):
        keep_confident(np.array([0.5]), 1.2)


def test_rebalance_downsamples_every_class_to_the_smallest_with_a_seed():
    labels = np.array([0] * 5 + [1] * 3 + [2] * 7)
    masks = [rebalance(labels, seed) for seed in range(6)]
    for mask in masks:
        assert [int(mask[labels == c].sum()) for c in (0, 1, 2)] == [3, 3, 3]
        assert mask[labels == 1].all()  # the smallest class is kept whole
    assert (rebalance(labels, 3) == masks[3]).all()
    assert len({tuple(m) for m in masks}) > 1  # the seed chooses which members stay
    assert not rebalance(np.array([], dtype=int), 0).any()


# --------------------------------------------------------------------------------------------- curate()

def test_dedup_drops_the_planted_copies_and_records_every_drop(samples, tmp_path):
    curated = curate(samples, tmp_path / "curated", dedup=0.99, embedding="pixels:16", rebalance=False)
    record = curation_record(curated)
    names = {r.file_name: r for r in samples.records}
    drops = record["drops"]
    dropped = {d["file_name"] for d in drops}
    planted = {f"images/{label}/{label}-copy{n}.png" for label, k in PLANTED.items() for n in range(k)}
    assert planted <= dropped
    for d in drops:
        assert d["filter"] == "dedup" and d["similarity"] >= 0.99
        assert d["label"] == names[d["duplicate_of"]].label and d["sha256"] == names[d["file_name"]].sha256
    for label in PLANTED:
        copies = [d for d in drops if d["file_name"] in planted and d["label"] == label]
        assert {d["duplicate_of"] for d in copies} == {f"images/{label}/{label}-00.png"}
    # What is left has no pair at or above the threshold inside a class (independent pixel oracle).
    for label in curated.classes:
        x = _pixels(curated, curated.indices_of_class(label))
        sims = x @ x.T - 2 * np.eye(len(x))
        assert sims.max() < 0.99
    # Provenance: kind, parent, settings, counts per filter and class; dropped images are not copied.
    assert curated.kind == "curated" and curated.parents[0]["id"] == samples.id
    assert record["filters"] == [{"filter": "dedup", "threshold": 0.99, "embedding": "pixels:16",
                                  "scope": "within class"}]
    assert record["dropped"]["by_filter"] == {"dedup": len(drops)}
    per_class = record["dropped"]["by_filter_and_class"]["dedup"]
    assert sum(per_class.values()) == len(drops) and per_class["0"] >= 3
    assert record["kept"]["total"] == len(curated) == len(samples) - len(drops)
    assert curated.manifest["config"]["curation"]["filters"] == record["filters"]
    on_disk = {p.relative_to(curated.root).as_posix() for p in (curated.root / "images").rglob("*.png")}
    assert not on_disk & dropped and len(on_disk) == len(curated)
    assert verify(curated.root).ok
    kept_hashes = {r.sha256 for r in curated.records}
    assert kept_hashes == {r.sha256 for r in samples.records if r.file_name not in dropped}


def test_rebalance_after_filtering_evens_the_classes(samples, tmp_path):
    curated = curate(samples, tmp_path / "balanced", dedup=0.99, embedding="pixels:16", rebalance=True, seed=4)
    record = curation_record(curated)
    smallest = min(20 + PLANTED.get(c, 0) - record["dropped"]["by_filter_and_class"]["dedup"].get(c, 0)
                   for c in samples.classes)
    assert set(curated.counts.values()) == {smallest}
    assert [f["filter"] for f in record["filters"]] == ["dedup", "rebalance"]
    assert record["dropped"]["by_filter"]["rebalance"] == sum(
        1 for d in record["drops"] if d["filter"] == "rebalance")


def test_curation_is_deterministic(samples, tmp_path):
    first = curate(samples, tmp_path / "a", dedup=0.98, embedding="pixels:8", seed=7)
    second = curate(samples, tmp_path / "b", dedup=0.98, embedding="pixels:8", seed=7)
    assert first.id == second.id
    assert curation_record(first)["drops"] == curation_record(second)["drops"]
    assert json.loads((first.root / "metadata.jsonl").read_text().splitlines()[0]) == \
        json.loads((second.root / "metadata.jsonl").read_text().splitlines()[0])


class BrightnessClip:
    """A stand-in CLIP: images embed as (mean brightness, 1 − mean), every caption as (1, 0),
    so an image's CLIP score is 100 · m / sqrt(m² + (1 − m)²), computable independently."""

    id = "stub-clip"

    def extract(self, images):
        m = np.array([np.asarray(image, dtype=np.float64).mean() / 255 for image in images])
        return np.stack([m, 1 - m], axis=1)

    def encode_text(self, texts):
        assert all(t.startswith("a handwritten digit") for t in texts)
        return np.tile([1.0, 0.0], (len(texts), 1))


def _stub_scores(image_set: ImageSet) -> np.ndarray:
    m = np.array([np.asarray(image_set.load_image(i), dtype=np.float64).mean() / 255 for i in range(len(image_set))])
    return 100 * m / np.sqrt(m ** 2 + (1 - m) ** 2)


def test_clip_filter_keeps_scores_above_the_threshold_and_the_top_of_each_class(samples, tmp_path):
    scores = _stub_scores(samples)
    threshold = float(np.median(scores))
    curated = curate(samples, tmp_path / "clip", min_clip_score=threshold, clip=BrightnessClip(), rebalance=False)
    expected = {r.file_name for r, s in zip(samples.records, scores) if s >= threshold}
    assert {r.file_name for r in curated.records} == expected
    drops = curation_record(curated)["drops"]
    assert all(d["filter"] == "clip" and d["clip_score"] < threshold for d in drops)
    top = curate(samples, tmp_path / "top", clip_top_fraction=0.25, clip=BrightnessClip(), rebalance=False)
    for label in samples.classes:
        members = samples.indices_of_class(label)
        best = sorted(members, key=lambda i: -scores[i])[:int(np.ceil(0.25 * len(members)))]
        assert {r.file_name for r in top.records if r.label == label} == \
            {samples.records[i].file_name for i in best}


def test_bad_settings_give_clear_errors(samples, tmp_path):
    with pytest.raises(ValueError, match="min_confidence needs a classifier"):
        curate(samples, tmp_path / "x", min_confidence=0.8)
    with pytest.raises(ValueError, match="needs a CLIP model"):
        curate(samples, tmp_path / "x", min_clip_score=20)
    with pytest.raises(ValueError, match="cosine-similarity threshold"):
        curate(samples, tmp_path / "x", dedup=1.5, embedding="pixels:8")
    with pytest.raises(ValueError, match="no curation filter requested"):
        curate(samples, tmp_path / "x", rebalance=False)
    with pytest.raises(ValueError, match="expected pixels"):
        curate(samples, tmp_path / "x", dedup=0.9, embedding="pixels:big")
    with pytest.raises(ImageSetError, match="kept none of the"):
        curate(samples, tmp_path / "x", min_clip_score=101, clip=BrightnessClip())
    assert not (tmp_path / "x").exists()


def test_cli_curates_and_reports_drops(samples, tmp_path, run_cli):
    out = tmp_path / "cli"
    code, stdout, stderr = run_cli("curate", samples.root, out, "--dedup", "0.99", "--embedding", "pixels:16",
                                   "--no-rebalance")
    assert code == 0, stderr
    curated = ImageSet.open(out)
    assert f"kept {len(curated)} of {len(samples)}" in stdout and "dedup  dropped" in stdout
    code, _, stderr = run_cli("curate", samples.root, tmp_path / "bad", "--min-confidence", "0.8")
    assert code == 2 and "error: min_confidence needs a classifier" in stderr


# --------------------------------------------------------------------------------------------- recipes

def test_recipes_accept_curated_loop_modes_and_reject_useless_ones():
    from imgsynth.experiments.config import RecipeError, base_mode, recipe_from_dict

    recipe = recipe_from_dict({"loop": {"modes": ["replace", "replace+curate"]},
                               "curate": {"min_confidence": 0.9, "dedup": 0.99, "embedding": "pixels:8"}})
    assert [base_mode(m) for m in recipe.loop.modes] == ["replace", "replace"]
    with pytest.raises(RecipeError, match=r"unknown mode\(s\) \['bogus\+curate'\].*'\+curate'"):
        recipe_from_dict({"loop": {"modes": ["bogus+curate"]}, "curate": {"dedup": 0.9}})
    with pytest.raises(RecipeError, match=r"\[curate\] nothing to do"):
        recipe_from_dict({"loop": {"modes": ["replace+curate"]}, "curate": {"rebalance": False}})
    for bad, message in (("pixels:x", "expected pixels:<size>"), ("sift", "unknown space 'sift'")):
        with pytest.raises(RecipeError, match=message):
            recipe_from_dict({"loop": {"modes": ["replace+curate"]}, "curate": {"dedup": 0.9, "embedding": bad}})
    for good in ("pixels:8", "domain", "clip:ViT-B-32"):
        recipe_from_dict({"loop": {"modes": ["replace+curate"]}, "curate": {"dedup": 0.9, "embedding": good}})


# --------------------------------------------------------------------------------------------- with a classifier

@pytest.fixture(scope="module")
def classifier(digits_sets, tmp_path_factory):
    from imgsynth.classifier import ClassifierConfig, train_classifier

    train, _ = digits_sets
    return train_classifier(train, tmp_path_factory.mktemp("classifier") / "ckpt",
                            ClassifierConfig(epochs=2, width=8, seed=0), progress=False)


def test_confidence_filter_keeps_what_the_reference_classifier_recognises(samples, classifier, tmp_path):
    from imgsynth.classifier import load_classifier, predict

    curated = curate(samples, tmp_path / "confident", min_confidence=0.9, classifier=classifier, rebalance=False)
    _, probs = predict(classifier, samples)  # the whole set at once: a different path than curate's batches
    classes = load_classifier(classifier).classes
    own = probs[np.arange(len(samples)), [classes.index(r.label) for r in samples.records]]
    assert {r.file_name for r in curated.records} == {r.file_name for r, p in zip(samples.records, own) if p >= 0.9}
    by_name = {r.file_name: p for r, p in zip(samples.records, own)}
    for drop in curation_record(curated)["drops"]:
        assert drop["filter"] == "confidence" and drop["probability"] == pytest.approx(by_name[drop["file_name"]],
                                                                                      abs=1e-5)
    assert curation_record(curated)["filters"][0]["classifier"] == str(classifier)


def test_confidence_filter_drops_mislabeled_images(digits_sets, classifier, tmp_path):
    _, test = digits_sets
    zeros, ones = test.indices_of_class("0")[:10], test.indices_of_class("1")[:10]
    writer = ImageSetWriter(tmp_path / "labels", test.classes, kind="generated")
    writer.write_all([Sample(test.read_bytes(i), "1", image_id=f"zero-as-one-{i}") for i in zeros] +
                     [Sample(test.read_bytes(i), "1", image_id=f"one-{i}") for i in ones])
    curated = curate(writer.finalize(), tmp_path / "out", min_confidence=0.5, classifier=classifier, rebalance=False)
    kept = [r.file_name for r in curated.records]
    assert sum("zero-as-one" in name for name in kept) <= 1
    assert sum("/one-" in name for name in kept) >= 8


def test_dedup_stays_perceptual_with_a_classifier_unless_domain_is_asked_for(samples, classifier, tmp_path):
    """A classifier's features pull a class together by design; dedup there must be an explicit choice."""
    pixels = curate(samples, tmp_path / "pixels", dedup=0.98, classifier=classifier, rebalance=False)
    assert curation_record(pixels)["filters"][0]["embedding"] == "pixels:16"
    domain = curate(samples, tmp_path / "domain", dedup=0.98, classifier=classifier, rebalance=False,
                    embedding=f"domain:{classifier}")
    assert curation_record(domain)["filters"][0]["embedding"].startswith("domain:")
    assert len(domain) < len(pixels)  # at the same threshold the class-clustered space drops more


@pytest.mark.slow
def test_loop_compares_a_mode_with_and_without_curation(tmp_path):
    from imgsynth.experiments.config import load_recipe
    from imgsynth.experiments.loop import Experiment
    from imgsynth.experiments.recipes import shipped_recipes
    from imgsynth.reports.build import run_and_report

    recipe = load_recipe(shipped_recipes()["smoke"], ["loop.generations=2", 'loop.modes=["replace", "replace+curate"]',
                                                      "curate.dedup=0.3", 'curate.embedding="pixels:8"'])
    run = run_and_report(Experiment(recipe, tmp_path / "run"))
    seed_dir = run / "seed_0"  # the one replicate's folders
    base = ImageSet.open(seed_dir / "gen_0" / "samples")
    start = ImageSet.open(seed_dir / "replace+curate" / "gen_0" / "curated")
    assert start.kind == "curated" and start.parents[0]["id"] == base.id and len(start) < len(base)
    curated = ImageSet.open(seed_dir / "replace+curate" / "gen_1" / "curated")
    assert len(set(curated.counts.values())) == 1  # rebalanced
    assert not (seed_dir / "replace" / "gen_1" / "curated").exists() and not (seed_dir / "gen_0" / "curated").exists()
    trained_on = {mode: json.loads((seed_dir / mode / "gen_1" / "metrics.json").read_text())["train_set"]["id"]
                  for mode in ("replace", "replace+curate")}
    assert trained_on == {"replace": base.id, "replace+curate": start.id}
    import pandas as pd

    frame = pd.read_csv(run / "metrics.csv")
    counts = frame[frame["metric"] == "sample_count"].set_index(["mode", "generation"])["value"]
    assert counts[("replace+curate", 1)] == len(curated) and counts[("replace", 1)] == len(base)
