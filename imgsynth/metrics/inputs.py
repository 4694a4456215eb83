"""Checks shared by every metric: feature matrices are 2-D, finite, large enough and of equal width.

Metrics raise ``ValueError`` naming the argument and the problem instead of returning NaN, so a bad
feature file or an empty class can never slip into a results table as a number.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def as_features(x: Any, name: str, *, min_samples: int = 1, dtype: torch.dtype | None = None,
                device: torch.device | str | None = None) -> torch.Tensor:
    """Return ``x`` as a 2-D tensor (n, d), refusing anything a metric cannot use.

    Accepts tensors, numpy arrays and nested lists. ``min_samples`` is the fewest rows the metric can
    work with (two for a covariance, k+1 for k-nearest neighbours); ``dtype`` and ``device`` convert.
    """
    if isinstance(x, np.ndarray) or not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(np.asarray(x))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name}: cannot read features as a numeric matrix ({exc})") from exc
    if x.dim() != 2:
        raise ValueError(f"{name}: features must be a 2-D matrix (samples, dims), got shape {tuple(x.shape)}")
    n, d = x.shape
    if d == 0:
        raise ValueError(f"{name}: features have zero dimensions")
    if n < min_samples:
        what = "no samples" if n == 0 else f"only {n} sample{'s' if n != 1 else ''}"
        raise ValueError(f"{name}: {what}; this metric needs at least {min_samples}")
    if not (x.is_floating_point() or x.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
        raise ValueError(f"{name}: features must be real numbers, got dtype {x.dtype}")
    if x.is_floating_point():
        bad = ~torch.isfinite(x)
        if bool(bad.any()):
            rows = torch.nonzero(bad.any(dim=1)).flatten()
            kinds = "NaN" if bool(torch.isnan(x).any()) else "inf"
            raise ValueError(f"{name}: {kinds} in {len(rows)} of {n} feature rows (first at row {int(rows[0])}); "
                             "the extractor or the images are broken")
    if dtype is not None or device is not None:
        x = x.to(dtype=dtype or x.dtype, device=device or x.device)
    return x


def same_width(a: torch.Tensor, b: torch.Tensor, names: tuple[str, str] = ("a", "b")) -> None:
    """Raise if two feature matrices do not live in the same space."""
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {names[0]} has {a.shape[1]}, {names[1]} has {b.shape[1]} "
                         "(were they made by the same extractor?)")



def unit_rows(x: torch.Tensor, name: str) -> torch.Tensor:
    """Rows scaled to unit L2 norm (for cosine similarities); a zero row has no direction and is an error."""
    norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    zero = norms.squeeze(1) == 0
    if bool(zero.any()):
        first = int(torch.nonzero(zero)[0])
        raise ValueError(f"{name}: {int(zero.sum())} embedding rows have zero norm (first at row {first}); "
                         "a cosine similarity is undefined for them")
    return x / norms
