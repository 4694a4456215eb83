"""Memorisation rate (distance-ratio test, τ = 1/3) and authenticity (Alaa et al. 2022) against a training set:
copies are memorised, independent draws sit at the real test set's own level (3⁻ᵈ in d dimensions), known
mixtures in between; checked against a scipy cKDTree implementation written here. The metrics are opt-in
through the TRAIN_FEATURES need and reach a run's metrics.csv, reference, findings and dashboard."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.spatial import cKDTree

from imgsynth.metrics.evaluate import evaluate_features
from imgsynth.metrics.memorisation import RATIO_THRESHOLD, authentic, authenticity, memorisation_rate, memorised
from imgsynth.metrics.registry import METRICS, TRAIN_FEATURES

D, N = 2, 2000


def _reference_memorised(x: np.ndarray, train: np.ndarray) -> np.ndarray:
    distances = cKDTree(train).query(x, 2)[0]
    return (distances[:, 0] == 0) | (distances[:, 0] / distances[:, 1] < 1 / 3)


def _reference_authentic(x: np.ndarray, train: np.ndarray) -> np.ndarray:
    tree = cKDTree(train)
    to_train, nearest = tree.query(x, 1)
    spacing = tree.query(train, 2)[0][:, 1]
    return to_train > spacing[nearest]


@pytest.fixture(scope="module")
def draws() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(23)
    return {name: rng.normal(size=(N, D)) for name in ("train", "test", "independent")}


def test_copies_of_the_training_set_are_all_memorised_and_none_authentic(draws):
    train = draws["train"]
    copies = train[np.random.default_rng(0).permutation(N)[:500]]
    assert memorisation_rate(copies, train) == 1.0
    assert authenticity(copies, train) == 0.0
    # A training set that holds an image twice: the copy's two nearest are both at 0, still a copy.
    doubled = np.concatenate([train, train[:10]])
    assert memorised(train[:10], doubled).all() and not authentic(train[:10], doubled).any()
    assert RATIO_THRESHOLD == pytest.approx(1 / 3)


def test_an_independent_draw_sits_at_the_test_sets_own_rate_and_the_poisson_limit(draws):
    train, test, independent = draws["train"], draws["test"], draws["independent"]
    own, other = memorisation_rate(test, train), memorisation_rate(independent, train)
    limit = RATIO_THRESHOLD ** D  # (d1/d2)^d is uniform for a Poisson process: P = τ^d
    se = math.sqrt(limit * (1 - limit) / N)
    assert abs(other - own) < 4 * math.sqrt(2) * se, (own, other)
    assert abs(own - limit) < 4 * se and abs(other - limit) < 4 * se, (own, other, limit)
    a_own, a_other = authenticity(test, train), authenticity(independent, train)
    assert abs(a_own - a_other) < 4 * math.sqrt(2 * 0.25 / N) and 0.2 < a_own < 0.8


@pytest.mark.parametrize("share", [0.25, 0.5, 0.75])
def test_a_mixture_of_copies_and_independent_draws_lies_between_in_proportion(draws, share):
    train, independent = draws["train"], draws["independent"]
    n_copies = int(share * 400)
    mixture = np.concatenate([train[:n_copies], independent[:400 - n_copies]])
    fresh_rate = memorised(independent[:400 - n_copies], train).mean()
    # Per-sample decisions against a fixed training set: the mixture's rate is exactly the weighted one.
    assert memorisation_rate(mixture, train) == pytest.approx(share + (1 - share) * fresh_rate)
    assert memorisation_rate(independent[:400], train) < memorisation_rate(mixture, train) < 1.0
    fresh_authentic = authentic(independent[:400 - n_copies], train).mean()
    assert authenticity(mixture, train) == pytest.approx((1 - share) * fresh_authentic)


def test_both_agree_with_a_cKDTree_implementation_in_higher_dimensions():
    rng = np.random.default_rng(5)
    train = rng.normal(size=(300, 6))
    x = np.concatenate([train[:40] + rng.normal(scale=0.05, size=(40, 6)), rng.normal(size=(160, 6))])
    assert np.array_equal(memorised(x, train), _reference_memorised(x, train))
    assert np.array_equal(authentic(x, train), _reference_authentic(x, train))
    assert 0 < memorisation_rate(x, train) < 1


def test_the_metrics_are_opt_in_and_computed_per_class_against_that_class_of_the_training_set(draws):
    train, independent = draws["train"][:400], draws["independent"][:200]
    labels = lambda n: ["a"] * (n // 2) + ["b"] * (n - n // 2)  # noqa: E731
    candidate = np.concatenate([train[:50], independent[:50], train[200:250], independent[100:150]])
    common = dict(candidate_labels=labels(200), reference=torch.tensor(draws["test"][:200]),
                  reference_labels=labels(200), extractor="x")
    without = evaluate_features(torch.tensor(candidate), **common)
    assert not {r.metric for r in without} & {"memorisation_rate", "authenticity"}
    rows = evaluate_features(torch.tensor(candidate), **common, train=torch.tensor(train), train_labels=labels(400),
                             metrics=["memorisation_rate", "authenticity"], bootstrap=10)
    by = {(r.metric, r.class_name): r for r in rows}
    for label, part in (("a", slice(0, 100)), ("b", slice(100, 200))):
        in_class = train[:200] if label == "a" else train[200:]
        assert by["memorisation_rate", label].value == pytest.approx(
            _reference_memorised(candidate[part], in_class).mean())
    assert by["memorisation_rate", "all"].value == pytest.approx(_reference_memorised(candidate, train).mean())
    low, high = by["authenticity", "all"].ci_low, by["authenticity", "all"].ci_high
    assert 0 <= low <= by["authenticity", "all"].value <= high <= 1
    assert METRICS["memorisation_rate"].direction == "lower" and TRAIN_FEATURES in METRICS["authenticity"].requires


def test_a_run_with_train_set_metrics_records_them_with_a_real_test_reference_and_findings(run_cli, tmp_path):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text('''name = "memo"
[data]
source = "gaussian:classes=2,per_class=100,mean=128,sigma=20,spacing=40,seed=0"
size = 4
[generator]
kind = "gaussian"
per_class = 12
[loop]
generations = 2
modes = ["replace"]
seeds = 2
[metrics]
extractors = ["pixels"]
per_class = false
train_set_metrics = true
[classifier]
enabled = false
''', encoding="utf-8")
    out = tmp_path / "run"
    code, _, err = run_cli("run", recipe, "--out", out, "--workers", "1")
    assert code == 0, err
    frame = pd.read_csv(out / "metrics.csv")
    added = {"memorisation_rate", "authenticity", "knn_entropy", "train_knn_entropy"}
    assert added <= set(frame["metric"])
    reference = pd.read_json(out / "real" / "reference.json", typ="series")
    reference_metrics = {row["metric"] for row in reference["rows"]}
    assert added <= reference_metrics and reference["train_set_metrics"]["candidate"] == "real/test"
    assert reference["train_set_metrics"]["memorisation_rate"]["threshold"] == pytest.approx(1 / 3)
    findings = pd.read_csv(out / "findings.csv")
    assert added <= set(findings["metric"])
    from imgsynth.reports.figures import panel_order, panel_title

    assert added <= set(panel_order()) and panel_title("memorisation_rate", "pixels").endswith("↓")
    assert panel_title("authenticity", "pixels").endswith("↑")


def test_imgsynth_metrics_takes_the_training_set_with_train(small_digits, run_cli, tmp_path):
    out = tmp_path / "m.csv"
    code, printed, err = run_cli("metrics", small_digits.root, small_digits.root, "--features", "pixels", "--out", out,
                           "--train", small_digits.root, "--metrics", "memorisation_rate,authenticity", "--cache-dir", tmp_path / "c")
    assert code == 0, err
    values = pd.read_csv(out).set_index("metric")["value"]
    assert values["memorisation_rate"] == 1.0 and values["authenticity"] == 0.0  # the training set against itself
    assert "τ = 1/3" in printed  # the threshold is part of the output
