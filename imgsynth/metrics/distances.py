"""Distances between two sets of features: Fréchet distance (FID), KID and CMMD.

All arithmetic runs in float64 on the device the features are on (CPU or GPU); results are Python
floats. Every function checks its inputs (see ``inputs.py``) and raises instead of returning NaN.
Features are read in blocks of rows (``blocks.py``): only a block at a time is converted to float64, so
50,000 × 2048 sets need no float64 copy; a set in one block gives the one-shot formulas bit for bit.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

import numpy as np
import torch

from imgsynth.notes import Note
from imgsynth.metrics.blocks import block_count, block_rows, progress_bar, row_blocks
from imgsynth.metrics.inputs import as_features, same_width

F64 = torch.float64


class BiasedEstimateWarning(Note):
    """A metric was computed from fewer samples than it needs to be unbiased (e.g. FD with n ≤ d)."""


# --------------------------------------------------------------------------------------------- Fréchet

def _float64_buffer(x: torch.Tensor, rows: int) -> torch.Tensor:
    """One float64 block that every block of ``x`` is copied into in turn.

    Copying into a reused buffer and then working in float64 is several times faster than torch's
    mixed-dtype kernels (``sum(dtype=float64)``, float32 − float64), and a fresh 64 MiB allocation per block
    would be page-faulted in again each time. The values are those of ``x.to(float64)``: the copy is exact.
    """
    return torch.empty((min(rows, x.shape[0]), x.shape[1]), dtype=F64, device=x.device)


def _mean(x: torch.Tensor, rows: int, bar: Any) -> torch.Tensor:
    """Column means in float64, summed block by block (one block, on the CPU: exactly
    ``x.to(float64).mean(dim=0)``)."""
    buffer = _float64_buffer(x, rows)
    total = None
    for block in row_blocks(x.shape[0], rows):
        part = buffer[:block.stop - block.start].copy_(x[block]).sum(dim=0)
        total = part if total is None else total.add_(part)
        bar.update(1)
    assert total is not None  # as_features guaranteed rows
    return total.div_(x.shape[0])  # torch's CPU mean is this: a sum divided by n


def _scatter(x: torch.Tensor, mu: torch.Tensor, rows: int, bar: Any) -> torch.Tensor:
    """Σ (xᵢ − μ)(xᵢ − μ)ᵀ in float64, one GEMM per block of centred rows accumulated into one d × d matrix."""
    buffer = _float64_buffer(x, rows)
    total = None
    for block in row_blocks(x.shape[0], rows):
        centred = buffer[:block.stop - block.start].copy_(x[block]).sub_(mu)
        if total is None:
            total = centred.mT @ centred
        else:
            total.addmm_(centred.mT, centred)
        bar.update(1)
    assert total is not None
    return total


def feature_statistics(x: Any, name: str = "features", *, block: int | None = None,
                       progress: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased covariance (divisor n − 1, as numpy.cov and pytorch-fid) in float64.

    Two passes over ``block`` rows at a time (default: 64 MiB of float64 rows): the mean, then the
    scatter matrix of rows centred on it, accumulated in float64. Memory is the features plus one float64
    block and the d × d result; a set of at most ``block`` rows gives exactly the one-shot formula.
    """
    x = as_features(x, name, min_samples=2)
    rows = block_rows(x.shape[1], block)
    with progress_bar(2 * block_count(x.shape[0], rows), f"statistics of {name}", progress) as bar:
        mu = _mean(x, rows, bar)
        sigma = _scatter(x, mu, rows, bar) / (x.shape[0] - 1)
    return mu, sigma


