"""Precision, recall, density and coverage (Naeem et al. 2020), exact, with memory bounded by a row chunk.

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

How it is fast and still exact: squared distances come from float32 GEMMs of augmented rows
``[−2x, ‖x‖², 1] · [y, 1, ‖y‖²]`` on features centred on the real mean, in row blocks (the two
within-set matrices are symmetric, so only their upper block triangle is computed, with a streaming
top-k). A comparison is trusted only when it clears its threshold by more than a rigorous bound on
that GEMM's round-off, γ = (2(d + 2) + 8)·u·(max‖x‖² + max‖y‖²) with u = 2⁻²⁴; the few comparisons
inside the band, and every k-NN radius, are decided with float64 squared distances Σ(xᵢ − yᵢ)² taken
directly from the input rows. These give a copied image exactly the distance of its original, so ties
fall the same way every time. ``prdc`` leaves such ties to round-off; elsewhere results are identical.

Memory: ``prdc`` builds three full n × n float32 distance matrices plus sorting buffers (about 14 bytes
per pair at its peak: 1.3 GiB at 10,000, 35 GB at 50,000). This keeps the features themselves, O(n)
vectors (k-NN candidates, squared norms, flags, counts) and a few ``chunk × chunk`` blocks: every product
is a block of rows of one set times a block of rows of the other, each block centred and rounded to
float32 when it is used, so no copy of a whole set is ever made. ``progress`` shows a bar over the block
products (None: on a terminal, once the work has run 2 s).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from imgsynth.compute import highest_matmul_precision
from imgsynth.metrics.blocks import block_count, progress_bar
from imgsynth.metrics.inputs import as_features, same_width

F64 = torch.float64
F32 = torch.float32
DEFAULT_CHUNK = 2048
EXACT_BLOCK = 1 << 19  # elements per direct-difference block (4 MiB of float64: stays in cache)


def _exact_squared(a: torch.Tensor, rows_a: torch.Tensor, b: torch.Tensor, rows_b: torch.Tensor) -> torch.Tensor:
    """Σ(a[i] − b[j])² in float64 for the index pairs (rows_a, rows_b), gathered block by block.

    Equal vectors give exactly 0 and equal pairs equal values, whichever set a row came from.
    """
    step = max(1, EXACT_BLOCK // a.shape[1])
    out = torch.empty(len(rows_a), dtype=F64, device=a.device)
    for s in range(0, len(rows_a), step):
        difference = a[rows_a[s:s + step]].to(F64)
        difference.sub_(b[rows_b[s:s + step]])
        out[s:s + step] = difference.mul_(difference).sum(dim=1)
    return out


class _Points:
    """One set: the caller's rows (for exact distances) and their float32 rounding after centring on ``c``.

    The rounded rows are made block by block when a product needs them (``augmented``); only their
    squared norms ‖x − c‖² (float64, from the rounded values) are kept for every row.
    """

    def __init__(self, raw: torch.Tensor, centre: torch.Tensor, chunk: int) -> None:
        self.raw, self.centre = raw, centre
        self.sq = torch.empty(raw.shape[0], dtype=F64, device=raw.device)
        for start in range(0, raw.shape[0], chunk):
            self.sq[start:start + chunk] = self._rounded(start, start + chunk).to(F64).square().sum(dim=1)

    def __len__(self) -> int:
        return self.raw.shape[0]

    def _rounded(self, start: int, stop: int) -> torch.Tensor:
        return (self.raw[start:stop].to(F64) - self.centre).to(F32)  # centred in float64, then rounded

    def augmented(self, start: int, stop: int) -> torch.Tensor:
        """``[x − c, 1, ‖x − c‖²]`` (float32) for rows start:stop."""
        rounded = self._rounded(start, stop)
        d = rounded.shape[1]
        out = torch.empty(rounded.shape[0], d + 2, dtype=F32, device=rounded.device)
        out[:, :d] = rounded
        out[:, d] = 1
        out[:, d + 1] = self.sq[start:stop].to(F32)
        return out

    def left(self, start: int, stop: int) -> torch.Tensor:
        """``[−2(x − c), ‖x − c‖², 1]`` for rows start:stop: times ``augmented`` rows of another block it
        gives ‖x − y‖² up to float32 round-off."""
        block = self.augmented(start, stop)
        d = block.shape[1] - 2
        return torch.cat([-2 * block[:, :d], block[:, d + 1:], block[:, d:d + 1]], dim=1)


def _band(d: int, *square_norm_maxima: float) -> float:
    """Rigorous bound on |float32 GEMM expansion − true squared distance| (see the module docstring)."""
    unit = 2.0 ** -24
    return (2 * (d + 2) + 8) * unit * sum(square_norm_maxima)


def _merge_topk(values: torch.Tensor, indices: torch.Tensor, new_values: torch.Tensor, new_indices: torch.Tensor,
                m: int) -> tuple[torch.Tensor, torch.Tensor]:
    merged_values = torch.cat([values, new_values], dim=1)
    merged_indices = torch.cat([indices, new_indices], dim=1)
    top, where = torch.topk(merged_values, m, dim=1, largest=False, sorted=True)
    return top, torch.gather(merged_indices, 1, where)


def _nearest_candidates(points: _Points, m: int, chunk: int, bar: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The m smallest approximate squared distances per row (self included at 0) and their indices.

    Only blocks (I, J) with J ≥ I are multiplied; block (I, J) serves the rows of I and, transposed,
    the rows of J, each merged into a running top-m.
    """
    n, device = len(points), points.raw.device
    values = torch.full((n, m), float("inf"), dtype=F32, device=device)
    indices = torch.zeros((n, m), dtype=torch.int64, device=device)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        left = points.left(start, stop)
        for other in range(start, n, chunk):
            other_stop = min(other + chunk, n)
            sq = left @ points.augmented(other, other_stop).mT
            columns = torch.arange(other, other_stop, device=device)
            if other == start:
                sq.fill_diagonal_(0)
            width = min(m, other_stop - other)
            top, where = torch.topk(sq, width, dim=1, largest=False)
            values[start:stop], indices[start:stop] = _merge_topk(values[start:stop], indices[start:stop], top,
                                                                  columns[where], m)
            if other != start:
                rows = torch.arange(start, stop, device=device)
                top, where = torch.topk(sq, min(m, stop - start), dim=0, largest=False)
                values[other:other_stop], indices[other:other_stop] = _merge_topk(
                    values[other:other_stop], indices[other:other_stop], top.mT, rows[where].mT, m)
            bar.update(1)
    return values, indices


