"""Differential entropy of a set of feature rows by the k-nearest-neighbour (Kozachenko–Leonenko) estimator.

Shi et al. 2025 ("A closer look at model collapse", NeurIPS) predict the shift from generalisation to
memorisation in recursive training from the falling entropy of each generation's training set, estimated
this way. For n rows in d dimensions with ``εᵢ`` the Euclidean distance from row i to its k-th nearest other
row (Kozachenko & Leonenko 1987; Kraskov, Stögbauer & Grassberger 2004, eq. 20; Berrett, Samworth & Yuan
2019, eq. 2):

    Ĥ = ψ(n) − ψ(k) + log V_d + (d/n) Σᵢ log εᵢ,     V_d = π^{d/2} / Γ(d/2 + 1)  (the unit ball's volume),

in nats. It is consistent for any k; its bias at finite n comes from the density varying inside the k-NN
balls and grows with d (O(n^{-2/d}) for d ≥ 3 by Berrett et al.), so compare values of equal n and d
only: across generations of one run, not across feature spaces. For a Gaussian the closed form is
½ log((2πe)^d det Σ); ``tests/test_knn_entropy.py`` checks the estimator against it.

Exact duplicate rows are counted once: a distribution with an atom has differential entropy −∞ and a zero
distance has no logarithm, so the estimate is that of the set's distinct rows (a set that copies itself
shows in the memorisation rate, :mod:`imgsynth.metrics.memorisation`).
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.special import digamma, gammaln

from imgsynth.metrics.inputs import as_features

if TYPE_CHECKING:
    from imgsynth.metrics.registry import MetricSettings


def log_unit_ball_volume(d: int) -> float:
    """log V_d = (d/2) log π − log Γ(d/2 + 1)."""
    return 0.5 * d * math.log(math.pi) - float(gammaln(0.5 * d + 1.0))


def distinct_rows(features: Any, name: str = "features") -> np.ndarray:
    """The distinct rows of a feature matrix (float64, in first-occurrence order)."""
    x = as_features(features, name).double().cpu().numpy()
    _, first = np.unique(x, axis=0, return_index=True)
    return x[np.sort(first)]


def knn_entropy(features: Any, k: int = 5) -> float:
    """Kozachenko–Leonenko estimate (nats) of the differential entropy of the distribution of ``features``' rows.

    Needs at least ``k + 1`` distinct rows (duplicates are counted once, see the module); raises
    ``ValueError`` otherwise.
    """
    from sklearn.neighbors import NearestNeighbors

    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    x = distinct_rows(features)
    n, d = x.shape
    if n < k + 1:
        raise ValueError(f"features: only {n} distinct rows; the k-NN entropy with k = {k} needs at least {k + 1}")
    # The (k+1)-th neighbour of a row among its own set is its k-th nearest other row (the first is itself).
    distances = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x)[0][:, k]
    return float(digamma(n) - digamma(k) + log_unit_ball_volume(d) + d * np.log(distances).mean())


def gaussian_entropy(covariance: Any) -> float:
    """Closed form ½ log((2πe)^d det Σ) of a d-dimensional Gaussian with covariance ``covariance`` (nats)."""
    sigma = np.atleast_2d(np.asarray(covariance, dtype=np.float64))
    sign, logdet = np.linalg.slogdet(sigma)
    if sign <= 0:
        raise ValueError("the covariance must be positive definite")
    return 0.5 * (sigma.shape[0] * math.log(2 * math.pi * math.e) + logdet)


def family(settings: MetricSettings, candidate: Any, *, train: Any) -> dict[str, float]:
    """The registered family: ``knn_entropy`` of the candidate and ``train_knn_entropy`` of the training set, both
    with k = ``settings.k``; a set with too few distinct rows gets no value, with a note (never NaN)."""
    from imgsynth.notes import Note

    values = {}
    for name, rows in (("knn_entropy", candidate), ("train_knn_entropy", train)):
        try:
            values[name] = knn_entropy(rows, settings.k)
        except ValueError as exc:
            warnings.warn(f"{name} skipped: {exc}", Note, stacklevel=2)
    return values


__all__ = ["distinct_rows", "gaussian_entropy", "knn_entropy", "log_unit_ball_volume"]
