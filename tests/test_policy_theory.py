"""The loop modes of the collapse papers against their closed forms, on the exact-theory Gaussian kind.

Each chain runs the registered mode itself (``LOOP_MODES[...].build``, writing real ImageSets) and the real
``GaussianKind`` fit and sampling, in-process and without the loop's metrics, so many replicates stay cheap.
The closed forms are ``imgsynth.experiments.theory`` (derived in ``docs/theory.md``); they are checked here
against textbook formulas too (replace's ((n − 1)/n)^k, He, Xu and Cheng's known-variance stationary error).
Measured per replicate: the mean over classes and pixels of (μ_k − μ₀)² over the real data's variance v₀, and
the fitted variance over v₀, μ₀ and v₀ computed here with numpy from the real images. Tolerance: the mean
over replicates lies within 4 standard errors (over replicates) of the closed form.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from imgsynth.experiments.modes import LOOP_MODES, LoopData, ModeInputs, loop_seed
from imgsynth.experiments.theory import MEAN_ERROR, VARIANCE_RATIO, FitLaw, chain_expectations
from imgsynth.pipelines.gaussian import GaussianKind, GaussianOptions
from imgsynth.pipelines.kde import KdeKind, KdeOptions

N, n, C, K = 40, 10, 2, 3  # real images per class, samples per class per generation, classes, last generation
REPLICATES = 6
SIZE = 8  # 64 pixels per image: many coordinates per replicate for the price of one small PNG
SIGMA2 = 400.0  # the source's pixel variance (sigma = 20): the fixed variance of the known-variance checks


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    from imgsynth.sources import import_source

    train, _ = import_source(f"gaussian:classes={C},per_class={N + N // 4},mean=128,sigma=20,spacing=40,seed=1",
                             tmp_path_factory.mktemp("real") / "real", size=SIZE, mode="L", test_fraction=0.2, seed=0)
    assert set(train.counts.values()) == {N}
    flat = train.as_array().reshape(len(train), -1).astype(np.float64)
    labels = np.asarray(train.labels)
    means = np.stack([flat[labels == i].mean(axis=0) for i in range(C)])
    variances = np.stack([flat[labels == i].var(axis=0) for i in range(C)])  # divide by N: generation 0's fit
    return SimpleNamespace(set=train, means=means, v0=float(variances.mean()), root=tmp_path_factory.mktemp("chains"),
                           starts={})


def _measure(kind, model) -> tuple[np.ndarray, np.ndarray]:
    """Per-class (mean, variance) of the distribution a fitted model samples, from its arrays with numpy."""
    _, parameters = kind.load(model)
    items = sorted(parameters.items())
    if isinstance(kind, KdeKind):  # the class's images, each drawn with equal probability, plus N(0, h²)
        points = [p["points"].astype(np.float64) for _, p in items]
        return (np.stack([x.mean(axis=0) for x in points]),
                np.stack([x.var(axis=0) + p["bandwidth"][0] ** 2 for x, (_, p) in zip(points, items)]))
    return (np.stack([p["mean"] for _, p in items]), np.stack([(p["factor"] ** 2).sum(axis=1) for _, p in items]))


def _chains(real, mode: str, options: GaussianOptions | KdeOptions, **settings) -> np.ndarray:
    """(replicates, 2): each replicate's mean error and variance ratio at generation K."""
    kind = GaussianKind(options) if isinstance(options, GaussianOptions) else KdeKind(options)
    data = LoopData(real_train=real.set, real_pool=real.set, per_class=n, generations=K + 1, mix_real_fraction=0.1,
                    **settings)
    tag = f"{mode}-{options!r}-" + "-".join(f"{k}{v}" for k, v in sorted(settings.items()))
    results = []
    for seed in range(REPLICATES):
        root = real.root / tag / str(seed)
        start = (seed, repr(options))  # generation 0 is shared by every mode of a replicate, as in a run
        if start not in real.starts:
            base = real.root / f"gen_0-{len(real.starts)}"
            model = kind.fit(real.set, base / "model", seed=0, progress=False)
            real.starts[start] = kind.sample(model, base / "samples", n, loop_seed(seed, "sample", 0), 0,
                                             progress=False)
        history = [real.starts[start]]
        for k in range(1, K + 1):
            folder = root / f"gen_{k}"
            train = LOOP_MODES[mode].build(ModeInputs(data, tuple(history), k, seed, folder / "train_set",
                                                      folder / "parts"))
            model = kind.fit(train, folder / "model", seed=0, progress=False)
            if k < K:
                history.append(kind.sample(model, folder / "samples", n, loop_seed(seed, "sample", k), k,
                                           progress=False))
        means, variances = _measure(kind, model)
        results.append((((means - real.means) ** 2).mean() / real.v0, variances.mean() / real.v0))
    return np.array(results)


