"""The loop modes fresh-mix, augment, accumulate-subsample and weighted (what each training set holds, their
[loop] fields, their refusals) and per-image training weights (the ``weight`` column) in the kinds that fit."""

from __future__ import annotations

import json

import numpy as np
import pytest

from imgsynth.experiments.config import RecipeError, recipe_from_dict
from imgsynth.experiments.modes import LOOP_MODES, LoopData, ModeInputs
from imgsynth.imageset import ImageSet, ImageSetError, concatenate
from imgsynth.pipelines.gaussian import GaussianKind, GaussianOptions
from imgsynth.pipelines.kde import KdeKind, KdeOptions


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    from imgsynth.sources import import_source

    train, _ = import_source("gaussian:classes=2,per_class=25,mean=128,sigma=20,spacing=40,seed=3",
                             tmp_path_factory.mktemp("pool") / "real", size=4, mode="L", test_fraction=0.2, seed=0)
    return train  # 20 per class


def _data(pool: ImageSet, **settings) -> LoopData:
    return LoopData(real_train=pool, real_pool=pool, per_class=4, generations=3, mix_real_fraction=0.1, **settings)


def _history(pool: ImageSet, root, count: int = 2) -> list[ImageSet]:
    """Stand-ins for generations 0 … count − 1: 4 images per class each (distinct sets)."""
    sets = []
    for g in range(count):
        chosen = [i for label in pool.classes for i in pool.indices_of_class(label)[g * 4:(g + 1) * 4]]
        sets.append(pool.subset(chosen, root / f"out_{g}", kind="generated", config={"stand_in": g}))
    return sets


def _build(mode: str, data: LoopData, history, generation: int, root) -> ImageSet:
    return LOOP_MODES[mode].build(ModeInputs(data, tuple(history), generation, 7, root / f"{mode}_{generation}",
                                             root / "scratch"))


def test_each_mode_builds_the_training_set_it_describes_and_records_it(pool, tmp_path):
    history = _history(pool, tmp_path)
    data = _data(pool, fresh_per_class=3, augment_ratio=0.1, subsample_size=10, real_weight=0.7)
    mixed = _build("fresh-mix", data, history, 2, tmp_path)
    assert len(mixed) == 6 + 8 and mixed.manifest["config"]["synthetic_sets"] == [history[1].id]
    everything = _build("fresh-mix", _data(pool, fresh_per_class=3, fresh_synthetic="all"), history, 2, tmp_path / "a")
    assert len(everything) == 6 + 16
    chunks = [{r.file_name for r in _build("fresh-mix", data, history, k, tmp_path / f"c{k}").records
               if r.file_name.split("/")[-1].startswith(pool.id[:8])} for k in (1, 2)]
    assert len(chunks[0]) == len(chunks[1]) == 6 and not chunks[0] & chunks[1]  # never reused within a chain
    real = {r.sha256 for r in pool.records}
    augmented = _build("augment", data, history, 2, tmp_path)
    assert len(augmented) == len(pool) + 4 and augmented.manifest["config"]["synthetic"] == 4  # round(0.1 × 40)
    subsample = _build("accumulate-subsample", data, history, 2, tmp_path)
    assert len(subsample) == 10 and set(subsample.counts.values()) == {5}
    assert sum(subsample.manifest["config"]["drawn_per_part"].values()) == 10
    weighted = _build("weighted", data, history, 2, tmp_path)
    weights = weighted.weights
    real_rows = np.array([r.sha256 in real and r.file_name.split("/")[-1].startswith(pool.id[:8])
                          for r in weighted.records])
    assert real_rows.sum() == 6 and len(weighted) == 14
    # shares of the total weight: 0.7 real, 0.3 synthetic; mean weight 1
    assert weights[real_rows].sum() / weights.sum() == pytest.approx(0.7)
    assert weights.mean() == pytest.approx(1.0) and weighted.manifest["config"]["real_weight"] == 0.7
    assert pool.weights is None and augmented.weights is None  # sets without weights stay without


def test_modes_refuse_what_the_real_data_cannot_serve(pool):
    with pytest.raises(ValueError, match=r"'fresh-mix' needs 80 new real training images .* has 40"):
        LOOP_MODES["fresh-mix"].check(_data(pool, fresh_per_class=20))
    LOOP_MODES["fresh-mix"].check(_data(pool, fresh_per_class=10))  # 2 generations × 10 × 2 classes = 40: enough
    with pytest.raises(ValueError, match=r"'weighted' needs 48 new real"):
        LOOP_MODES["weighted"].check(_data(pool, fresh_per_class=12))
    with pytest.raises(ValueError, match=r"'augment' needs round\(augment_ratio × real images\) = 20"):
        LOOP_MODES["augment"].check(_data(pool, augment_ratio=0.5))
    with pytest.raises(ValueError, match="subsample_size = 60 is more than generation 1 can draw from"):
        LOOP_MODES["accumulate-subsample"].check(_data(pool, subsample_size=60))


