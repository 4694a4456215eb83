"""Memorisation rate and authenticity: do generated samples copy the training set their generator learned from?

Both compare each candidate (generated) row with the rows of the generator's *training set*, in the feature
space of the evaluation's extractor (with the ``pixels`` extractor, in pixel space), by Euclidean distance.

**Memorisation rate** — the nearest-neighbour distance-ratio test of Yoon et al. 2023 ("Diffusion
probabilistic models generalize when they fail to memorize", ICML SPIGM workshop), used by Gu et al. 2023
("On memorization in diffusion models", arXiv:2310.02664) and by Shi et al. 2025 ("A closer look at model
collapse: from a generalization-to-memorization perspective", NeurIPS) to follow collapse: a sample ``x`` is
*memorised* when

    d(x, NN₁(x, train)) < τ · d(x, NN₂(x, train)),   τ = :data:`RATIO_THRESHOLD` = 1/3,

(or when ``d(x, NN₁) = 0``: an exact copy, even of an image the training set holds twice), and the rate is
the share of memorised samples. A copy of a training image is memorised (its nearest distance is 0); a
sample lying between training images is not. For samples drawn independently from the training set's own
distribution the ratio's d-th power is uniform on [0, 1] as n grows (a Poisson process looks the same from
every point), so the rate tends to τᵈ = 3⁻ᵈ in d dimensions (0.111 in 2-d, 1.5e-4 in 8-d): the real test
set's own rate, which the loop records as the reference, is the level that means "no copying".

**Authenticity** — Alaa et al. 2022 ("How faithful is your synthetic data? Sample-level metrics for
evaluating and auditing generative models", ICML), sample-level form: with ``r*`` the training row nearest to
``x``, ``x`` is *authentic* when it lies farther from ``r*`` than ``r*``'s own nearest other training row,

    d(x, r*) > d(r*, NN₁(r*, train \\ {r*})),

and the score is the share of authentic samples (1: nothing sits closer to a training image than the
training data's own spacing; 0: every sample is a copy). Ties at zero distance count as copies.

Neighbours come from ``sklearn.neighbors.NearestNeighbors`` (exact: trees in low dimensions, brute force
in float64 in high ones). The training rows are fixed under the bootstrap; only candidate rows are
resampled, so an interval says how the value would vary over other draws of the same number of samples.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from imgsynth.metrics.inputs import as_features, same_width

if TYPE_CHECKING:
    from imgsynth.metrics.registry import MetricSettings

RATIO_THRESHOLD = 1.0 / 3.0
"""τ of the distance-ratio test (Yoon et al. 2023; Gu et al. 2023; Shi et al. 2025)."""


def _matrix(x: Any, name: str, min_samples: int) -> np.ndarray:
    return as_features(x, name, min_samples=min_samples).double().cpu().numpy()


def _neighbours(train: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(distances, indices) of the ``k`` nearest training rows of each query, nearest first."""
    from sklearn.neighbors import NearestNeighbors

    return NearestNeighbors(n_neighbors=k).fit(train).kneighbors(queries)


def memorised(candidate: Any, train: Any, threshold: float = RATIO_THRESHOLD) -> np.ndarray:
    """Per candidate row: is it memorised under the distance-ratio test with ``threshold`` (see the module)?

    ``train`` needs at least two rows (the test compares the nearest with the second nearest).
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"the distance-ratio threshold must lie in (0, 1], got {threshold}")
    x, t = _matrix(candidate, "candidate", 1), _matrix(train, "train", 2)
    same_width(as_features(x, "candidate"), as_features(t, "train"), ("candidate", "train"))
    distances, _ = _neighbours(t, x, 2)
    first, second = distances[:, 0], distances[:, 1]
    return (first == 0.0) | (first < threshold * second)


def memorisation_rate(candidate: Any, train: Any, threshold: float = RATIO_THRESHOLD) -> float:
    """Share of candidate rows memorised under the distance-ratio test (see the module), in [0, 1]."""
    return float(memorised(candidate, train, threshold).mean())


def authentic(candidate: Any, train: Any) -> np.ndarray:
    """Per candidate row: is it authentic in the sense of Alaa et al. 2022 (see the module)?"""
    x, t = _matrix(candidate, "candidate", 1), _matrix(train, "train", 2)
    same_width(as_features(x, "candidate"), as_features(t, "train"), ("candidate", "train"))
    to_train, nearest = _neighbours(t, x, 1)
    # The training rows' own spacing: the second neighbour of a row among its own set is its nearest other row
    # (the first is itself, at distance 0; a duplicate row has spacing 0, so nothing is authentic next to it).
    spacing = _neighbours(t, t, 2)[0][:, 1]
    return to_train[:, 0] > spacing[nearest[:, 0]]


def authenticity(candidate: Any, train: Any) -> float:
    """Share of authentic candidate rows (Alaa et al. 2022), in [0, 1]."""
    return float(authentic(candidate, train).mean())


def family(settings: MetricSettings, candidate: Any, *, train: Any) -> dict[str, float]:
    """The registered family: ``memorisation_rate`` (τ = 1/3) and ``authenticity`` of the candidate against ``train``."""
    return {"memorisation_rate": memorisation_rate(candidate, train), "authenticity": authenticity(candidate, train)}


__all__ = ["RATIO_THRESHOLD", "authentic", "authenticity", "memorisation_rate", "memorised"]