def _settings(**settings) -> SimpleNamespace:
    """The mode settings the closed forms read (LoopData's defaults, then ``settings``)."""
    return SimpleNamespace(**{**dict(mix_real_fraction=0.1, fresh_per_class=0, fresh_synthetic="previous",
                                     augment_ratio=0.1, subsample_size=0, real_weight=0.5), **settings})


def _theory(real, mode: str, law: FitLaw, **settings) -> tuple[float, float]:
    values = chain_expectations(mode, K + 1, N, n, C, real.v0, law, _settings(**settings))
    return values[MEAN_ERROR][K], values[VARIANCE_RATIO][K]


def _within(values: np.ndarray, expected: float, what: str) -> float:
    se = values.std(ddof=1) / np.sqrt(len(values))
    assert abs(values.mean() - expected) < 4 * se, (what, values.mean(), expected, se)
    return se


# ------------------------------------------------------------------------------- the closed forms themselves

def test_the_closed_forms_reduce_to_the_textbook_ones():
    data = _settings()
    replace = chain_expectations("replace", 6, 400, 20, 2, 1.0, FitLaw(rounding=0.0), data)
    assert np.allclose(replace[VARIANCE_RATIO], [(19 / 20) ** k for k in range(6)])
    assert np.allclose(replace[MEAN_ERROR], [sum((19 / 20) ** j for j in range(k)) / 20 for k in range(6)])
    golden = (np.sqrt(5) - 1) / 2
    for w in (0.4, golden, 0.9):  # He, Xu and Cheng 2025: (σ²/n)(1 − 2w + 2w²)/(w(2 − w)), infinite real pool
        data.real_weight = w
        values = chain_expectations("weighted", 60, 10 ** 9, 20, 1, 1.0, FitLaw(fixed_variance=1.0, rounding=0.0), data)
        assert values[MEAN_ERROR][-1] * 20 == pytest.approx((1 - 2 * w + 2 * w * w) / (w * (2 - w)), rel=1e-5)
    # its minimum is at w = 1/φ
    data.real_weight = golden
    best = chain_expectations("weighted", 60, 10 ** 9, 20, 1, 1.0, FitLaw(fixed_variance=1.0, rounding=0.0), data)
    for w in (golden - 0.02, golden + 0.02):
        data.real_weight = w
        other = chain_expectations("weighted", 60, 10 ** 9, 20, 1, 1.0, FitLaw(fixed_variance=1.0, rounding=0.0), data)
        assert other[MEAN_ERROR][-1] > best[MEAN_ERROR][-1]


