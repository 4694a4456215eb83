"""The recursive loop checked against closed forms, with the exact-theory Gaussian generator.

`imgsynth/assets/experiments/gaussian-theory.toml` derives the expectations: under `replace`, a per-class
Gaussian refitted to n samples each generation has E[σ²_k] = σ²_0 ((n − 1)/n)^k with the MLE covariance
and E[σ²_k] = σ²_0 with the unbiased one, whose mean random-walks with E[(μ_k − μ_0)²] = k σ²_0 / n.
Generation 0 is the same fit of the same real data for every seed, so each replicate's ratio to it has
exactly these expectations; the tolerance is 4 standard errors of the mean over the 20 replicates.
"""

from __future__ import annotations

import numpy as np
import pytest

from imgsynth.experiments.config import load_recipe
from imgsynth.experiments.loop import Experiment
from imgsynth.experiments.recipes import shipped_recipes
from imgsynth.experiments.run import GenerationKey, RunFolder
from imgsynth.pipelines.base import build_kind, options_from_dict
from imgsynth.pipelines.gaussian import GaussianKind
from imgsynth.reports.build import run_and_report

N, K = 20, 4  # samples per class per generation, the last generation checked


def _run(tmp_path_factory, estimator: str) -> RunFolder:
    recipe = load_recipe(shipped_recipes()["gaussian-theory"], [f'generator.options.estimator="{estimator}"'])
    assert recipe.generator.per_class == N and recipe.loop.generations == K + 1
    folder = tmp_path_factory.mktemp(estimator) / "run"
    Experiment(recipe, folder, progress=False).run()
    return RunFolder(folder)


def _moments(folder: RunFolder, seed: int, generation: int) -> tuple[np.ndarray, np.ndarray]:
    """(per-class mean vectors, per-class variance vectors) of the model fitted in that generation."""
    key = GenerationKey(seed, "base" if generation == 0 else "replace", generation)
    _, parameters = GaussianKind.load(folder.generation_dir(key) / "model")
    means = np.stack([p["mean"] for _, p in sorted(parameters.items())])
    variances = np.stack([(p["factor"] ** 2).sum(axis=1) for _, p in sorted(parameters.items())])
    return means, variances


def _within(values: np.ndarray, expected: float) -> None:
    se = values.std(ddof=1) / np.sqrt(len(values))
    assert abs(values.mean() - expected) < 4 * se, (values.mean(), expected, se)


@pytest.fixture(scope="module")
def mle_run(tmp_path_factory) -> RunFolder:
    return _run(tmp_path_factory, "mle")


@pytest.fixture(scope="module")
def unbiased_run(tmp_path_factory) -> RunFolder:
    return _run(tmp_path_factory, "unbiased")


def test_mle_variance_shrinks_by_n_minus_one_over_n_per_generation(mle_run):
    _, v0 = _moments(mle_run, mle_run.seeds[0], 0)
    ratios = np.array([_moments(mle_run, s, K)[1].mean() / v0.mean() for s in mle_run.seeds])
    _within(ratios, ((N - 1) / N) ** K)
    assert ratios.mean() < 0.9  # the shrink is large next to the tolerance, not a coincidence


def test_unbiased_variance_is_kept_in_expectation_and_its_mean_random_walks(unbiased_run):
    means0, v0 = _moments(unbiased_run, unbiased_run.seeds[0], 0)
    ratios, walks = [], []
    for seed in unbiased_run.seeds:
        means, variances = _moments(unbiased_run, seed, K)
        ratios.append(variances.mean() / v0.mean())
        walks.append(((means - means0) ** 2).mean() / v0.mean())
    _within(np.array(ratios), 1.0)
    _within(np.array(walks), K / N)


