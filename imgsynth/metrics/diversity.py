"""Diversity of one set of embeddings: mean pairwise cosine distance and the Vendi score."""

from __future__ import annotations

import math
from typing import Any

import torch

from imgsynth.metrics.inputs import as_features, unit_rows

F64 = torch.float64


def clip_diversity(embeddings: Any) -> float:
    """Mean cosine distance 1 − cos(eᵢ, eⱼ) over the n(n−1) ordered pairs of distinct samples, in O(n·d).

    With unit rows uᵢ, Σ_{i≠j} uᵢ·uⱼ = ‖Σᵢ uᵢ‖² − n, so the mean over distinct pairs is
    1 − (‖Σᵢ uᵢ‖² − n) / (n(n − 1)) without forming the n × n similarity matrix. 0 for identical
    samples, 1 for orthogonal ones, up to n/(n−1) for perfectly opposed ones. Named for CLIP
    embeddings; any features work (the evaluator reports it as ``diversity`` for non-CLIP extractors).
    """
    units = unit_rows(as_features(embeddings, "embeddings", min_samples=2, dtype=F64), "embeddings")
    n = units.shape[0]
    total = units.sum(dim=0).square().sum()
    return max(float(1.0 - (total - n) / (n * (n - 1))), 0.0)  # ≥ 0 exactly; round-off gives -2e-16


def vendi_score(embeddings: Any) -> float:
    """Vendi score (Friedman & Dieng 2023) with the cosine-similarity kernel.

    VS = exp(−Σ λᵢ log λᵢ) over the eigenvalues λ of K/n, K = U Uᵀ the cosine-similarity matrix of the
    unit rows U. K/n and Uᵀ U/n share their non-zero eigenvalues, so the smaller of the n × n and d × d
    Gram matrices is decomposed. It reads as an effective number of distinct samples: 1 when all are
    identical, n when they are mutually orthogonal. Eigenvalues ≤ 0 (round-off) contribute 0 (0 log 0 = 0).
    """
    units = unit_rows(as_features(embeddings, "embeddings", min_samples=1, dtype=F64), "embeddings")
    n, d = units.shape
    gram = units @ units.mT if n <= d else units.mT @ units
    eigenvalues = torch.linalg.eigvalsh(gram / n)
    positive = eigenvalues[eigenvalues > 0]
    entropy = -(positive * positive.log()).sum()
    return float(math.exp(float(entropy)))