def test_the_loop_fields_are_validated_like_every_recipe_field():
    recipe = recipe_from_dict({"loop": {"modes": ["fresh-mix", "weighted"], "real_weight": 0.618,
                                        "fresh_synthetic": "all"}})
    assert recipe.loop.real_weight == 0.618
    for field, value, message in (("real_weight", 0.0, r"\[loop\] real_weight must lie in \(0, 1\]"),
                                  ("augment_ratio", -1.0, r"\[loop\] augment_ratio must lie in"),
                                  ("fresh_per_class", -2, r"\[loop\] fresh_per_class must lie in"),
                                  ("fresh_synthetic", "last", r"fresh_synthetic must be one of \['previous', 'all'\]"),
                                  ("real_weight", "high", r"real_weight = 'high' should be")):
        with pytest.raises(RecipeError, match=message):
            recipe_from_dict({"loop": {"modes": ["weighted"], field: value}})
    # a recipe that sets none of them resolves to the same config.toml text as before they existed
    from imgsynth.experiments.config import dump_recipe

    assert "real_weight" not in dump_recipe(recipe_from_dict({})) and "fresh_per_class" not in dump_recipe(recipe)


def test_fresh_mix_is_refused_by_imgsynth_run_before_any_generation(run_cli, tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('name = "x"\n[data]\nsource = "gaussian:classes=2,per_class=10,seed=0"\nsize = 4\n'
                      '[generator]\nkind = "gaussian"\nper_class = 5\n[loop]\ngenerations = 3\n'
                      'modes = ["fresh-mix"]\n[metrics]\nextractors = ["pixels"]\n[classifier]\nenabled = false\n',
                      encoding="utf-8")
    code, _, err = run_cli("run", recipe, "--out", tmp_path / "run")
    assert code != 0 and "[loop] mode 'fresh-mix' needs 20 new real training images" in err
    assert "Traceback" not in err and not list((tmp_path / "run").glob("seed_*"))


# ------------------------------------------------------------------------------------------ training weights

def _weighted(pool: ImageSet, weights: list[float], out) -> ImageSet:
    """``pool`` with its two class halves weighted: the first ``weights[0]``, the rest ``weights[1]``."""
    first = [i for label in pool.classes for i in pool.indices_of_class(label)[:10]]
    rest = [i for i in range(len(pool)) if i not in first]
    return concatenate([pool, pool], out, indices=[first, rest], weights=weights)


def test_a_weighted_gaussian_fit_is_the_fit_of_the_set_with_rows_repeated(pool, tmp_path):
    """Integer weights are frequencies: the MLE fit with weight 3 on some images is the unweighted fit of the
    set holding those images three times (written independently here, with numpy only)."""
    weighted = _weighted(pool, [3.0, 1.0], tmp_path / "w")
    _, fitted = GaussianKind.load(GaussianKind().fit(weighted, tmp_path / "m", seed=0, progress=False))
    flat = weighted.as_array().reshape(len(weighted), -1).astype(np.float64)
    labels, weights = np.asarray(weighted.labels), weighted.weights.astype(int)
    for index, label in enumerate(weighted.classes):
        repeated = np.repeat(flat[labels == index], weights[labels == index], axis=0)
        mean, variance = GaussianKind.fitted_moments(fitted[label])
        assert np.allclose(mean, repeated.mean(axis=0))
        assert np.allclose(variance, repeated.var(axis=0))
    info = json.loads((tmp_path / "m" / "imgsynth_model_info.json").read_text())
    assert "weights_of_training_set" in info  # a fit records the weights it honoured
    plain = GaussianKind().fit(pool, tmp_path / "plain", seed=0, progress=False)
    assert "weights_of_training_set" not in json.loads((plain / "imgsynth_model_info.json").read_text())
    fixed = GaussianKind(GaussianOptions(variance=25.0)).fit(weighted, tmp_path / "f", seed=0, progress=False)
    _, arrays = GaussianKind.load(fixed)
    assert np.allclose(GaussianKind.fitted_moments(arrays[pool.classes[0]])[1], 25.0)


def test_a_weighted_kde_draws_its_centres_with_the_weights_probabilities(pool, tmp_path):
    weighted = _weighted(pool, [1.0, 0.0], tmp_path / "w")  # only the first half of each class can be drawn
    model = KdeKind(KdeOptions(bandwidth=0.01)).fit(weighted, tmp_path / "m", seed=0, progress=False)
    samples = KdeKind(KdeOptions(bandwidth=0.01)).sample(model, tmp_path / "s", per_class=30, seed=1, progress=False)
    # Pixels, not file hashes: a generated PNG carries its provenance marker, a training image does not.
    allowed = {image.tobytes() for image, w in zip(weighted.as_array(), weighted.weights) if w > 0}
    assert {image.tobytes() for image in samples.as_array()} <= allowed


def test_bad_weights_are_refused_naming_the_file_and_line(pool, tmp_path):
    weighted = _weighted(pool, [1.0, 2.0], tmp_path / "w")
    path = weighted.root / "metadata.jsonl"
    lines = path.read_text().splitlines()
    row = json.loads(lines[3])
    row["weight"] = -1
    lines[3] = json.dumps(row)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ImageSetError, match=r"metadata.jsonl:4: weight must be a finite number ≥ 0 or null, got -1"):
        ImageSet.open(weighted.root)