def _knn_radii_squared(points: _Points, k: int, chunk: int, bar: Any) -> torch.Tensor:
    """Exact (float64) squared distance from each row to its k-th nearest other row.

    The float32 expansion ranks m = 2(k+1) candidates. Candidates more than two round-off bands below
    the k-th are surely nearer, those more than two bands above surely farther; only the cluster in
    between (usually the k-th alone) gets direct distances, and the k-th value is read off them. A row
    whose cluster reaches the last candidate (more near-ties than candidates) is decided against every row.
    """
    n = len(points)
    if n <= k:
        raise ValueError(f"k-nearest-neighbour radii with k={k} need at least {k + 1} samples, got {n}")
    m = min(n, 2 * (k + 1))
    approx, nearest = _nearest_candidates(points, m, chunk, bar)
    approx = approx.to(F64)
    raw, device = points.raw, points.raw.device
    margin = 2 * _band(raw.shape[1], 2 * float(points.sq.max()))
    kth = approx[:, k:k + 1]
    surely_nearer = approx < kth - margin
    cluster = ~surely_nearer & (approx <= kth + margin)
    rows, slots = torch.nonzero(cluster, as_tuple=True)
    exact = torch.full((n, m), float("inf"), dtype=F64, device=device)
    exact[surely_nearer] = float("-inf")
    exact[rows, slots] = _exact_squared(raw, rows, raw, nearest[rows, slots])
    radii_sq = exact.sort(dim=1).values[:, k]
    if m < n:
        for row in torch.nonzero(cluster[:, -1]).flatten().tolist():
            everyone = torch.arange(n, device=device)
            radii_sq[row] = _exact_squared(raw, torch.full_like(everyone, row), raw, everyone).sort().values[k]
    return radii_sq


def _triangle(n: int, chunk: int) -> int:
    """Block products of one set's k-NN search (the upper block triangle)."""
    blocks = block_count(n, chunk)
    return blocks * (blocks + 1) // 2


def knn_radii(x: Any, k: int, chunk: int = DEFAULT_CHUNK, *, progress: bool | None = None) -> torch.Tensor:
    """Distance from each row of ``x`` to its k-th nearest other row (float64), ``chunk`` rows at a time."""
    x = as_features(x, "x", min_samples=1)
    with highest_matmul_precision(), progress_bar(_triangle(x.shape[0], chunk), "k-NN radii", progress) as bar:
        return _knn_radii_squared(_Points(x, x.mean(dim=0, dtype=F64), chunk), k, chunk, bar).sqrt()