def trace_sqrt_product(sigma1: torch.Tensor, sigma2: torch.Tensor) -> torch.Tensor:
    """tr(sqrtm(Σ₁Σ₂)) for symmetric PSD Σ₁, Σ₂, exactly and without complex numbers.

    Σ₁Σ₂ is similar to the symmetric PSD matrix M = Lᵀ Σ₂ L (Σ₁ = L Lᵀ), so its eigenvalues are real and
    non-negative and tr(sqrtm(Σ₁Σ₂)) = Σ √λᵢ(M). A Cholesky factor costs a fraction of scipy's Schur-based
    ``sqrtm``; when neither matrix is positive definite (rank-deficient covariances), the symmetric
    square root from an eigen-decomposition takes L's place (M = Σ₁^½ Σ₂ Σ₁^½). Round-off can leave
    eigenvalues a hair below zero; they are clamped at 0.
    """
    sigma1, sigma2 = sigma1.to(F64), sigma2.to(F64)
    for first, second in ((sigma1, sigma2), (sigma2, sigma1)):
        factor, info = torch.linalg.cholesky_ex(first)
        if int(info) == 0:
            m = factor.mT @ second @ factor
            break
    else:
        values, vectors = torch.linalg.eigh(sigma1)
        root = (vectors * values.clamp_min(0).sqrt()) @ vectors.mT
        m = root @ sigma2 @ root
    m = (m + m.mT) / 2  # symmetric up to round-off; eigvalsh reads one triangle only
    return torch.linalg.eigvalsh(m).clamp_min(0).sqrt().sum()


def _as_float64(value: Any, name: str, device: torch.device | None = None) -> torch.Tensor:
    tensor = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
    tensor = tensor.to(dtype=F64, device=device if device is not None else tensor.device)
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} contains NaN or inf")
    return tensor