def test_the_conditional_kind_draws_batches_with_the_weights_probabilities():
    import torch
    from scipy import stats

    from imgsynth.pipelines.conditional.training import WeightedBatchOrder

    weights = torch.tensor([0.0, 1.0, 2.0, 5.0])
    order = WeightedBatchOrder(weights, batch_size=64, seed=3)
    drawn = torch.cat([order.indices(step) for step in range(200)])
    counts = torch.bincount(drawn, minlength=4).numpy()
    assert counts[0] == 0  # weight 0: never drawn
    assert stats.chisquare(counts[1:], counts[1:].sum() * np.array([1, 2, 5]) / 8).pvalue > 1e-3
    assert torch.equal(order.indices(17), WeightedBatchOrder(weights, 64, 3).indices(17))  # a function of (seed, step)


# ------------------------------------------------------------------------------------------ theory in reports

def test_findings_give_measured_vs_closed_form_with_a_z_score_and_the_dashboard_draws_it(tmp_path, monkeypatch):
    import pandas as pd
    from scipy import stats

    from imgsynth.experiments.run import RunFolder
    from imgsynth.reports.figures import THEORY_LABEL, dashboard
    from imgsynth.reports.findings import findings, plain_findings, seed_summary, theory_frame, verdicts

    values = {0: [0.0, 0.0, 0.0, 0.0], 1: [0.11, 0.09, 0.12, 0.10]}
    frame = pd.DataFrame([{"run": "r", "seed": s, "mode": "augment", "generation": g, "class": "all",
                           "metric": "fit_mean_error", "extractor": "", "value": v, "ci_low": None, "ci_high": None}
                          for g, vs in values.items() for s, v in enumerate(vs)])
    theory = theory_frame({"metrics": ["fit_mean_error"], "modes": {
        "augment": {"derived": True, "fit_mean_error": [0.0, 0.1]}, "x+curate": {"derived": False, "why": "-"}}})
    table = findings(frame, theory)
    row = table[table["statistic"] == "theory"].iloc[0]
    measured = np.array(values[1])
    assert row["z_score"] == pytest.approx((measured.mean() - 0.1) / (measured.std(ddof=1) / 2))
    assert row["p_value"] == pytest.approx(stats.ttest_1samp(measured, 0.1).pvalue)
    assert any("closed form 0.1, z = +0.77" in line for line in verdicts(table))
    # measured vs closed form is its own Holm family, not pooled with the mode-vs-mode headline comparisons
    assert set(table.loc[table["statistic"] == "theory", "family"]) == {"theory"}
    assert "theory" not in set(table.loc[table["statistic"] != "theory", "family"])
    assert row["p_adjusted"] == pytest.approx(row["p_value"])  # the family's only test
    assert any(line.startswith("measured vs closed form: 1 comparisons, z from +0.77 to +0.77")
               for line in plain_findings(table))
    assert "z_score" not in findings(frame).columns  # runs without a closed form keep their columns
    drawn = []
    import matplotlib.axes

    original = matplotlib.axes.Axes.plot

    def spy(ax, *args, **kwargs):
        drawn.append(kwargs.get("label"))
        return original(ax, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", spy)
    dashboard(seed_summary(frame), tmp_path / "d.png", theory=theory)
    assert THEORY_LABEL in drawn
    (tmp_path / "config.toml").write_text('name = "r"\n', encoding="utf-8")
    (tmp_path / "theory.json").write_text(json.dumps({"metrics": ["fit_mean_error"], "modes": {
        "augment": {"derived": True, "fit_mean_error": ["high"]}}}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"theory.json: modes.augment.fit_mean_error = \['high'\]"):
        RunFolder(tmp_path).theory()
