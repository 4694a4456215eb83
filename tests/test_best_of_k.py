"""Best-of-K curation: E[max of K normals] against its closed forms; on the Gaussian kind a reward that prefers
bright images moves the refitted mean by σ·e_K (order statistics); K = 1 is no curation at all (library and
loop); rewards are a registry, and a throwaway reward registered here runs through `imgsynth curate`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors.numpy import load_file

from imgsynth.curation import REWARDS, Reward, curate, curation_record, expected_normal_maximum
from imgsynth.curation.best_of import candidate_groups, choose_best
from imgsynth.imageset import ImageSet
from imgsynth.pipelines.base import build_kind
from imgsynth.sources import import_source

GAUSSIAN = "gaussian:classes=1,per_class=300,mean=128,sigma=20,spacing=40,seed=0"


def test_the_expected_maximum_of_k_normals_matches_its_closed_forms():
    assert expected_normal_maximum(1) == 0.0
    assert expected_normal_maximum(2) == pytest.approx(1 / math.sqrt(math.pi), abs=1e-9)
    assert expected_normal_maximum(3) == pytest.approx(3 / (2 * math.sqrt(math.pi)), abs=1e-9)
    assert expected_normal_maximum(4) == pytest.approx(6 / math.pi ** 1.5 * math.atan(math.sqrt(2)), abs=1e-9)
    from scipy import integrate
    from scipy.special import ndtr

    for k in (10, 50):  # E[X] = ∫₀^∞ P(X > x) dx − ∫_{−∞}^0 P(X < x) dx with P(max < x) = Φ(x)^K
        upper = integrate.quad(lambda x: 1 - ndtr(x) ** k, 0, math.inf)[0]
        lower = integrate.quad(lambda x: ndtr(x) ** k, -math.inf, 0)[0]
        assert expected_normal_maximum(k) == pytest.approx(upper - lower, abs=1e-7)


def test_candidates_of_a_kept_image_are_its_index_plus_multiples_of_m_and_ties_go_to_the_earlier():
    labels = ["a"] * 7 + ["b"] * 6  # a: m = 3 (position 6 left out); b: m = 3
    groups, left_out = candidate_groups(labels, 2)
    assert groups == [[0, 3], [1, 4], [2, 5], [7, 10], [8, 11], [9, 12]] and left_out == [6]
    winners, ranks = choose_best(np.asarray([1, 5, 2, 1, 0, 9, 0, 3, 3, 3, 3, 1, 4.0]), groups)
    assert winners == [0, 1, 5, 7, 8, 12] and ranks[3] == 2 and ranks[10] == 2


@pytest.fixture(scope="module")
def gaussian_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("best-of")
    train, _ = import_source(GAUSSIAN, root / "real", size=4, test_fraction=0.2, seed=0)
    kind = build_kind("gaussian")
    return kind, kind.fit(train, root / "model0", seed=0, progress=False), root


def _mean(model_dir) -> np.ndarray:
    return load_file(str(model_dir / "model.safetensors"))["0.mean"]


def test_best_of_k_on_the_gaussian_kind_moves_the_fitted_mean_as_order_statistics_predict(gaussian_model):
    kind, model0, root = gaussian_model
    weights = load_file(str(model0 / "model.safetensors"))
    pixels = len(weights["0.mean"])
    # Brightness = the mean of D pixels: N(mean, 1ᵀΣ1/D²), plus uint8 rounding (variance 1/12 per pixel).
    covariance = weights["0.factor"] @ weights["0.factor"].T
    sigma = math.sqrt(covariance.sum() / pixels ** 2 + 1 / 12 / pixels)
    k, kept = 3, 200
    candidates = kind.sample(model0, root / "candidates", kept * k, seed=1000, progress=False)
    chosen = curate(candidates, root / "best", best_of=k, reward="brightness", rebalance=False)
    assert len(chosen) == kept
    model1 = kind.fit(chosen, root / "refit", seed=1, progress=False)
    shift = float(_mean(model1).mean() - _mean(model0).mean())
    # The refitted mean is the mean of the kept images: `kept` independent maxima of k draws each.
    maxima = np.asarray([np.asarray(chosen.load_image(i), dtype=float).mean() for i in range(kept)])
    assert shift == pytest.approx(maxima.mean() - _mean(model0).mean(), abs=1e-9)
    predicted = sigma * expected_normal_maximum(k)
    se = maxima.std(ddof=1) / math.sqrt(kept)
    assert abs(shift - predicted) < 4 * se, (shift, predicted, se)
    assert predicted > 10 * se  # the test can tell a moved mean from an unmoved one
    # Without selection (the first candidate of every group: the uncurated sample) the mean does not move.
    firsts = [np.asarray(candidates.load_image(i), dtype=float).mean() for i in range(kept)]
    assert abs(np.mean(firsts) - _mean(model0).mean()) < 4 * np.std(firsts, ddof=1) / math.sqrt(kept)


def test_best_of_one_is_no_curation_and_k_is_recorded_per_image(gaussian_model):
    kind, model0, root = gaussian_model
    samples = kind.sample(model0, root / "k1", 24, seed=7, progress=False)
    with_k1 = curate(samples, root / "k1-curated", best_of=1, reward="brightness", rebalance=True, seed=3)
    without = curate(samples, root / "plain-curated", rebalance=True, seed=3)
    assert with_k1.id == without.id
    assert (with_k1.root / "metadata.jsonl").read_bytes() == (without.root / "metadata.jsonl").read_bytes()
    assert curation_record(with_k1)["filters"] == curation_record(without)["filters"]

    chosen = curate(samples, root / "k3-curated", best_of=3, reward="brightness", rebalance=False)
    record = curation_record(chosen)
    assert [f["filter"] for f in record["filters"]] == ["best_of"] and len(chosen) == 8
    assert {(c["k"], c["rank"]) for c in record["best_of"]} == {(3, 1)} and len(record["best_of"]) == 8
    ranks = sorted(d["rank"] for d in record["drops"])
    assert ranks == [2] * 8 + [3] * 8
    brightness = {r.file_name: np.asarray(chosen.load_image(i), dtype=float).mean() / 255
                  for i, r in enumerate(chosen.records)}
    assert all(c["reward"] == pytest.approx(brightness[c["file_name"]], abs=1e-6) for c in record["best_of"])


def dimmest(samples, indices, context):
    """A throwaway reward: darker is better."""
    return np.asarray([-np.asarray(samples.load_image(i), dtype=float).mean() for i in indices])


def test_a_reward_registered_here_runs_through_imgsynth_curate(gaussian_model, run_cli, tmp_path):
    kind, model0, root = gaussian_model
    samples = kind.sample(model0, root / "cli", 12, seed=11, progress=False)
    with REWARDS.registered("test_dimmest", Reward(dimmest)):
        code, printed, err = run_cli("curate", samples.root, tmp_path / "out", "--best-of", "3", "--reward",
                                     "test_dimmest", "--no-rebalance")
    assert code == 0, err
    chosen = ImageSet.open(tmp_path / "out")
    means = [np.asarray(samples.load_image(i), dtype=float).mean() for i in range(len(samples))]
    groups, _ = candidate_groups(samples.labels, 3)
    expected = sorted(samples.records[min(g, key=lambda p: means[p])].file_name for g in groups)
    assert sorted(r.file_name for r in chosen.records) == expected
    assert curation_record(chosen)["filters"][0] == {**curation_record(chosen)["filters"][0], "reward": "test_dimmest"}
    assert "best_of" in printed
    code, _, err = run_cli("curate", samples.root, tmp_path / "again", "--best-of", "3", "--reward", "nope")
    assert code != 0 and "unknown reward 'nope'" in err and not (tmp_path / "again").exists()


def _loop_recipe(path: Path, best_of: int) -> Path:
    path.write_text(f'''name = "k{best_of}"
[data]
source = "{GAUSSIAN.replace("classes=1", "classes=2")}"
size = 4
[generator]
kind = "gaussian"
per_class = 10
[loop]
generations = 2
modes = ["replace", "replace+curate"]
[metrics]
extractors = ["pixels"]
per_class = false
[classifier]
enabled = false
[curate]
best_of = {best_of}
reward = "brightness"
rebalance = false
''', encoding="utf-8")
    return path


def _run_loop(recipe: Path, out: Path) -> None:
    from imgsynth.experiments.config import load_recipe
    from imgsynth.experiments.loop import Experiment

    Experiment(load_recipe(recipe), out, progress=False).run()  # the loop alone: no reports needed here


def test_a_loop_with_best_of_one_and_nothing_else_is_the_uncurated_loop(tmp_path):
    from imgsynth.reports.tables import collect_metrics

    out = tmp_path / "run"
    _run_loop(_loop_recipe(tmp_path / "recipe.toml", 1), out)
    frame = collect_metrics(out)
    plain = frame[frame["mode"] == "replace"].drop(columns="mode").reset_index(drop=True)
    curated = frame[frame["mode"] == "replace+curate"].drop(columns="mode").reset_index(drop=True)
    pd.testing.assert_frame_equal(plain, curated)
    ids = [json.loads((out / "seed_0" / m / "gen_1" / "metrics.json").read_text())["samples"]["id"]
           for m in ("replace", "replace+curate")]
    assert ids[0] == ids[1]


def test_recipes_check_best_of_and_its_reward():
    from imgsynth.experiments.config import RecipeError, recipe_from_dict

    modes = {"modes": ["replace+curate"]}
    recipe = recipe_from_dict({"loop": modes, "curate": {"best_of": 1, "rebalance": False}})
    assert recipe.curate.best_of == 1  # best of 1 alone is a valid (do-nothing) curate stage
    with pytest.raises(RecipeError, match=r"\[curate\] reward 'clip' needs a CLIP model"):
        recipe_from_dict({"loop": modes, "curate": {"best_of": 2, "reward": "clip"}})
    with pytest.raises(RecipeError, match=r"\[curate\] reward 'nope' is not a registered reward"):
        recipe_from_dict({"loop": modes, "curate": {"best_of": 2, "reward": "nope"}})
    with REWARDS.registered("test_dimmest", Reward(dimmest)):
        assert recipe_from_dict({"loop": modes, "curate": {"best_of": 2, "reward": "test_dimmest"}})


def test_a_curating_loop_samples_k_candidates_per_kept_image_with_the_uncurated_images_first(tmp_path):
    out = tmp_path / "run"
    _run_loop(_loop_recipe(tmp_path / "recipe.toml", 3), out)
    seed = out / "seed_0"
    shared = ImageSet.open(seed / "gen_0" / "samples")  # generation 0 is shared with `replace`: not curated
    candidates = ImageSet.open(seed / "replace+curate" / "gen_0" / "candidates")
    assert set(shared.counts.values()) == {10} and set(candidates.counts.values()) == {30}
    by_name = {r.file_name: r.sha256 for r in candidates.records}
    assert all(by_name[r.file_name] == r.sha256 for r in shared.records)  # same seeds: candidate 0 is the shared image
    for generation in (0, 1):
        curated = ImageSet.open(seed / "replace+curate" / f"gen_{generation}" / "curated")
        record = curation_record(curated)
        assert set(curated.counts.values()) == {10} and {c["k"] for c in record["best_of"]} == {3}
    assert set(ImageSet.open(seed / "replace+curate" / "gen_1" / "samples").counts.values()) == {30}
    assert set(ImageSet.open(seed / "replace" / "gen_1" / "samples").counts.values()) == {10}