@dataclass(frozen=True)
class _Threshold:
    """Squared radii for ``distance < radius`` tests on float32 blocks: exact values plus float32 bounds.

    ``low``/``high`` are float32 and widened by the float32 rounding of the thresholds themselves, so
    ``sq < low`` proves inside and ``sq >= high`` proves outside; anything between is decided exactly.
    """

    exact: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor

    @classmethod
    def around(cls, exact: torch.Tensor, band: float) -> "_Threshold":
        widened = band + 2.0 ** -23 * float(exact.abs().max())
        return cls(exact, (exact - widened).to(F32), (exact + widened).to(F32))

    def view(self, shape: tuple[int, ...], index: slice = slice(None)) -> "_Threshold":
        return _Threshold(*(t[index].reshape(shape) for t in (self.exact, self.low, self.high)))


def _strictly_inside(sq: torch.Tensor, threshold: _Threshold, rows: torch.Tensor,
                     columns: torch.Tensor) -> torch.Tensor:
    """``distance < radius`` for a block (rows × columns of raw features); near-ties decided exactly."""
    inside = sq < threshold.low
    near = (sq < threshold.high) ^ inside
    if bool(near.any()):
        i, j = torch.nonzero(near, as_tuple=True)
        inside[i, j] = _exact_squared(rows, i, columns, j) < threshold.exact.expand_as(sq)[i, j]
    return inside


def precision_recall_density_coverage(real: Any, fake: Any, k: int = 5, chunk: int = DEFAULT_CHUNK, *,
                                      progress: bool | None = None) -> dict[str, float]:
    """Precision, recall, density and coverage of ``fake`` against ``real`` features (k nearest neighbours).

    Returns ``{"precision", "recall", "density", "coverage"}`` as floats; both sets need at least k+1
    samples. Runs on the features' device, in ``chunk`` × ``chunk`` blocks of distances (memory: the
    features plus O(n) vectors and a few blocks); ``progress`` shows a bar over the blocks (None: on a
    terminal, once the work has run 2 s).
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if chunk < 1:
        raise ValueError(f"chunk must be positive, got {chunk}")
    real = as_features(real, "real", min_samples=k + 1)
    fake = as_features(fake, "fake", min_samples=k + 1, device=real.device)
    same_width(real, fake, ("real", "fake"))
    if not real.is_floating_point():
        real = real.to(F64)
    if not fake.is_floating_point():
        fake = fake.to(F64)
    n_real, n_fake, device = real.shape[0], fake.shape[0], real.device
    cross = block_count(n_real, chunk) * block_count(n_fake, chunk)
    total = _triangle(n_real, chunk) + _triangle(n_fake, chunk) + cross
    with highest_matmul_precision(), progress_bar(total, "prdc", progress) as bar:
        # Distances do not change under a common shift; centring on the real mean shrinks the norms the
        # round-off scales with (Inception features, e.g., are all positive with a large mean).
        centre = real.mean(dim=0, dtype=F64)
        real_points, fake_points = _Points(real, centre, chunk), _Points(fake, centre, chunk)
        real_radii_sq = _knn_radii_squared(real_points, k, chunk, bar)
        fake_radii_sq = _knn_radii_squared(fake_points, k, chunk, bar)
        band = _band(real.shape[1], float(real_points.sq.max()), float(fake_points.sq.max()))

        fake_in_real_ball = torch.zeros(n_fake, dtype=torch.bool, device=device)
        real_balls_per_fake = torch.zeros(n_fake, dtype=torch.int64, device=device)
        real_in_fake_ball = torch.zeros(n_real, dtype=torch.bool, device=device)
        real_ball_has_fake = torch.zeros(n_real, dtype=torch.bool, device=device)
        real_balls = _Threshold.around(real_radii_sq, band)
        fake_balls = _Threshold.around(fake_radii_sq, band)
        for start in range(0, n_fake, chunk):
            stop = min(start + chunk, n_fake)
            block, left = fake[start:stop], fake_points.left(start, stop)
            own_balls = fake_balls.view((stop - start, 1), slice(start, stop))
            for other in range(0, n_real, chunk):
                other_stop = min(other + chunk, n_real)
                reals = real[other:other_stop]
                sq = left @ real_points.augmented(other, other_stop).mT  # float32 (fakes in block, reals in block)
                in_real = _strictly_inside(sq, real_balls.view((1, other_stop - other), slice(other, other_stop)),
                                           block, reals)
                fake_in_real_ball[start:stop] |= in_real.any(dim=1)
                real_balls_per_fake[start:stop] += torch.count_nonzero(in_real, dim=1)
                real_ball_has_fake[other:other_stop] |= in_real.any(dim=0)
                del in_real
                in_fake = _strictly_inside(sq, own_balls, block, reals)
                real_in_fake_ball[other:other_stop] |= in_fake.any(dim=0)
                bar.update(1)
    return {
        "precision": float(fake_in_real_ball.to(F64).mean()),
        "recall": float(real_in_fake_ball.to(F64).mean()),
        "density": float(real_balls_per_fake.to(F64).mean() / k),
        "coverage": float(real_ball_has_fake.to(F64).mean()),
    }
