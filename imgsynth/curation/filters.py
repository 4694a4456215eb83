"""The curation filters as pure functions of scores and labels: each returns a keep mask.

Kept separate from reading and writing sets so every rule can be checked on small arrays. All are
deterministic: ties are broken by position, and the only randomness (rebalancing) comes from a seed.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def keep_confident(label_probability: np.ndarray, min_confidence: float) -> np.ndarray:
    """Keep images whose own label gets probability ≥ ``min_confidence`` from the reference classifier."""
    if not 0.0 <= min_confidence <= 1.0:
        raise ValueError(f"min_confidence must lie in [0, 1], got {min_confidence}")
    return np.asarray(label_probability) >= min_confidence


def keep_aligned(scores: np.ndarray, labels: Sequence[int], min_score: float | None = None,
                 top_fraction: float | None = None) -> np.ndarray:
    """Keep images whose CLIP score is ≥ ``min_score`` and, if given, in the top fraction of their class.

    The top fraction of a class with ``n`` images is its ``ceil(fraction × n)`` highest scores (at
    least one image survives per class); equal scores are ranked by position.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    keep = np.ones(len(scores), dtype=bool)
    if min_score is not None:
        keep &= scores >= min_score
    if top_fraction is not None:
        if not 0.0 < top_fraction <= 1.0:
            raise ValueError(f"clip top fraction must lie in (0, 1], got {top_fraction}")
        in_top = np.zeros(len(scores), dtype=bool)
        for label in np.unique(labels):
            members = np.flatnonzero(labels == label)
            order = members[np.argsort(-scores[members], kind="stable")]
            in_top[order[:math.ceil(top_fraction * len(members))]] = True
        keep &= in_top
    return keep


def rebalance(labels: Sequence[int], seed: int) -> np.ndarray:
    """Downsample every class to the smallest class count, choosing members with a seeded generator.

    ``labels`` are the labels of the images still kept. Classes are visited in label order, each
    drawing from one ``numpy.random.default_rng(seed)``, so the choice depends only on the labels and
    the seed.
    """
    labels = np.asarray(labels)
    keep = np.zeros(len(labels), dtype=bool)
    if not len(labels):
        return keep
    classes, counts = np.unique(labels, return_counts=True)
    target = int(counts.min())
    rng = np.random.default_rng(seed)
    for label in classes:
        members = np.flatnonzero(labels == label)
        chosen = members if len(members) == target else rng.choice(members, size=target, replace=False)
        keep[chosen] = True
    return keep
