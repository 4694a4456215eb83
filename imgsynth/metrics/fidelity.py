"""Precision, recall, density and coverage (Naeem et al. 2020) with memory bounded by a row chunk.

Conventions follow the authors' code (the ``prdc`` package, clovaai/generative-evaluation-prdc):

* Euclidean distances; a sample's k-NN radius is its distance to the k-th nearest *other* sample of
  its own set, taken as the (k+1)-th smallest distance with itself included (so an exact duplicate
  counts as a neighbour at distance 0, as in ``prdc``).
* Membership in a k-NN ball is strict: ``distance < radius``. torch-fidelity's precision/recall uses
  ``<=``; the two agree except on exact ties, which duplicated images create (a generated image that
  copies a reference image sits exactly on the boundary of every ball that image bounds).
* precision = fraction of fake samples inside some real ball; recall = fraction of real samples
  inside some fake ball; density = (1/k) · mean over fakes of the number of real balls containing
  it; coverage = fraction of real samples whose nearest fake lies inside their own ball (equivalently:
  with some fake inside their ball).

Exactness: distances come from one matrix product (‖x‖² + ‖y‖² − 2xᵀy), whose round-off would make
such ties fall either way depending on blocking. So every comparison within a relative 1e-10 band of
its threshold, and every k-NN radius, is re-decided with squared distances computed directly as
Σ(xᵢ − yᵢ)², which give a copied image exactly the distance of its original. ``prdc`` leaves these
ties to round-off; elsewhere the results are identical.

Memory: where ``prdc`` builds three full n × n distance matrices (plus sorting buffers), this streams
blocks of ``chunk`` rows: peak extra memory is a few ``chunk × max(n_real, n_fake)`` float64 buffers.
"""

from __future__ import annotations

from typing import Any

import torch

from imgsynth.metrics.inputs import as_features, same_width

F64 = torch.float64
DEFAULT_CHUNK = 1024
# Squared distances from the matrix-product expansion are trusted outside ±BAND·(‖x‖² + ‖y‖²) of a
# threshold; float64 round-off is ~1e-13 of that scale even at d = 2048, so the band is wide.
BAND = 1e-10
EXACT_BLOCK = 1 << 22  # elements per direct-difference block (32 MiB of float64)


class _Points:
    """One set's float64 rows, centred, stored as the left part of ``augmented = [x, 1, ‖x‖²]``.

    With a block's left operand ``[−2x, ‖x‖², 1]``, one GEMM yields ‖x‖² + ‖y‖² − 2xᵀy: squared
    distances with no broadcast passes over the n × chunk result, and no second copy of the features.
    """

    def __init__(self, x: torch.Tensor, centre: torch.Tensor) -> None:
        n, d = x.shape
        self.augmented = torch.empty(n, d + 2, dtype=F64, device=x.device)
        self.x = self.augmented[:, :d]
        self.x.copy_(x).sub_(centre)
        self.sq = self.x.square().sum(dim=1)
        self.augmented[:, d] = 1
        self.augmented[:, d + 1] = self.sq

    def __len__(self) -> int:
        return self.x.shape[0]

    def squared_distances(self, start: int, stop: int, other: "_Points") -> torch.Tensor:
        """‖x − y‖² for rows start:stop of this set × all rows of ``other`` (tiny negatives possible near 0)."""
        block = self.x[start:stop]
        left = torch.cat([-2 * block, self.sq[start:stop, None], torch.ones_like(self.sq[start:stop, None])], dim=1)
        return left @ other.augmented.mT