def test_a_fresh_chunk_has_the_finite_population_variance_of_simple_random_sampling():
    """Against a direct simulation of drawing 10 of 30 without replacement, and the textbook (N − c)/(c (N − 1))."""
    values = chain_expectations("fresh", 2, 30, 10, 1, 1.0, FitLaw(rounding=0.0), _settings())
    pool = np.random.default_rng(0).normal(size=30)
    pool = (pool - pool.mean()) / pool.std()  # mean 0, divide-by-N variance 1, as the theory's units
    rng = np.random.default_rng(1)
    draws = np.array([pool[rng.permutation(30)[:10]].mean() ** 2 for _ in range(20000)])
    assert values[MEAN_ERROR][1] == pytest.approx(draws.mean(), rel=0.03)
    assert values[MEAN_ERROR][1] == pytest.approx((30 - 10) / (10 * 29))


# ------------------------------------------------------------------------------- the modes, measured

@pytest.mark.parametrize("mode, settings", [
    ("fresh-mix", {"fresh_per_class": 10}),
    ("augment", {"augment_ratio": 0.1}),
    ("accumulate-subsample", {}),
    ("weighted", {"real_weight": 0.618}),
])
def test_each_new_mode_matches_its_closed_form_with_the_mle_refit(real, mode, settings):
    measured = _chains(real, mode, GaussianOptions(), **settings)
    error, variance = _theory(real, mode, FitLaw(), **settings)
    _within(measured[:, 0], error, f"{mode} mean error")
    _within(measured[:, 1], variance, f"{mode} variance ratio")
    if mode == "augment":  # bounded: the closed form's limit is within 4 SE of generation K, far below replace
        limit = chain_expectations(mode, 40, N, n, C, real.v0, FitLaw(), _settings(**settings))[MEAN_ERROR][-1]
        replace_error, _ = _theory(real, "replace", FitLaw())
        se = measured[:, 0].std(ddof=1) / np.sqrt(REPLICATES)
        assert measured[:, 0].mean() < limit + 4 * se and limit < replace_error / 20
    if mode == "accumulate-subsample":  # between accumulate and replace
        se = measured[:, 0].std(ddof=1) / np.sqrt(REPLICATES)
        low, _ = _theory(real, "accumulate", FitLaw())
        high, _ = _theory(real, "replace", FitLaw())
        assert low < measured[:, 0].mean() - 2 * se and measured[:, 0].mean() + 4 * se < high


def test_the_kde_kind_spreads_by_its_kernel_variance_as_its_closed_form_says(real):
    """A KDE refitted to its own samples (replace): V_k = ((n − 1)/n) V_{k−1} + h² in expectation, in the closed
    form's law c = 1, a = h² (a fixed bandwidth; Scott's rule depends on the data and has none)."""
    measured = _chains(real, "replace", KdeOptions(bandwidth=6.0))
    error, variance = _theory(real, "replace", FitLaw(added_variance=36.0))
    _within(measured[:, 0], error, "kde mean error")
    _within(measured[:, 1], variance, "kde variance ratio")
    assert measured[:, 1].mean() > 1.0 > _theory(real, "replace", FitLaw())[1]  # spreads where the Gaussian collapses


def test_weighted_reproduces_the_golden_ratio_minimum_with_a_known_variance(real):
    """He, Xu and Cheng's setting: the variance is known (the Gaussian kind's ``variance`` option fixes it), so
    only the mean is learnt. Generation K's error at w = 0.618 is below that at 0.4 and at 0.9, measured, and
    each matches the exact closed form (which, for this finite real pool, lies below the infinite-pool formula)."""
    measured = {}
    for w in (0.4, 0.618, 0.9):
        values = _chains(real, "weighted", GaussianOptions(variance=SIGMA2), real_weight=w)[:, 0]
        error, _ = _theory(real, "weighted", FitLaw(fixed_variance=SIGMA2), real_weight=w)
        _within(values, error, f"weighted w={w}")
        measured[w] = values
    se = {w: v.std(ddof=1) / np.sqrt(len(v)) for w, v in measured.items()}
    for other in (0.4, 0.9):
        gap = measured[other].mean() - measured[0.618].mean()
        assert gap > 2 * np.hypot(se[other], se[0.618]), (other, gap, se)