def frechet_distance_from_statistics(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any) -> float:
    """Fréchet distance between N(μ₁, Σ₁) and N(μ₂, Σ₂): ‖μ₁−μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁Σ₂)^½).

    This is the quantity pytorch-fid's ``calculate_frechet_distance`` returns (FID when the statistics
    come from Inception pool features), computed through ``trace_sqrt_product``. Covariances must be
    symmetric (to 1e-8 relative); a non-symmetric matrix is an error, not silently symmetrised.
    """
    mu1 = _as_float64(mu1, "mu1")
    sigma1, mu2, sigma2 = (_as_float64(v, n, mu1.device) for v, n in ((sigma1, "sigma1"), (mu2, "mu2"),
                                                                       (sigma2, "sigma2")))
    if mu1.dim() != 1 or mu2.dim() != 1:
        raise ValueError(f"means must be vectors, got shapes {tuple(mu1.shape)} and {tuple(mu2.shape)}")
    d = mu1.shape[0]
    if mu2.shape[0] != d or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"statistics do not match: mu1 {tuple(mu1.shape)}, sigma1 {tuple(sigma1.shape)}, "
                         f"mu2 {tuple(mu2.shape)}, sigma2 {tuple(sigma2.shape)}")
    for name, sigma in (("sigma1", sigma1), ("sigma2", sigma2)):
        asymmetry = float((sigma - sigma.mT).abs().max())
        if asymmetry > 1e-8 * max(float(sigma.abs().max()), 1e-300):
            raise ValueError(f"{name} is not symmetric (max |Σ − Σᵀ| = {asymmetry:.3g}); is it a covariance?")
    value = ((mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace()
             - 2 * trace_sqrt_product(sigma1, sigma2))
    return max(float(value), 0.0)  # ≥ 0 exactly; round-off may leave -1e-13 for equal inputs


def frechet_distance(a: Any, b: Any, method: str = "auto", *, block: int | None = None,
                     progress: bool | None = None) -> float:
    """Fréchet distance between two feature sets (rows are samples), or between two (mu, sigma) pairs.

    ``method``: "covariance" works on the d × d covariances (Cholesky + symmetric eigenvalues);
    "cross_gram" uses tr((Σ₁Σ₂)^½) = ‖A Bᵀ‖_* (nuclear norm), with A, B the centred feature matrices
    scaled by 1/√(n−1): singular values of an n_a × n_b matrix, which is exact and far cheaper when a set
    has fewer samples than dimensions. "auto" picks "cross_gram" when the smaller set has n ≤ d.

    Features are read ``block`` rows at a time (see ``feature_statistics``), so memory is the features
    plus a few float64 blocks and d × d matrices ("cross_gram" also holds its n_a × n_b float64 matrix);
    ``progress`` shows a bar (None: on a terminal, once the work has run 2 s) over the blocks.

    With n ≤ d the sample covariance is rank-deficient and the estimate is strongly biased upwards
    (FD's bias falls like 1/n); a ``BiasedEstimateWarning`` says so, but the value is exact for the
    samples given — never NaN or complex.
    """
    if isinstance(a, tuple) and isinstance(b, tuple):
        return frechet_distance_from_statistics(*a, *b)
    a = as_features(a, "a", min_samples=2)
    b = as_features(b, "b", min_samples=2, device=a.device)
    same_width(a, b)
    if method not in ("auto", "covariance", "cross_gram"):
        raise ValueError(f"method must be 'auto', 'covariance' or 'cross_gram', got {method!r}")
    (n_a, d), n_b = a.shape, b.shape[0]
    if min(n_a, n_b) <= d:
        warnings.warn(f"Fréchet distance from {min(n_a, n_b)} samples in {d} dimensions: the covariance is "
                      "rank-deficient, so the estimate is biased upwards; compare only values with equal n",
                      BiasedEstimateWarning, stacklevel=2)
    if method == "auto":
        method = "cross_gram" if min(n_a, n_b) <= d else "covariance"
    rows = block_rows(d, block)
    blocks_a, blocks_b = block_count(n_a, rows), block_count(n_b, rows)
    second_pass = blocks_a + blocks_b if method == "covariance" else block_count(max(n_a, n_b), rows)
    with progress_bar(blocks_a + blocks_b + second_pass, "fid", progress) as bar:
        mu_a, mu_b = _mean(a, rows, bar), _mean(b, rows, bar)
        if method == "covariance":
            sigma_a = _scatter(a, mu_a, rows, bar) / (n_a - 1)
            sigma_b = _scatter(b, mu_b, rows, bar) / (n_b - 1)
            bar.set_postfix_str("eigenvalues")
            return frechet_distance_from_statistics(mu_a, sigma_a, mu_b, sigma_b)
        squares_a, squares_b, trace_sqrt = _cross_gram_terms(a, mu_a, b, mu_b, rows, bar)
    value = (mu_a - mu_b).square().sum() + squares_a + squares_b - 2 * trace_sqrt
    return max(float(value), 0.0)


def _cross_gram_terms(a: torch.Tensor, mu_a: torch.Tensor, b: torch.Tensor, mu_b: torch.Tensor, rows: int,
                      bar: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """tr Σ_a, tr Σ_b and ‖A Bᵀ‖_* for "cross_gram", with A Bᵀ built one block of a set at a time.

    The smaller set is held whole in float64 (it has at most d rows here); the other is centred and scaled
    block by block, so no float64 copy of it exists at once.
    """
    scale_a, scale_b = math.sqrt(a.shape[0] - 1), math.sqrt(b.shape[0] - 1)
    whole_a = a.shape[0] <= b.shape[0]
    held = (a.to(F64) - mu_a) / scale_a if whole_a else (b.to(F64) - mu_b) / scale_b
    streamed, mu, scale = (b, mu_b, scale_b) if whole_a else (a, mu_a, scale_a)
    cross = torch.empty((a.shape[0], b.shape[0]), dtype=F64, device=a.device)
    streamed_squares = None
    for block in row_blocks(streamed.shape[0], rows):
        scaled = (streamed[block].to(F64) - mu) / scale
        if whole_a:
            cross[:, block] = held @ scaled.mT
        else:
            cross[block] = scaled @ held.mT
        part = scaled.square().sum()
        streamed_squares = part if streamed_squares is None else streamed_squares + part
        bar.update(1)
    assert streamed_squares is not None
    held_squares = held.square().sum()
    trace_sqrt = torch.linalg.svdvals(cross).sum()
    return (held_squares, streamed_squares, trace_sqrt) if whole_a else (streamed_squares, held_squares, trace_sqrt)


# --------------------------------------------------------------------------------------------- KID

def _subset_indices(n_a: int, n_b: int, subsets: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    # Same generator and call order as torch-fidelity (and Bińkowski et al.'s code), so a given seed
    # draws the same subsets there and here.
    rng = np.random.RandomState(seed)
    rows_a, rows_b = [], []
    for _ in range(subsets):
        rows_a.append(rng.choice(n_a, size, replace=False))
        rows_b.append(rng.choice(n_b, size, replace=False))
    return np.stack(rows_a), np.stack(rows_b)


def _cubic_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """k(x, y) = (xᵀy / d + 1)³, batched over leading dims."""
    base = torch.baddbmm(torch.ones((), dtype=x.dtype, device=x.device), x, y.mT, alpha=1.0 / x.shape[-1])
    return base * base * base


def unbiased_mmd2(k_xx: torch.Tensor, k_yy: torch.Tensor, k_xy: torch.Tensor) -> torch.Tensor:
    """MMD² as in Bińkowski et al. (2018) ``mmd2(..., mmd_est='unbiased')``, batched over leading dims.

    Within-set kernel means drop the diagonal (k(x, x) terms), the cross term keeps all m² pairs:
    (Σ_{i≠j} k(xᵢ,xⱼ) + Σ_{i≠j} k(yᵢ,yⱼ)) / (m(m−1)) − 2 Σ_{i,j} k(xᵢ,yⱼ) / m². torch-fidelity and
    clean-fid use this same estimator; it can be slightly negative when the sets match.
    """
    m = k_xx.shape[-1]
    off_xx = k_xx.sum(dim=(-2, -1)) - k_xx.diagonal(dim1=-2, dim2=-1).sum(dim=-1)
    off_yy = k_yy.sum(dim=(-2, -1)) - k_yy.diagonal(dim1=-2, dim2=-1).sum(dim=-1)
    return (off_xx + off_yy) / (m * (m - 1)) - 2 * k_xy.sum(dim=(-2, -1)) / (m * m)


def kid_subset_values(a: Any, b: Any, subsets: int = 100, subset_size: int = 1000, seed: int = 0,
                      batch: int = 8, *, progress: bool | None = None) -> torch.Tensor:
    """The per-subset MMD² values whose mean is KID (float64 tensor of length ``subsets``).

    Each subset draws ``m = min(subset_size, n_a, n_b)`` rows of each set without replacement; the kernel
    is the cubic polynomial k(x, y) = (xᵀy / d + 1)³. ``batch`` subsets are evaluated at once: only their
    rows are converted to float64, so memory is 2·batch·m·d + 3·batch·m² doubles besides the features,
    whatever the sets' sizes. ``progress`` shows a bar over the subsets (None: on a terminal, once the
    work has run 2 s).
    """
    a = as_features(a, "a", min_samples=2)
    b = as_features(b, "b", min_samples=2, device=a.device)
    same_width(a, b)
    if subsets < 1:
        raise ValueError(f"KID needs at least one subset, got subsets={subsets}")
    if subset_size < 2:
        raise ValueError(f"KID subset_size must be at least 2, got {subset_size}")
    m = min(subset_size, a.shape[0], b.shape[0])
    rows_a, rows_b = _subset_indices(a.shape[0], b.shape[0], subsets, m, seed)
    rows_a = torch.from_numpy(rows_a).to(a.device)
    rows_b = torch.from_numpy(rows_b).to(a.device)
    values = []
    with progress_bar(subsets, "kid", progress, unit="subset") as bar:
        for start in range(0, subsets, batch):
            x, y = a[rows_a[start:start + batch]].to(F64), b[rows_b[start:start + batch]].to(F64)
            values.append(unbiased_mmd2(_cubic_kernel(x, x), _cubic_kernel(y, y), _cubic_kernel(x, y)))
            bar.update(x.shape[0])
    return torch.cat(values)


def kid(a: Any, b: Any, subsets: int = 100, subset_size: int = 1000, seed: int = 0, *,
        progress: bool | None = None) -> float:
    """Kernel Inception Distance (Bińkowski et al. 2018): the mean of ``kid_subset_values``.

    Defaults follow torch-fidelity and clean-fid (100 subsets of 1000); with fewer samples the subset
    size shrinks to ``min(n_a, n_b)``. Given the same seed the subsets equal torch-fidelity's
    (``np.random.RandomState(seed).choice``), so values agree with its ``kernel_inception_distance_mean``.
    """
    return float(kid_subset_values(a, b, subsets, subset_size, seed, progress=progress).mean())


# --------------------------------------------------------------------------------------------- CMMD

CMMD_SIGMA = 10.0
CMMD_SCALE = 1000.0


def _rbf_kernel_mean(x: torch.Tensor, y: torch.Tensor, gamma: float, chunk: int, bar: Any) -> torch.Tensor:
    """Mean of exp(−γ‖xᵢ−yⱼ‖²) over all pairs, in ``chunk`` × ``chunk`` blocks converted to float64 one at a
    time, so memory stays O(chunk²) besides the features."""
    y_sq = torch.cat([y[block].to(F64).square().sum(dim=1) for block in row_blocks(y.shape[0], chunk)])
    total = torch.zeros((), dtype=F64, device=x.device)
    for rows in row_blocks(x.shape[0], chunk):
        block = x[rows].to(F64)
        block_sq = block.square().sum(dim=1, keepdim=True)
        for columns in row_blocks(y.shape[0], chunk):
            # (‖x‖² + ‖y‖²) − 2 x·y, in place: the same roundings as written out, a third of the memory
            sq = (block @ y[columns].to(F64).mT).mul_(-2).add_(block_sq + y_sq[columns]).clamp_min_(0)
            total += sq.mul_(-gamma).exp_().sum()
            bar.update(1)
    return total / (x.shape[0] * y.shape[0])


def cmmd(a: Any, b: Any, sigma: float = CMMD_SIGMA, scale: float = CMMD_SCALE, chunk: int = 4096, *,
         progress: bool | None = None) -> float:
    """CMMD (Jayasumana et al. 2024): scale · MMD² with a Gaussian RBF kernel on CLIP image embeddings.

    Follows google-research/cmmd ``distance.mmd`` exactly: k(x, y) = exp(−‖x−y‖² / (2σ²)) with σ = 10,
    the biased (minimum-variance, V-statistic) estimator mean(K_xx) + mean(K_yy) − 2 mean(K_xy) with the
    diagonals kept, scaled by 1000. The reference feeds unit-norm CLIP embeddings (scenic's CLIP
    normalises them); the ``clip:`` extractor here returns unit-norm embeddings too. Kernel sums run over
    ``chunk`` × ``chunk`` blocks (``progress``: a bar over them; None: on a terminal after 2 s).
    """
    a = as_features(a, "a", min_samples=2)
    b = as_features(b, "b", min_samples=2, device=a.device)
    same_width(a, b)
    if not sigma > 0:
        raise ValueError(f"CMMD sigma must be positive, got {sigma}")
    if chunk < 1:
        raise ValueError(f"chunk must be positive, got {chunk}")
    gamma = 1.0 / (2.0 * sigma**2)
    blocks_a, blocks_b = block_count(a.shape[0], chunk), block_count(b.shape[0], chunk)
    with progress_bar(blocks_a**2 + blocks_b**2 + blocks_a * blocks_b, "cmmd", progress) as bar:
        value = (_rbf_kernel_mean(a, a, gamma, chunk, bar) + _rbf_kernel_mean(b, b, gamma, chunk, bar)
                 - 2 * _rbf_kernel_mean(a, b, gamma, chunk, bar))
    return float(scale * value)


__all__: Sequence[str] = ("BiasedEstimateWarning", "feature_statistics", "trace_sqrt_product",
                          "frechet_distance_from_statistics", "frechet_distance", "unbiased_mmd2",
                          "kid_subset_values", "kid", "cmmd", "CMMD_SIGMA", "CMMD_SCALE")
