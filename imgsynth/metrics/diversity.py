"""Diversity of one set of embeddings: mean pairwise cosine distance and the Vendi score."""

from __future__ import annotations

import math
from typing import Any, Iterator

import torch

from imgsynth.metrics.blocks import block_rows, row_blocks
from imgsynth.metrics.inputs import as_features, unit_rows

F64 = torch.float64


def _unit_blocks(x: torch.Tensor, rows: int) -> Iterator[torch.Tensor]:
    """Blocks of ``x``'s rows in float64 scaled to unit norm, so no float64 copy of the whole set is made."""
    for block in row_blocks(x.shape[0], rows):
        try:
            yield unit_rows(x[block].to(F64), "embeddings")
        except ValueError:
            unit_rows(x.to(F64), "embeddings")  # the message counts and places zero rows in the whole set
            raise


def clip_diversity(embeddings: Any, *, block: int | None = None) -> float:
    """Mean cosine distance 1 − cos(eᵢ, eⱼ) over the n(n−1) ordered pairs of distinct samples, in O(n·d).

    With unit rows uᵢ, Σ_{i≠j} uᵢ·uⱼ = ‖Σᵢ uᵢ‖² − n, so the mean over distinct pairs is
    1 − (‖Σᵢ uᵢ‖² − n) / (n(n − 1)) without forming the n × n similarity matrix. 0 for identical
    samples, 1 for orthogonal ones, up to n/(n−1) for perfectly opposed ones. Named for CLIP
    embeddings; any features work (the evaluator reports it as ``diversity`` for non-CLIP extractors).
    Rows are read ``block`` at a time (default: 64 MiB of float64), so no float64 copy of the set is made.
    """
    x = as_features(embeddings, "embeddings", min_samples=2)
    n = x.shape[0]
    total = None
    for units in _unit_blocks(x, block_rows(x.shape[1], block)):
        part = units.sum(dim=0)
        total = part if total is None else total.add_(part)
    assert total is not None
    return max(float(1.0 - (total.square().sum() - n) / (n * (n - 1))), 0.0)  # ≥ 0; round-off gives -2e-16


def vendi_score(embeddings: Any, *, block: int | None = None) -> float:
    """Vendi score (Friedman & Dieng 2023) with the cosine-similarity kernel.

    VS = exp(−Σ λᵢ log λᵢ) over the eigenvalues λ of K/n, K = U Uᵀ the cosine-similarity matrix of the
    unit rows U. K/n and Uᵀ U/n share their non-zero eigenvalues, so the smaller of the n × n and d × d
    Gram matrices is decomposed. It reads as an effective number of distinct samples: 1 when all are
    identical, n when they are mutually orthogonal. Eigenvalues ≤ 0 (round-off) contribute 0 (0 log 0 = 0).
    With n > d the d × d Gram matrix is summed over ``block`` rows at a time (default: 64 MiB of float64).
    """
    x = as_features(embeddings, "embeddings", min_samples=1)
    n, d = x.shape
    if n <= d:  # at most d rows: the n × n Gram matrix, from all rows at once
        units = next(_unit_blocks(x, n))
        gram = units @ units.mT
    else:  # the d × d one, summed over blocks of rows in float64
        gram = None
        for units in _unit_blocks(x, block_rows(d, block)):
            if gram is None:
                gram = units.mT @ units
            else:
                gram.addmm_(units.mT, units)
        assert gram is not None
    eigenvalues = torch.linalg.eigvalsh(gram / n)
    positive = eigenvalues[eigenvalues > 0]
    entropy = -(positive * positive.log()).sum()
    return float(math.exp(float(entropy)))