def _exact_squared(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Σ(aᵢ − bᵢ)² along the last dim, in blocks: equal vectors give exactly 0, equal pairs equal values."""
    per_row = max(1, torch.Size(torch.broadcast_shapes(a.shape, b.shape)[1:]).numel())
    rows = max(1, EXACT_BLOCK // per_row)
    return torch.cat([(a[s:s + rows] - b[s:s + rows]).square().sum(dim=-1) for s in range(0, a.shape[0], rows)])


def _knn_radii_squared(points: _Points, k: int, chunk: int) -> torch.Tensor:
    """Exact squared distance from each row to its k-th nearest other row (self included as the 0-th).

    The expansion ranks neighbours; the k-th one's distance is then recomputed directly. Where the
    ranking is not certain (neighbours within the round-off band of each other: duplicates, ties),
    all candidates are recomputed and sorted, and rows with more near-ties than candidates fall back
    to direct distances to every row.
    """
    n, x, x_sq = len(points), points.x, points.sq
    if n <= k:
        raise ValueError(f"k-nearest-neighbour radii with k={k} need at least {k + 1} samples, got {n}")
    candidates = min(n, 2 * (k + 1))
    radii_sq = torch.empty(n, dtype=F64, device=x.device)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        block = x[start:stop]
        sq = points.squared_distances(start, stop, points)
        sq[torch.arange(stop - start, device=x.device), torch.arange(start, stop, device=x.device)] = 0
        approx, nearest = torch.topk(sq, candidates, dim=1, largest=False, sorted=True)
        del sq
        band = BAND * (x_sq[start:stop] + x_sq.max())
        radii_sq[start:stop] = _exact_squared(block, x[nearest[:, k]])
        ambiguous = approx[:, k] - approx[:, k - 1] <= 2 * band
        if candidates > k + 1:
            ambiguous |= approx[:, k + 1] - approx[:, k] <= 2 * band
        else:
            ambiguous[:] = True
        rows = torch.nonzero(ambiguous).flatten()
        if len(rows):
            exact = _exact_squared(block[rows][:, None, :], x[nearest[rows]]).sort(dim=1).values
            radii_sq[start + rows] = exact[:, k]
            # A row outside the candidates has expansion distance ≥ approx[:, -1], so exact distance ≥
            # approx[:, -1] − band; if that still exceeds the k-th exact value the radius is settled.
            if candidates < n:
                unsettled = rows[approx[rows, -1] - band[rows] <= exact[:, k]]
                for row in unsettled.tolist():  # more near-ties than candidates: decide directly
                    radii_sq[start + row] = _exact_squared(x[start + row].expand_as(x), x).sort().values[k]
    return radii_sq


def knn_radii(x: Any, k: int, chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """Distance from each row of ``x`` to its k-th nearest other row, computed ``chunk`` rows at a time."""
    x = as_features(x, "x", min_samples=1)
    return _knn_radii_squared(_Points(x, x.mean(dim=0, dtype=F64)), k, chunk).sqrt()


def _strictly_inside(sq: torch.Tensor, threshold_sq: torch.Tensor, band: float, rows: torch.Tensor,
                     columns: torch.Tensor) -> torch.Tensor:
    """``distance < radius`` for a block (rows × columns); comparisons within ``band`` re-decided exactly."""
    inside = sq < threshold_sq - band
    near = (sq < threshold_sq + band) ^ inside
    if bool(near.any()):
        i, j = torch.nonzero(near, as_tuple=True)
        inside[i, j] = _exact_squared(rows[i], columns[j]) < threshold_sq.expand_as(sq)[i, j]
    return inside


def precision_recall_density_coverage(real: Any, fake: Any, k: int = 5,
                                      chunk: int = DEFAULT_CHUNK) -> dict[str, float]:
    """Precision, recall, density and coverage of ``fake`` against ``real`` features (k nearest neighbours).

    Returns ``{"precision", "recall", "density", "coverage"}`` as floats; both sets need at least k+1
    samples. One pass over fake row blocks computes every cross distance once.
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if chunk < 1:
        raise ValueError(f"chunk must be positive, got {chunk}")
    real = as_features(real, "real", min_samples=k + 1)
    fake = as_features(fake, "fake", min_samples=k + 1, device=real.device)
    same_width(real, fake, ("real", "fake"))
    # Distances do not change under a common shift; centring on the real mean shrinks the norms the
    # expansion's round-off scales with (Inception features, e.g., are all positive with a large mean).
    centre = real.mean(dim=0, dtype=F64)
    real_points, fake_points = _Points(real, centre), _Points(fake, centre)
    del real, fake  # the caller's tensors stay alive; only the float64 working copies are used below
    real_radii_sq = _knn_radii_squared(real_points, k, chunk)
    fake_radii_sq = _knn_radii_squared(fake_points, k, chunk)
    band = BAND * float(real_points.sq.max() + fake_points.sq.max())

    n_real, n_fake, device = len(real_points), len(fake_points), real_radii_sq.device
    fake_in_real_ball = torch.empty(n_fake, dtype=torch.bool, device=device)
    real_balls_per_fake = torch.empty(n_fake, dtype=torch.int64, device=device)
    real_in_fake_ball = torch.zeros(n_real, dtype=torch.bool, device=device)
    real_ball_has_fake = torch.zeros(n_real, dtype=torch.bool, device=device)
    for start in range(0, n_fake, chunk):
        stop = min(start + chunk, n_fake)
        block = fake_points.x[start:stop]
        sq = fake_points.squared_distances(start, stop, real_points)  # (fakes in block, reals)
        in_real = _strictly_inside(sq, real_radii_sq[None, :], band, block, real_points.x)
        fake_in_real_ball[start:stop] = in_real.any(dim=1)
        real_balls_per_fake[start:stop] = torch.count_nonzero(in_real, dim=1)
        real_ball_has_fake |= in_real.any(dim=0)
        del in_real
        in_fake = _strictly_inside(sq, fake_radii_sq[start:stop, None], band, block, real_points.x)
        real_in_fake_ball |= in_fake.any(dim=0)
    return {
        "precision": float(fake_in_real_ball.to(F64).mean()),
        "recall": float(real_in_fake_ball.to(F64).mean()),
        "density": float(real_balls_per_fake.to(F64).mean() / k),
        "coverage": float(real_ball_has_fake.to(F64).mean()),
    }
