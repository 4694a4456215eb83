"""Precision, recall, density and coverage (Naeem et al. 2020) with memory bounded by a row chunk.

Conventions follow the authors' code (the ``prdc`` package, clovaai/generative-evaluation-prdc):

* Euclidean distances; a sample's k-NN radius is its distance to the k-th nearest *other* sample of
  its own set, taken as the (k+1)-th smallest distance with itself included (so an exact duplicate
  counts as a neighbour at distance 0, as in ``prdc``).
* Membership in a k-NN ball is strict: ``distance < radius``. torch-fidelity's precision/recall uses
  ``<=``; the two agree except on exact ties, which matter for duplicated images (a duplicate sits on
  a radius-0 ball that ``<`` excludes and ``<=`` includes).
* precision = fraction of fake samples inside some real ball; recall = fraction of real samples
  inside some fake ball; density = (1/k) · mean over fakes of the number of real balls containing
  it; coverage = fraction of real samples whose nearest fake lies inside their own ball.

Where ``prdc`` builds three full n × n distance matrices (plus sorting buffers), this module streams
row blocks of ``chunk`` samples: peak extra memory is about ``chunk · max(n_real, n_fake)`` doubles.
"""

from __future__ import annotations

from typing import Any

import torch

from imgsynth.metrics.inputs import as_features, same_width

F64 = torch.float64
DEFAULT_CHUNK = 1024


def _distance_block(block: torch.Tensor, block_sq: torch.Tensor, other: torch.Tensor,
                    other_sq: torch.Tensor) -> torch.Tensor:
    """Euclidean distances between the rows of ``block`` and ``other`` via ‖x‖² + ‖y‖² − 2xᵀy (float64)."""
    sq = block_sq[:, None] + other_sq[None, :] - 2 * block @ other.mT
    return sq.clamp_min_(0).sqrt_()


def knn_radii(x: torch.Tensor, k: int, chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """Distance from each row of ``x`` to its k-th nearest other row, computed ``chunk`` rows at a time."""
    if x.shape[0] <= k:
        raise ValueError(f"k-nearest-neighbour radii with k={k} need at least {k + 1} samples, got {x.shape[0]}")
    x_sq = x.square().sum(dim=1)
    radii = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
    for start in range(0, x.shape[0], chunk):
        stop = min(start + chunk, x.shape[0])
        dist = _distance_block(x[start:stop], x_sq[start:stop], x, x_sq)
        # A point's distance to itself is exactly 0 (the expansion can leave ~1e-8 from round-off).
        dist[torch.arange(stop - start, device=x.device), torch.arange(start, stop, device=x.device)] = 0
        radii[start:stop] = torch.topk(dist, k + 1, dim=1, largest=False, sorted=True).values[:, k]
    return radii


def precision_recall_density_coverage(real: Any, fake: Any, k: int = 5,
                                      chunk: int = DEFAULT_CHUNK) -> dict[str, float]:
    """Precision, recall, density and coverage of ``fake`` against ``real`` features (k nearest neighbours).

    Returns ``{"precision", "recall", "density", "coverage"}`` as floats; both sets need at least k+1
    samples. One pass over fake row blocks computes every cross distance once.
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if chunk < 1:
        raise ValueError(f"chunk must be positive, got {chunk}")
    real = as_features(real, "real", min_samples=k + 1, dtype=F64)
    fake = as_features(fake, "fake", min_samples=k + 1, dtype=F64, device=real.device)
    same_width(real, fake, ("real", "fake"))
    real_radii = knn_radii(real, k, chunk)
    fake_radii = knn_radii(fake, k, chunk)
    real_sq, fake_sq = real.square().sum(dim=1), fake.square().sum(dim=1)

    fake_in_any = torch.empty(fake.shape[0], dtype=torch.bool, device=real.device)
    balls_per_fake = torch.empty(fake.shape[0], dtype=F64, device=real.device)
    real_in_any = torch.zeros(real.shape[0], dtype=torch.bool, device=real.device)
    nearest_fake = torch.full((real.shape[0],), float("inf"), dtype=F64, device=real.device)
    for start in range(0, fake.shape[0], chunk):
        stop = min(start + chunk, fake.shape[0])
        dist = _distance_block(fake[start:stop], fake_sq[start:stop], real, real_sq)  # (fakes, reals)
        inside_real = dist < real_radii[None, :]
        fake_in_any[start:stop] = inside_real.any(dim=1)
        balls_per_fake[start:stop] = inside_real.sum(dim=1, dtype=F64)
        real_in_any |= (dist < fake_radii[start:stop, None]).any(dim=0)
        nearest_fake = torch.minimum(nearest_fake, dist.min(dim=0).values)
    return {
        "precision": float(fake_in_any.to(F64).mean()),
        "recall": float(real_in_any.to(F64).mean()),
        "density": float(balls_per_fake.mean() / k),
        "coverage": float((nearest_fake < real_radii).to(F64).mean()),
    }
