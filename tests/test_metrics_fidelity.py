"""Precision, recall, density, coverage: a hand-worked 1-D case, strict radii, brute force, the prdc package."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from imgsynth.metrics.fidelity import knn_radii, precision_recall_density_coverage


def test_prdc_worked_by_hand_in_one_dimension():
    # real {0, 1, 3}, k = 1: radii (distance to the nearest other real) = 1, 1, 2.
    # fake {0.5, 0.6, 10}: radii 0.1, 0.1, 9.4.
    # precision: 0.5 and 0.6 lie in real 0's ball (0.5, 0.6 < 1); 10 lies in none       → 2/3
    # recall: real 0 is in no fake ball (0.5, 0.6 ≥ 0.1; 10 ≥ 9.4); real 1 (9 < 9.4) and
    #         real 3 (7 < 9.4) lie in the ball of fake 10                                  → 2/3
    # density: 0.5 is in the balls of reals 0 and 1, so is 0.6, 10 in none: (2+2+0)/3/k   → 4/3
    # coverage: nearest fakes of reals 0, 1, 3 at 0.5, 0.4, 2.4 vs radii 1, 1, 2           → 2/3
    real = [[0.0], [1.0], [3.0]]
    fake = [[0.5], [0.6], [10.0]]
    result = precision_recall_density_coverage(real, fake, k=1)
    assert result == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "density": 4 / 3, "coverage": 2 / 3},
                                   rel=1e-12)


def test_prdc_balls_are_strict_as_in_the_paper_code():
    # real {0, 1, 2}, k = 1: real 2's radius is exactly 1; a fake at exactly 3 sits on that boundary.
    real = [[0.0], [1.0], [2.0]]
    on_boundary = precision_recall_density_coverage(real, [[3.0], [3.0]], k=1)
    inside = precision_recall_density_coverage(real, [[2.999], [3.0]], k=1)
    assert on_boundary["precision"] == 0.0  # torch-fidelity's `<=` would count it
    assert inside["precision"] == 0.5


def brute_force_prdc(real: np.ndarray, fake: np.ndarray, k: int) -> dict[str, float]:
    """Naeem et al.'s definitions with full scipy distance matrices, sorted rows."""
    real_real, fake_fake, real_fake = cdist(real, real), cdist(fake, fake), cdist(real, fake)
    real_radii = np.sort(real_real, axis=1)[:, k]  # column 0 is the point itself
    fake_radii = np.sort(fake_fake, axis=1)[:, k]
    inside_real = real_fake < real_radii[:, None]
    return {"precision": inside_real.any(axis=0).mean(),
            "recall": (real_fake < fake_radii[None, :]).any(axis=1).mean(),
            "density": inside_real.sum(axis=0).mean() / k,
            "coverage": (real_fake.min(axis=1) < real_radii).mean()}


@pytest.mark.parametrize("chunk", [7, 1024])
def test_prdc_matches_brute_force_and_prdc_package(chunk, capsys):
    from prdc import compute_prdc

    rng = np.random.default_rng(0)
    real = rng.standard_normal((130, 6))
    fake = rng.standard_normal((110, 6)) * 1.2 + 0.3
    ours = precision_recall_density_coverage(real, fake, k=5, chunk=chunk)
    assert ours == pytest.approx(brute_force_prdc(real, fake, 5), rel=1e-12)
    package = compute_prdc(real, fake, 5)
    capsys.readouterr()  # prdc prints the set sizes
    assert ours == pytest.approx({name: float(v) for name, v in package.items()}, rel=1e-12)


def test_prdc_duplicates_follow_the_paper_code():
    # An exact duplicate is a neighbour at distance 0 (prdc counts the point itself among k+1).
    rng = np.random.default_rng(1)
    real = rng.standard_normal((40, 3))
    real = np.concatenate([real, real[:10]])
    fake = np.concatenate([rng.standard_normal((30, 3)), real[:5]])
    assert precision_recall_density_coverage(real, fake, k=3, chunk=16) == pytest.approx(
        brute_force_prdc(real, fake, 3), rel=1e-12)


def test_knn_radii_chunking_is_exact():
    x = np.random.default_rng(2).standard_normal((50, 4))
    import torch

    tensor = torch.tensor(x)
    assert torch.equal(knn_radii(tensor, 4, chunk=3), knn_radii(tensor, 4, chunk=64))  # radii are exact
    assert np.allclose(knn_radii(tensor, 4).numpy(), np.sort(cdist(x, x), axis=1)[:, 4], rtol=1e-12)


@pytest.mark.parametrize("real, fake, kwargs, message", [
    (np.zeros((5, 2)), np.zeros((10, 2)), {"k": 5}, "real: only 5 samples; this metric needs at least 6"),
    (np.zeros((10, 2)), np.zeros((0, 2)), {"k": 5}, "fake: no samples"),
    (np.zeros((10, 2)), np.zeros((10, 3)), {"k": 5}, "feature dimensions differ: real has 2, fake has 3"),
    (np.zeros((10, 2)), np.full((10, 2), np.inf), {"k": 5}, "fake: inf"),
    (np.zeros((10, 2)), np.zeros((10, 2)), {"k": 0}, "k must be a positive integer"),
])
def test_prdc_bad_input(real, fake, kwargs, message):
    with pytest.raises(ValueError, match=message):
        precision_recall_density_coverage(real, fake, **kwargs)


def test_prdc_heavy_duplication_and_chunking_give_identical_results():
    # 12 copies of one point among the reals (more ties than k-NN candidates), copies among the fakes.
    rng = np.random.default_rng(3)
    real = np.concatenate([rng.standard_normal((25, 4)), np.tile(rng.standard_normal((1, 4)), (12, 1))])
    fake = np.concatenate([rng.standard_normal((20, 4)), real[20:30]])
    small = precision_recall_density_coverage(real, fake, k=3, chunk=4)
    assert small == precision_recall_density_coverage(real, fake, k=3, chunk=4096)
    assert small == pytest.approx(brute_force_prdc(real, fake, 3), rel=1e-12)


def test_prdc_exact_on_float32_features_with_a_large_offset():
    # Inception-like: non-negative, large common mean; float32 as extractors return them.
    rng = np.random.default_rng(4)
    real = (np.abs(rng.standard_normal((90, 64))) * 3 + 40).astype(np.float32)
    fake = np.concatenate([(np.abs(rng.standard_normal((70, 64))) * 3 + 40.2).astype(np.float32), real[:6]])
    expected = brute_force_prdc(real.astype(np.float64), fake.astype(np.float64), 5)
    assert precision_recall_density_coverage(real, fake, k=5, chunk=32) == pytest.approx(expected, rel=1e-12)
