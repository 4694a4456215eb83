"""Fréchet distance, KID and CMMD: closed forms, independent numpy/scipy formulas, bias, bad input."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch

from imgsynth.metrics.distances import (BiasedEstimateWarning, cmmd, feature_statistics, frechet_distance,
                                        frechet_distance_from_statistics, kid, kid_subset_values)


def scipy_frechet(a: np.ndarray, b: np.ndarray) -> float:
    """The textbook formula with scipy's general matrix square root (pytorch-fid's recipe)."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(s1 @ s2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(root).real)


def eigenvalue_frechet(a: np.ndarray, b: np.ndarray) -> float:
    """tr√(Σ₁Σ₂) as Σ√λ over the (real, ≥ 0) eigenvalues of the non-symmetric product, via LAPACK geev."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    eigenvalues = np.clip(scipy.linalg.eigvals(s1 @ s2).real, 0, None)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(eigenvalues).sum())


# --------------------------------------------------------------------------------------------- FD: oracles

def test_frechet_closed_form_two_by_two():
    mu = np.zeros(2)
    value = frechet_distance_from_statistics(mu, np.array([[2.0, 1.0], [1.0, 2.0]]), mu, np.eye(2))
    # √[[2,1],[1,2]] has eigenvalues √3 and 1, so tr = 2 + 2 − 2(√3 + 1).
    assert value == pytest.approx(6 - 2 * (math.sqrt(3) + 1), rel=1e-12)
    assert frechet_distance((mu, np.array([[2.0, 1.0], [1.0, 2.0]])), (mu, np.eye(2))) == pytest.approx(value, rel=1e-15)


def test_frechet_diagonal_covariances_and_mean_term():
    a_var = np.array([1.0, 4.0, 9.0, 0.25])
    b_var = np.array([2.0, 1.0, 16.0, 1.0])
    mu1, mu2 = np.array([0.0, 1.0, 2.0, 3.0]), np.array([1.0, 1.0, 0.0, 3.0])
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a_var) - np.sqrt(b_var)) ** 2).sum()
    value = frechet_distance_from_statistics(mu1, np.diag(a_var), mu2, np.diag(b_var))
    assert value == pytest.approx(expected, rel=1e-12)


def test_frechet_singular_covariances_from_statistics():
    # Rank-1 and rank-2 covariances: no Cholesky factor exists, the eigen route must still be exact.
    s1 = np.diag([4.0, 0.0, 0.0])
    s2 = np.diag([1.0, 9.0, 0.0])
    expected = (2 - 1) ** 2 + (0 - 3) ** 2  # Σ(√aᵢ − √bᵢ)²
    assert frechet_distance_from_statistics(np.zeros(3), s1, np.zeros(3), s2) == pytest.approx(expected, rel=1e-12)


# --------------------------------------------------------------------------------------------- FD: agreement

@pytest.mark.parametrize("method", ["covariance", "cross_gram", "auto"])
def test_frechet_matches_scipy_sqrtm(method):
    rng = np.random.default_rng(1)
    mixing = rng.standard_normal((12, 12))
    a = rng.standard_normal((300, 12)) @ mixing
    b = rng.standard_normal((250, 12)) @ mixing * 1.3 + 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error", BiasedEstimateWarning)  # n > d: no warning may be raised
        value = frechet_distance(a, b, method=method)
    assert value == pytest.approx(scipy_frechet(a, b), rel=1e-9)
    assert value == pytest.approx(frechet_distance(torch.tensor(b), torch.tensor(a), method=method), rel=1e-12)


def test_frechet_fewer_samples_than_dimensions_warns_and_stays_exact():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((20, 40))
    b = rng.standard_normal((25, 40)) * 0.7 + 0.1
    with pytest.warns(BiasedEstimateWarning, match="biased"):
        cross = frechet_distance(a, b)
    with pytest.warns(BiasedEstimateWarning):
        covariance = frechet_distance(a, b, method="covariance")
    reference = eigenvalue_frechet(a, b)
    assert math.isfinite(cross)
    assert cross == pytest.approx(reference, rel=1e-6)
    assert covariance == pytest.approx(reference, rel=1e-6)


def test_frechet_identical_sets_is_zero_not_negative():
    a = np.random.default_rng(3).standard_normal((50, 5))
    assert frechet_distance(a, a) == 0.0 or 0.0 <= frechet_distance(a, a) < 1e-10
    mu, sigma = feature_statistics(a)
    assert 0.0 <= frechet_distance((mu, sigma), (mu, sigma)) < 1e-10


def test_frechet_bias_shrinks_like_one_over_n():
    # Two samples of N(0, I_d): the true distance is 0 and E[FD] ≈ (2d + d(d+1)/2) / n — the mean term
    # E‖m₁ − m₂‖² = 2d/n plus, to second order, ¼ E‖Σ̂₁ − Σ̂₂‖²_F = ¼ · 2d(d+1)/n.
    rng = np.random.default_rng(4)
    d, reps, sizes = 16, 12, (100, 400, 1600)
    means = [np.mean([frechet_distance(rng.standard_normal((n, d)), rng.standard_normal((n, d)))
                      for _ in range(reps)]) for n in sizes]
    slope = np.polyfit(np.log(sizes), np.log(means), 1)[0]
    assert -1.1 < slope < -0.9
    for n, mean in zip(sizes, means):
        assert n * mean == pytest.approx(2 * d + d * (d + 1) / 2, rel=0.15)


def test_frechet_runs_in_float64_for_float32_input():
    rng = np.random.default_rng(5)
    a = rng.standard_normal((200, 6)).astype(np.float32)
    b = (rng.standard_normal((200, 6)) + 0.01).astype(np.float32)
    assert frechet_distance(a, b) == pytest.approx(scipy_frechet(a.astype(np.float64), b.astype(np.float64)),
                                                   rel=1e-9)


# --------------------------------------------------------------------------------------------- FD: bad input

@pytest.mark.parametrize("a, b, message", [
    (np.zeros((5, 3)), np.zeros((5, 4)), "feature dimensions differ"),
    (np.zeros((0, 3)), np.zeros((5, 3)), "a: no samples"),
    (np.zeros((1, 3)), np.zeros((5, 3)), "a: only 1 sample"),
    (np.zeros(5), np.zeros((5, 3)), "2-D"),
    (np.array([[0.0, np.nan], [1.0, 2.0]]), np.zeros((5, 2)), "NaN in 1 of 2 feature rows"),
    (np.zeros((5, 2)), np.array([[0.0, np.inf], [1.0, 2.0], [3.0, 4.0]]), "b: inf"),
])
def test_frechet_bad_input(a, b, message):
    with pytest.raises(ValueError, match=message):
        frechet_distance(a, b)


def test_frechet_statistics_bad_input():
    with pytest.raises(ValueError, match="not symmetric"):
        frechet_distance_from_statistics(np.zeros(2), np.array([[1.0, 0.5], [0.0, 1.0]]), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="statistics do not match"):
        frechet_distance_from_statistics(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="sigma2 contains NaN"):
        frechet_distance_from_statistics(np.zeros(2), np.eye(2), np.zeros(2), np.full((2, 2), np.nan))


# --------------------------------------------------------------------------------------------- KID

def test_kid_worked_by_hand():
    # d = 1, k(x, y) = (xy + 1)³. a = {0, 1}, b = {1, 2}:
    # within a (i ≠ j): k(0,1) = 1, twice → 2; within b: k(1,2) = 27, twice → 54; (2 + 54) / (2·1) = 28.
    # across: k(0,1) + k(0,2) + k(1,1) + k(1,2) = 1 + 1 + 8 + 27 = 37; 2·37/4 = 18.5. KID = 9.5.
    assert kid([[0.0], [1.0]], [[1.0], [2.0]], subsets=5, subset_size=100) == pytest.approx(9.5, rel=1e-12)


def numpy_kid(a: np.ndarray, b: np.ndarray, subsets: int, size: int, seed: int) -> float:
    """Bińkowski et al.'s estimator written out, with the subsets drawn as torch-fidelity draws them."""
    rng = np.random.RandomState(seed)
    d = a.shape[1]
    values = []
    for _ in range(subsets):
        x = a[rng.choice(len(a), size, replace=False)]
        y = b[rng.choice(len(b), size, replace=False)]
        kxx, kyy, kxy = ((x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3)
        m = size
        values.append((kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                      - 2 * kxy.sum() / m**2)
    return float(np.mean(values))


def test_kid_matches_independent_formula_and_torch_fidelity():
    from torch_fidelity.metric_kid import kid_features_to_metric

    rng = np.random.default_rng(6)
    a = rng.standard_normal((120, 10))
    b = rng.standard_normal((90, 10)) * 1.2 + 0.3
    value = kid(a, b, subsets=7, subset_size=40, seed=11)
    assert value == pytest.approx(numpy_kid(a, b, 7, 40, 11), rel=1e-10)
    fidelity = kid_features_to_metric(torch.tensor(a), torch.tensor(b), kid_subsets=7, kid_subset_size=40,
                                      rng_seed=11, verbose=False, kid_kernel="poly", kid_kernel_poly_degree=3,
                                      kid_kernel_poly_gamma=None, kid_kernel_poly_coef0=1)
    assert value == pytest.approx(fidelity["kernel_inception_distance_mean"], rel=1e-10)


def test_kid_is_seeded_and_shrinks_subsets_to_the_smaller_set():
    rng = np.random.default_rng(7)
    a, b = rng.standard_normal((60, 4)), rng.standard_normal((30, 4)) + 0.2
    assert kid(a, b, subsets=5, subset_size=20, seed=1) == kid(a, b, subsets=5, subset_size=20, seed=1)
    assert kid(a, b, subsets=5, subset_size=20, seed=1) != kid(a, b, subsets=5, subset_size=20, seed=2)
    assert kid_subset_values(a, b, subsets=3, subset_size=1000).shape == (3,)
    assert kid(a, b, subsets=3, subset_size=1000) == pytest.approx(numpy_kid(a, b, 3, 30, 0), rel=1e-10)


@pytest.mark.parametrize("kwargs, message", [({"subsets": 0}, "at least one subset"),
                                             ({"subset_size": 1}, "subset_size must be at least 2")])
def test_kid_bad_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        kid(np.zeros((5, 2)), np.ones((5, 2)), **kwargs)


def test_kid_bad_input():
    with pytest.raises(ValueError, match="only 1 sample"):
        kid(np.zeros((1, 2)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="NaN"):
        kid(np.full((3, 2), np.nan), np.zeros((4, 2)))


# --------------------------------------------------------------------------------------------- CMMD

def test_cmmd_worked_by_hand():
    # σ = 10 → k = exp(−‖x−y‖²/200). a = {0, 10}, b = {0, 20} (1-d), V-statistic with diagonals:
    # mean Kaa = (2 + 2e^−½)/4, mean Kbb = (2 + 2e^−2)/4, mean Kab = (1 + e^−2 + 2e^−½)/4
    # → 1000 · (2 − 2e^−½)/4 = 500 (1 − e^−½).
    assert cmmd([[0.0], [10.0]], [[0.0], [20.0]]) == pytest.approx(500 * (1 - math.exp(-0.5)), rel=1e-12)
    assert cmmd([[0.0], [0.0]], [[10.0], [10.0]]) == pytest.approx(1000 * (2 - 2 * math.exp(-0.5)), rel=1e-12)


def test_cmmd_matches_reference_formula_in_chunks():
    # The google-research/cmmd `mmd` function transcribed to numpy.
    rng = np.random.default_rng(8)
    x = rng.standard_normal((37, 16))
    y = rng.standard_normal((29, 16)) + 0.4
    gamma = 1 / (2 * 10**2)

    def mean_kernel(p, q):
        sq = -2 * p @ q.T + (p * p).sum(1)[:, None] + (q * q).sum(1)[None, :]
        return np.exp(-gamma * sq).mean()

    expected = 1000 * (mean_kernel(x, x) + mean_kernel(y, y) - 2 * mean_kernel(x, y))
    assert cmmd(x, y, chunk=5) == pytest.approx(expected, rel=1e-10)
    assert cmmd(x, x) == pytest.approx(0.0, abs=1e-9)


def test_cmmd_bad_input():
    with pytest.raises(ValueError, match="feature dimensions differ"):
        cmmd(np.zeros((3, 2)), np.zeros((3, 5)))
    with pytest.raises(ValueError, match="sigma must be positive"):
        cmmd(np.zeros((3, 2)), np.zeros((3, 2)), sigma=0)
