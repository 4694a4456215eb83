"""Classifier: training quality, determinism, class matching by name, checkpoint safety, scores vs sklearn,
penultimate features, report files and the CLI."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import confusion_matrix, f1_score, recall_score

from imgsynth.classifier import (
    Augmentation, ClassifierConfig, ClassifierError, classification_scores, evaluate_classifier,
    load_classifier, penultimate_features, predict, train_classifier,
)
from imgsynth.imageset import ImageSet, ImageSetWriter, Sample, concatenate


@pytest.fixture(scope="module")
def trained(digits_sets, tmp_path_factory) -> Path:
    """resnet18_small (width 16) trained 3 epochs on the real digits train split."""
    train, _ = digits_sets
    return train_classifier(train, tmp_path_factory.mktemp("clf") / "ckpt", ClassifierConfig(epochs=3), progress=False)


@pytest.fixture(scope="module")
def small_train(digits_sets, tmp_path_factory) -> ImageSet:
    """12 images per digit: enough for a few optimisation steps in well under a second."""
    train, _ = digits_sets
    indices = [i for c in train.classes for i in train.indices_of_class(c)[:12]]
    return train.subset(indices, tmp_path_factory.mktemp("small") / "train")


TINY = dict(epochs=1, width=4, batch_size=32)


def test_classifier_trained_on_real_digits_scores_well_on_real_test(trained, digits_sets, tmp_path):
    _, test = digits_sets
    report = evaluate_classifier(trained, test, tmp_path / "report")
    # Chance is 0.1 and a model that learnt nothing useful sits far below; the full default run reaches ≥0.95.
    assert report.accuracy >= 0.9 and report.macro_f1 >= 0.9
    assert report.n == len(test) and report.missing_classes == [] and report.classes == test.classes
    assert report.confusion.sum() == len(test)
    assert np.trace(report.confusion) / len(test) == pytest.approx(report.accuracy)
    assert set(report.per_class_accuracy) == set(test.classes)

    written = json.loads((tmp_path / "report" / "report.json").read_text())
    assert written["accuracy"] == report.accuracy and written["confusion"] == report.confusion.tolist()
    assert written["test_set"]["id"] == test.id
    with open(tmp_path / "report" / "confusion.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0][1:] == test.classes and [r[0] for r in rows[1:]] == test.classes
    assert np.array_equal(np.array([[int(v) for v in r[1:]] for r in rows[1:]]), report.confusion)
    with Image.open(tmp_path / "report" / "confusion.png") as png:
        assert png.format == "PNG" and min(png.size) > 100

    metadata = json.loads((trained / "classifier.json").read_text())
    assert metadata["training_set"]["id"] == digits_sets[0].id
    assert metadata["preprocessing"]["mode"] == "L" and metadata["preprocessing"]["image_size"] == [16, 16]
    assert len(metadata["training"]["epochs"]) == 3


def test_same_seed_gives_identical_weights_and_predictions(small_train, digits_sets, tmp_path):
    _, test = digits_sets
    first = train_classifier(small_train, tmp_path / "a", ClassifierConfig(seed=7, **TINY), progress=False)
    second = train_classifier(small_train, tmp_path / "b", ClassifierConfig(seed=7, **TINY), progress=False)
    other = train_classifier(small_train, tmp_path / "c", ClassifierConfig(seed=8, **TINY), progress=False)
    weights = [load_classifier(p, device="cpu").model.state_dict() for p in (first, second, other)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])
    assert np.array_equal(predict(first, test)[1], predict(second, test)[1])
    assert evaluate_classifier(first, test).accuracy == evaluate_classifier(second, test).accuracy
    assert load_classifier(first).config == ClassifierConfig(seed=7, **TINY)


def test_streamed_training_matches_in_memory_training(small_train, tmp_path, monkeypatch):
    """Sets too large to decode into memory stream through a DataLoader with the same seeded order."""
    from imgsynth.classifier import training

    cached = train_classifier(small_train, tmp_path / "cached", ClassifierConfig(**TINY), progress=False)
    monkeypatch.setattr(training, "CACHE_LIMIT_BYTES", 0)
    streamed = train_classifier(small_train, tmp_path / "streamed", ClassifierConfig(**TINY), progress=False)
    a, b = (load_classifier(p, device="cpu").model.state_dict() for p in (cached, streamed))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_training_leaves_global_torch_state_alone(small_train, tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_classifier(small_train, tmp_path / "ckpt", ClassifierConfig(**TINY), progress=False)
    assert torch.equal(torch.rand(3), expected)
    assert not torch.are_deterministic_algorithms_enabled()


def test_classes_are_matched_by_name_and_missing_ones_reported(trained, digits_sets, tmp_path):
    _, test = digits_sets
    baseline = evaluate_classifier(trained, test)
    reordered = test.subset(range(len(test)), tmp_path / "reordered", classes=test.classes[::-1])
    # The writer numbers classes by sorted name whatever order is asked for (ImageFolder's order); the asked
    # order is kept for display only, so the label indices stay those of the test set.
    assert reordered.classes == sorted(test.classes) and reordered.labels == test.labels
    assert reordered.manifest.get("display_order") == test.classes[::-1]
    assert evaluate_classifier(trained, reordered).accuracy == baseline.accuracy

    low = [i for i, r in enumerate(test.records) if r.label in {"0", "1", "2", "3", "4"}]
    partial = evaluate_classifier(trained, test.subset(low, tmp_path / "low"))
    assert partial.missing_classes == ["5", "6", "7", "8", "9"]
    assert sorted(partial.per_class_accuracy) == ["0", "1", "2", "3", "4"]
    assert partial.n == len(low) and partial.confusion.shape == (10, 10)
    assert partial.confusion[5:].sum() == 0


def test_test_class_unknown_to_the_classifier_is_an_error_naming_it(trained, digits_sets, tmp_path):
    _, test = digits_sets
    renamed = tmp_path / "renamed"
    shutil.copytree(trained, renamed)
    metadata = json.loads((renamed / "classifier.json").read_text())
    metadata["classes"][9] = "nine"
    (renamed / "classifier.json").write_text(json.dumps(metadata))
    with pytest.raises(ClassifierError, match=r"test classes \['9'\] are unknown to the classifier"):
        evaluate_classifier(renamed, test)


def test_only_safetensors_checkpoints_load(trained, tmp_path):
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(trained / "classifier.json", pickled)
    torch.save(load_classifier(trained, device="cpu").model.state_dict(), pickled / "model.pt")
    with pytest.raises(ClassifierError, match=r"missing model.safetensors; found model.pt, but only safetensors"):
        load_classifier(pickled)
    with pytest.raises(ClassifierError, match="not a classifier checkpoint"):
        load_classifier(pickled / "model.pt")
    with pytest.raises(FileNotFoundError, match="no such classifier checkpoint"):
        load_classifier(tmp_path / "absent")
    broken = tmp_path / "broken"
    shutil.copytree(trained, broken)
    (broken / "model.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(ClassifierError, match="cannot load as resnet18_small weights"):
        load_classifier(broken)


def test_bad_config_and_occupied_output_are_clear_errors(small_train, trained):
    with pytest.raises(ClassifierError, match="unknown classifier architecture 'resnet_nope'"):
        ClassifierConfig(arch="resnet_nope")
    with pytest.raises(ClassifierError, match="invalid epochs=0"):
        ClassifierConfig(epochs=0)
    with pytest.raises(ClassifierError, match="already holds a classifier checkpoint"):
        train_classifier(small_train, trained, ClassifierConfig(**TINY), progress=False)


def test_scores_agree_with_sklearn():
    rng = np.random.default_rng(0)
    k = 6
    y_true = rng.choice([0, 1, 2, 4, 5], size=300)  # class 3 has no support
    y_pred = np.where(rng.random(300) < 0.7, y_true, rng.integers(0, k, 300))
    scores = classification_scores(y_true, y_pred, k)
    present = [0, 1, 2, 4, 5]
    assert np.array_equal(scores["confusion"], confusion_matrix(y_true, y_pred, labels=range(k)))
    assert scores["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, labels=present, average="macro"))
    assert scores["f1"][present] == pytest.approx(f1_score(y_true, y_pred, labels=present, average=None))
    assert scores["recall"][present] == pytest.approx(recall_score(y_true, y_pred, labels=present, average=None))
    assert np.isnan(scores["recall"][3]) and scores["present"].tolist() == present
    # A hand-worked case: class 0 F1 = 2·1/(2·1+0+1) = 2/3, class 1 F1 = 2·2/(2·2+1+0) = 4/5.
    small = classification_scores([0, 0, 1, 1], [0, 1, 1, 1], 2)
    assert small["accuracy"] == 0.75 and small["macro_f1"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    with pytest.raises(ValueError, match="outside 0..1"):
        classification_scores([0, 2], [0, 1], 2)


def test_penultimate_features_are_the_heads_input(trained, digits_sets):
    _, test = digits_sets
    classifier = load_classifier(trained, device="cpu")
    features = penultimate_features(classifier, test, batch_size=100)
    assert features.shape == (len(test), 8 * 16) and features.dtype == torch.float32
    images = [test.load_image(i) for i in range(20)]
    assert torch.allclose(penultimate_features(trained, images), features[:20], atol=1e-5)
    # The head applied to the features gives the logits: these really are the penultimate activations.
    batch = torch.stack([classifier.preprocess(im) for im in images])
    with torch.no_grad():
        assert torch.allclose(classifier.model.fc(classifier.features(batch)), classifier.logits(batch), atol=1e-4)
    # Any size or mode is brought to the classifier's input: a 32 px RGB copy gives features of the same shape.
    bigger = [im.convert("RGB").resize((32, 32)) for im in images]
    assert penultimate_features(trained, bigger).shape == (20, 128)
    labels, probs = predict(trained, test)
    assert probs.shape == (len(test), 10) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert np.array_equal(labels, probs.argmax(axis=1))


def test_augmentation_is_identity_at_zero_strength_and_flips_exactly():
    images = torch.rand(4, 1, 16, 16)
    generator = torch.Generator().manual_seed(0)
    still = Augmentation(degrees=0, translate=0, scale=0)(images, generator)
    assert torch.allclose(still, images, atol=1e-5)
    flipped = Augmentation(degrees=0, translate=0, scale=0, hflip=True)(images, torch.Generator().manual_seed(1))
    is_flip = [torch.allclose(f, torch.flip(x, dims=[-1]), atol=1e-5) for f, x in zip(flipped, images)]
    is_same = [torch.allclose(f, x, atol=1e-5) for f, x in zip(flipped, images)]
    assert all(a != b for a, b in zip(is_flip, is_same))


def test_torchvision_model_by_name_gets_rgb_input_at_its_size(small_train, tmp_path):
    config = ClassifierConfig(arch="resnet18", image_size=32, epochs=1, batch_size=60, lr=1e-3)
    checkpoint = train_classifier(small_train, tmp_path / "tv", config, progress=False)
    classifier = load_classifier(checkpoint, device="cpu")
    assert classifier.mode == "RGB" and classifier.image_size == (32, 32)
    assert classifier.preprocess(small_train.load_image(0)).shape == (3, 32, 32)
    assert penultimate_features(classifier, small_train).shape == (len(small_train), 512)


def test_cli_trains_and_evaluates(small_train, digits_sets, tmp_path, run_cli):
    _, test = digits_sets
    code, out, err = run_cli("classify", "train", small_train.root, tmp_path / "ckpt", "--epochs", "1",
                             "--width", "4", "--batch-size", "32", "--seed", "3", "--no-progress")
    assert code == 0, err
    assert "checkpoint:" in out
    assert json.loads((tmp_path / "ckpt" / "classifier.json").read_text())["config"]["seed"] == 3
    code, out, err = run_cli("classify", "eval", tmp_path / "ckpt", test.root, "--out", tmp_path / "rep")
    assert code == 0, err
    accuracy = json.loads((tmp_path / "rep" / "report.json").read_text())["accuracy"]
    assert f"accuracy  {accuracy:.4f}" in out and "macro-F1" in out
    assert len([line for line in out.splitlines() if line.split()[:1] in ([c] for c in test.classes)]) == 10
    code, _, err = run_cli("classify", "eval", tmp_path / "ckpt" / "classifier.json.bak", test.root)
    assert code == 2 and "no such classifier checkpoint" in err


# --------------------------------------------------------------------------------------------- few steps

def _learning_rates(schedule_of, total_steps: int, peak: float = 0.01) -> list[float]:
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([parameter], lr=peak)
    schedule = schedule_of(optimizer, total_steps)
    rates = []
    for _ in range(total_steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return rates


@pytest.mark.parametrize("total_steps", range(1, 41))
def test_the_schedule_is_one_cycle_where_it_fits_and_constant_below(total_steps):
    from imgsynth.classifier.training import MIN_ONE_CYCLE_STEPS, learning_rate_schedule

    rates = _learning_rates(lambda o, n: learning_rate_schedule(o, 0.01, n), total_steps)
    if total_steps < MIN_ONE_CYCLE_STEPS:
        assert rates == [0.01] * total_steps  # torch's OneCycleLR divides by zero at 4 steps, starves 1 step
    else:  # the normal path is torch's one-cycle itself, so default runs train exactly as before
        one_cycle = _learning_rates(lambda o, n: torch.optim.lr_scheduler.OneCycleLR(
            o, max_lr=0.01, total_steps=n, pct_start=0.25), total_steps)
        assert rates == one_cycle and max(rates) == pytest.approx(0.01, rel=0.05)


@pytest.mark.parametrize("per_class, batch_size, steps", [(1, 10, 1), (1, 5, 2), (2, 5, 4)])
def test_a_set_with_one_image_per_class_trains_in_one_two_or_four_steps(digits_sets, tmp_path, per_class,
                                                                       batch_size, steps):
    from safetensors.torch import load_file

    from imgsynth.classifier import build_model

    train, _ = digits_sets
    tiny = train.subset([i for c in train.classes for i in train.indices_of_class(c)[:per_class]], tmp_path / "set")
    config = ClassifierConfig(epochs=1, batch_size=batch_size, width=4, augment=False)
    checkpoint = train_classifier(tiny, tmp_path / "clf", config, progress=False)
    info = json.loads((checkpoint / "classifier.json").read_text())
    assert info["training"]["steps"] == steps and np.isfinite(info["training"]["final_loss"])
    with torch.random.fork_rng():  # the weights training started from (train_classifier seeds the same way)
        torch.manual_seed(config.seed)
        start = build_model(config.arch, len(tiny.classes), 1, config.width).state_dict()
    trained = load_file(str(checkpoint / "model.safetensors"))
    moved = max(float((trained[k] - start[k]).abs().max()) for k in trained if k.endswith("conv1.weight"))
    # AdamW's first step moves a weight by about lr: the short run trains at the peak rate, not at ~lr/1e5.
    assert config.lr / 2 < moved < 2 * config.lr * steps
    assert predict(checkpoint, [tiny.load_image(0)])[1].shape == (1, len(tiny.classes))


def test_too_small_a_set_or_batch_says_the_minimum(digits_sets, tmp_path):
    train, _ = digits_sets
    one = train.subset(train.indices_of_class("3")[:1], tmp_path / "one")
    with pytest.raises(ClassifierError, match="1 image is too few to train a classifier; it needs at least 2"):
        train_classifier(one, tmp_path / "a", ClassifierConfig(epochs=1), progress=False)
    two = train.subset(train.indices_of_class("3")[:2], tmp_path / "two")
    with pytest.raises(ClassifierError, match="batch size 1 is too small .* 8x8 px input.* 2 or more"):
        train_classifier(two, tmp_path / "b", ClassifierConfig(epochs=1, batch_size=1, image_size=8),
                         progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# ------------------------------------------------------------------------------------------ training weights

@pytest.fixture(scope="module")
def mislabelled(digits_sets, tmp_path_factory) -> tuple[ImageSet, ImageSet, ImageSet]:
    """(right, weighted, plain): 30 images per digit with their labels; the same joined to 30 more per digit
    all labelled "0", the wrong half weighing 0; and that joined set again without a weight column."""
    train, _ = digits_sets
    root = tmp_path_factory.mktemp("weights")
    right = train.subset([i for c in train.classes for i in train.indices_of_class(c)[:30]], root / "right")
    writer = ImageSetWriter(root / "wrong", train.classes, kind="real", license="cc0-1.0")
    writer.write_all(Sample(train.load_image(i), "0", image_id=f"wrong-{i}")
                     for c in train.classes for i in train.indices_of_class(c)[30:60])
    wrong = writer.finalize()
    weighted = concatenate([right, wrong], root / "weighted", weights=[1.0, 0.0])
    return right, weighted, concatenate([right, wrong], root / "plain")


LEARN = dict(epochs=4, width=8, batch_size=32)


def test_use_weights_learns_only_from_the_images_that_weigh(mislabelled, digits_sets, tmp_path):
    _, test = digits_sets
    right, weighted, _ = mislabelled
    accuracy = {name: evaluate_classifier(train_classifier(train_set, tmp_path / name, ClassifierConfig(
        use_weights=use, **LEARN), progress=False), test).accuracy
        for name, train_set, use in (("right", right, False), ("weighted", weighted, True),
                                     ("ignored", weighted, False))}
    # The mislabelled half weighs 0: trained on it with use_weights, the classifier scores as one trained on
    # the right half alone (BatchNorm still sees every image, hence the margin); ignoring the weights, it
    # learns that half of everything is a "0".
    assert accuracy["weighted"] >= accuracy["right"] - 0.1, accuracy
    assert accuracy["weighted"] > accuracy["ignored"] + 0.15, accuracy
    metadata = json.loads((tmp_path / "weighted" / "classifier.json").read_text())
    assert metadata["config"]["use_weights"] is True and len(metadata["training_set"]["weights_sha256"]) == 64
    assert load_classifier(tmp_path / "weighted").config.use_weights


def test_without_use_weights_a_weighted_set_trains_as_one_without_weights(mislabelled, tmp_path):
    _, weighted, plain = mislabelled
    ignored = train_classifier(weighted, tmp_path / "ignored", ClassifierConfig(**TINY), progress=False)
    unweighted = train_classifier(plain, tmp_path / "plain", ClassifierConfig(**TINY), progress=False)
    a, b = (load_classifier(p, device="cpu").model.state_dict() for p in (ignored, unweighted))
    assert all(torch.equal(a[k], b[k]) for k in a)
    metadata = json.loads((ignored / "classifier.json").read_text())
    # The checkpoint says what it always said: no use_weights key, no weights digest.
    assert "use_weights" not in metadata["config"] and "weights_sha256" not in metadata["training_set"]
    assert load_classifier(ignored).config.use_weights is False


def test_weighted_streamed_training_matches_in_memory_training(mislabelled, tmp_path, monkeypatch):
    from imgsynth.classifier import training

    _, weighted, _ = mislabelled
    config = ClassifierConfig(use_weights=True, **TINY)
    cached = train_classifier(weighted, tmp_path / "cached", config, progress=False)
    monkeypatch.setattr(training, "CACHE_LIMIT_BYTES", 0)
    streamed = train_classifier(weighted, tmp_path / "streamed", config, progress=False)
    a, b = (load_classifier(p, device="cpu").model.state_dict() for p in (cached, streamed))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_use_weights_on_a_set_without_weights_is_refused(small_train, tmp_path, run_cli):
    with pytest.raises(ClassifierError, match=r"use_weights: .*train has no weight column"):
        train_classifier(small_train, tmp_path / "a", ClassifierConfig(use_weights=True, **TINY), progress=False)
    code, _, err = run_cli("classify", "train", small_train.root, tmp_path / "b", "--use-weights", "--epochs", "1",
                           "--no-progress")
    assert code != 0 and "has no weight column" in err and "Traceback" not in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b" / "classifier.json").exists()


def test_the_weighted_loss_is_the_weighted_mean_of_the_cross_entropies():
    from imgsynth.classifier.training import weighted_cross_entropy

    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [-1.0, 3.0, 0.0], [0.0, 0.0, 0.0]])
    labels = torch.tensor([0, 2, 0, 1])
    weights = torch.tensor([1.0, 3.0, 0.0, 0.5], dtype=torch.float64)
    ce = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    expected = (1.0 * ce[0] + 3.0 * ce[1] + 0.5 * ce[3]) / 4.5
    assert weighted_cross_entropy(logits, labels, weights) == pytest.approx(float(expected), rel=1e-6)
    # Equal weights are the plain mean, whatever their scale.
    assert weighted_cross_entropy(logits, labels, torch.full((4,), 7.0)) == pytest.approx(float(ce.mean()), rel=1e-6)
    smoothed = torch.nn.functional.cross_entropy(logits, labels, reduction="none", label_smoothing=0.1)
    assert weighted_cross_entropy(logits, labels, weights, 0.1) == pytest.approx(
        float((weights.float() * smoothed).sum() / 4.5), rel=1e-6)


def test_a_batch_of_only_zero_weight_images_is_skipped(digits_sets, tmp_path):
    train, _ = digits_sets
    two = [train.indices_of_class("3")[:2], train.indices_of_class("5")[:2]]
    weighted = concatenate([train, train], tmp_path / "set", indices=two, weights=[1.0, 0.0])
    config = ClassifierConfig(epochs=4, batch_size=2, width=4, augment=False, use_weights=True)
    # The seeded shuffles put both zero-weight images in one batch in some epochs (checked, not assumed).
    shuffle = torch.Generator().manual_seed(config.seed)
    halves = [set(torch.randperm(4, generator=shuffle)[:2].tolist()) for _ in range(config.epochs)]
    assert {0, 1} in halves or {2, 3} in halves
    info = json.loads((train_classifier(weighted, tmp_path / "clf", config, progress=False)
                       / "classifier.json").read_text())
    assert all(np.isfinite(epoch["loss"]) and 0 <= epoch["accuracy"] <= 1 for epoch in info["training"]["epochs"])