def test_the_fitted_gaussian_reproduces_its_training_moments(tmp_path, digits_sets):
    small = digits_sets[1]
    model = GaussianKind().fit(small, tmp_path / "model", seed=0, progress=False)
    samples = GaussianKind().sample(model, tmp_path / "samples", per_class=400, seed=3)
    again = GaussianKind().sample(model, tmp_path / "again", per_class=400, seed=3)
    assert samples.id == again.id and len(samples) == 400 * len(small.classes)
    real = small.as_array().reshape(len(small), -1).astype(float)
    drawn = samples.as_array().reshape(len(samples), -1).astype(float)
    # Class "0": sample means within 3 standard errors of the fitted (= training) means, pixel by pixel.
    zero_real = real[np.asarray(small.labels) == 0]
    zero_drawn = drawn[np.asarray(samples.labels) == 0]
    se = np.sqrt(zero_real.var(axis=0) / len(zero_drawn)) + 0.5  # + rounding and clipping at 0
    assert (np.abs(zero_drawn.mean(axis=0) - zero_real.mean(axis=0)) < 4 * se + 1).mean() > 0.97


def test_low_rank_option_and_unknown_options_are_checked():
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['bandwith'\] for generator kind 'gaussian'"):
        options_from_dict("gaussian", {"bandwith": 1.0})
    with pytest.raises(ValueError, match="estimator must be one of"):
        build_kind("gaussian", {"estimator": "map"})
    assert build_kind("gaussian", {"rank": 3}).options.rank == 3
    with pytest.raises(ValueError, match="unknown generator kind 'nope'"):
        build_kind("nope")


def test_kde_samples_carry_the_data_variance_plus_the_kernel_variance(tmp_path):
    from imgsynth.pipelines.kde import KdeKind, KdeOptions
    from imgsynth.sources import import_source

    train, _ = import_source("gaussian:per_class=400", tmp_path / "real", size=4, mode="L")
    model = KdeKind(KdeOptions(bandwidth=8.0)).fit(train, tmp_path / "model", seed=0)
    samples = KdeKind(KdeOptions(bandwidth=8.0)).sample(model, tmp_path / "samples", per_class=2000, seed=1)
    real = train.as_array().reshape(len(train), -1).astype(float)
    drawn = samples.as_array().reshape(len(samples), -1).astype(float)
    for index in range(len(train.classes)):
        data_variance = real[np.asarray(train.labels) == index].var(axis=0).mean()  # the KDE's own: / n
        sample_variance = drawn[np.asarray(samples.labels) == index].var(axis=0, ddof=1).mean()
        assert sample_variance == pytest.approx(data_variance + 8.0 ** 2 + 1 / 12, rel=0.04)


@pytest.mark.parametrize("kind, options", [("kde", 'generator.options={bandwidth = 4.0}'),
                                           ("gaussian", 'generator.options={rank = 4}')])
def test_registered_kinds_run_through_the_loop(kind, options, tmp_path):
    import pandas as pd

    recipe = load_recipe(shipped_recipes()["gaussian-theory"],
                         [f'generator.kind="{kind}"', options, "loop.seeds=1", "loop.generations=2"])
    run = run_and_report(Experiment(recipe, tmp_path / "run", progress=False))
    frame = pd.read_csv(run / "metrics.csv")
    assert sorted(frame["generation"].unique()) == [0, 1] and "fid" in set(frame["metric"])


def test_imgsynth_train_and_generate_take_a_registered_kind(run_cli, tmp_path):
    from imgsynth.imageset import ImageSet, verify
    from imgsynth.sources import import_source

    train, _ = import_source("gaussian:per_class=50", tmp_path / "real", size=4, mode="L")
    code, out, err = run_cli("train", train.root, tmp_path / "model", "--kind", "gaussian",
                             "--option", "estimator=unbiased", "--no-progress")
    assert code == 0 and "(gaussian)" in out, err
    code, _, err = run_cli("generate", tmp_path / "model", tmp_path / "samples", "--per-class", "5")
    assert code == 0, err
    assert verify(tmp_path / "samples").ok and len(ImageSet.open(tmp_path / "samples")) == 10
    code, _, err = run_cli("train", train.root, tmp_path / "other", "--kind", "kde", "--option", "bandwith=2")
    assert code == 2 and "unknown option(s) ['bandwith'] for generator kind 'kde'" in err and "Traceback" not in err


