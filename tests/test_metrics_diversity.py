"""CLIP diversity, Vendi score and CLIP score: closed forms and O(n²) / full-kernel formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.distance import pdist

from imgsynth.metrics.alignment import clip_score, clip_score_per_sample
from imgsynth.metrics.diversity import clip_diversity, vendi_score


def test_clip_diversity_closed_forms():
    assert clip_diversity(np.eye(6)) == pytest.approx(1.0, abs=1e-15)
    assert clip_diversity(np.tile([[0.3, -2.0, 1.0]], (5, 1))) == pytest.approx(0.0, abs=1e-15)
    # Two opposed vectors: cosine distance 2.
    assert clip_diversity([[1.0, 0.0], [-1.0, 0.0]]) == pytest.approx(2.0, rel=1e-15)


def test_clip_diversity_matches_all_pairs_and_ignores_scale():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((80, 12))
    pairwise = pdist(x, metric="cosine").mean()  # 1 − cos over the n(n−1)/2 distinct pairs
    assert clip_diversity(x) == pytest.approx(pairwise, rel=1e-12)
    assert clip_diversity(x * rng.uniform(0.1, 10, size=(80, 1))) == pytest.approx(pairwise, rel=1e-12)


def test_vendi_closed_forms():
    assert vendi_score(np.tile([[1.0, 2.0, 3.0]], (9, 1))) == pytest.approx(1.0, rel=1e-12)
    assert vendi_score(np.eye(7)) == pytest.approx(7.0, rel=1e-12)
    assert vendi_score(np.eye(4)[:3] * 5) == pytest.approx(3.0, rel=1e-12)  # orthogonal, n < d
    # Two groups of identical vectors, orthogonal to each other, sizes 2 and 6: eigenvalues ¼ and ¾.
    x = np.array([[1.0, 0.0]] * 2 + [[0.0, 1.0]] * 6)
    assert vendi_score(x) == pytest.approx(math.exp(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75))), rel=1e-12)


@pytest.mark.parametrize("n, d", [(30, 8), (8, 30)])
def test_vendi_matches_full_kernel(n, d):
    x = np.random.default_rng(n).standard_normal((n, d))
    units = x / np.linalg.norm(x, axis=1, keepdims=True)
    eigenvalues = np.linalg.eigvalsh(units @ units.T / n)
    eigenvalues = eigenvalues[eigenvalues > 1e-15]
    expected = math.exp(-(eigenvalues * np.log(eigenvalues)).sum())
    assert vendi_score(x) == pytest.approx(expected, rel=1e-10)


def test_clip_score_by_hand():
    images = [[1.0, 0.0], [0.0, 2.0], [1.0, 0.0]]
    texts = [[1.0, 1.0], [0.0, 1.0], [-1.0, 0.0]]  # cos = 1/√2, 1, −1 (clamped to 0)
    assert clip_score_per_sample(images, texts).tolist() == pytest.approx([100 / math.sqrt(2), 100.0, 0.0])
    assert clip_score(images, texts) == pytest.approx((100 / math.sqrt(2) + 100) / 3, rel=1e-12)
    assert clip_score(images, texts, scale=2.5) == pytest.approx((2.5 / math.sqrt(2) + 2.5) / 3, rel=1e-12)


@pytest.mark.parametrize("call, message", [
    (lambda: clip_diversity(np.zeros((1, 3))), "only 1 sample"),
    (lambda: clip_diversity(np.array([[1.0, 0.0], [0.0, 0.0]])), "zero norm"),
    (lambda: vendi_score(np.zeros((0, 3))), "no samples"),
    (lambda: vendi_score(np.array([[np.nan, 1.0]])), "NaN"),
    (lambda: clip_score(np.ones((3, 2)), np.ones((2, 2))), "3 images and 2 texts"),
    (lambda: clip_score(np.ones((2, 2)), np.ones((2, 3))), "feature dimensions differ"),
])
def test_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()