@pytest.mark.slow
def test_accumulate_keeps_the_error_of_the_mean_bounded_where_replace_lets_it_walk(tmp_path, unbiased_run):
    """With every earlier generation (and the real data) kept, generation k's mean averages k·n + N images:
    n·E[(μ_k − μ_0)²]/σ²_0 stays below Σ 1/j² ≤ π²/6 (the bound without the real data, which only
    tightens it), while under replace it grows like k (checked above: k/n per unit σ²_0/n)."""
    recipe = load_recipe(shipped_recipes()["gaussian-theory"],
                         ['generator.options.estimator="unbiased"', 'loop.modes=["accumulate"]'])
    folder = RunFolder(Experiment(recipe, tmp_path / "run", progress=False).run())
    means0, v0 = _moments(folder, folder.seeds[0], 0)
    errors = []
    for seed in folder.seeds:
        _, parameters = GaussianKind.load(folder.generation_dir(GenerationKey(seed, "accumulate", K)) / "model")
        means = np.stack([p["mean"] for _, p in sorted(parameters.items())])
        errors.append(N * ((means - means0) ** 2).mean() / v0.mean())
    errors = np.array(errors)
    se = errors.std(ddof=1) / np.sqrt(len(errors))
    assert errors.mean() + 4 * se < np.pi ** 2 / 6
    replace_walk = np.array([N * ((_moments(unbiased_run, s, K)[0] - means0) ** 2).mean() / v0.mean()
                             for s in unbiased_run.seeds])
    assert errors.mean() < replace_walk.mean() / 4


@pytest.mark.slow
def test_mix_with_a_fixed_real_fraction_follows_its_recursion_and_stays_bounded(tmp_path, unbiased_run):
    """mix, fraction λ: generation k fits r = λ·n real images (a fresh draw, without replacement, from the N
    real training images of the class, whose mean is μ_0: generation 0 fits all of them) and s = n − r of
    generation k − 1's samples. With e_k = μ_k − μ_0 and f_k = n·E[e_k²]/σ²_0 per pixel (unbiased fit, so
    E[σ²] stays σ²_0 up to a between-group term of order λ·f/n):
        f_k = (s/n)²·f_{k−1} + (s + r·(N − r)/(N − 1))/n,   f_0 = 0,
    which tends to a bound, (s + r(N−r)/(N−1))/n / (1 − (s/n)²) ≈ 5.3 for λ = 0.1, n = 20 (replace: f_k = k)."""
    recipe = load_recipe(shipped_recipes()["gaussian-theory"],
                         ['generator.options.estimator="unbiased"', 'loop.modes=["mix"]', "loop.mix_real_fraction=0.1"])
    folder = RunFolder(Experiment(recipe, tmp_path / "run", progress=False).run())
    from imgsynth.imageset import ImageSet

    real_train = ImageSet.open(folder.real_dir / "train")
    pool = min(real_train.counts.values())
    assert set(real_train.counts.values()) == {pool}
    r = round(0.1 * N)
    s = N - r
    f = 0.0
    for _ in range(K):
        f = (s / N) ** 2 * f + (s + r * (pool - r) / (pool - 1)) / N
    means0, v0 = _moments(folder, folder.seeds[0], 0)
    errors = np.array([
        N * ((np.stack([p["mean"] for _, p in sorted(GaussianKind.load(
            folder.generation_dir(GenerationKey(seed, "mix", K)) / "model")[1].items())]) - means0) ** 2).mean()
        / v0.mean() for seed in folder.seeds])
    _within(errors, f)
    bound = (s + r * (pool - r) / (pool - 1)) / N / (1 - (s / N) ** 2)
    assert f < bound < 6
