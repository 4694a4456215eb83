"""An exact-theory generator: per class, a Gaussian kernel density estimate over the training images.

Sampling picks one training image of the class uniformly (its own seed decides which) and adds
independent N(0, h²) noise to every pixel, so one generation of ``replace`` maps a class's pixel variance
σ² to σ²·(n − 1)/n + h² in expectation (n images): a KDE refitted to its own samples spreads out by h² per
generation instead of collapsing, until clipping at 0 and 255 bounds it. ``bandwidth`` is h in pixel
levels; 0 picks Scott's rule per class, h = σ̂ · n^(−1/(d + 4)) (σ̂ the mean per-pixel standard deviation,
d the number of pixel values). A training set with a ``weight`` column draws each image with probability
w / Σw (stored as ``probabilities``), and Scott's rule uses the weighted spread and Kish's effective count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Mapping

import numpy as np

from imgsynth.pipelines.per_class import PerClassKind, check_shapes


@dataclass
class KdeOptions:
    """``bandwidth``: kernel standard deviation in pixel levels (0: Scott's rule per class); ``shard_size``:
    images per shard when sampling."""

    bandwidth: float = 0.0
    shard_size: int = 256

    def validate(self) -> KdeOptions:
        if not isinstance(self.bandwidth, (int, float)) or not math.isfinite(self.bandwidth) or self.bandwidth < 0:
            raise ValueError(f"bandwidth must be a finite number ≥ 0 (0: Scott's rule), got {self.bandwidth!r}")
        if not isinstance(self.shard_size, int) or self.shard_size < 1:
            raise ValueError(f"shard_size must be a whole number ≥ 1, got {self.shard_size!r}")
        return self


def scott_bandwidth(points: np.ndarray) -> float:
    """Scott's rule for a product Gaussian kernel: mean per-dimension standard deviation × n^(−1/(d + 4))."""
    n, d = points.shape
    return float(points.std(axis=0).mean() * n ** (-1.0 / (d + 4)))


def weighted_scott_bandwidth(points: np.ndarray, probabilities: np.ndarray) -> float:
    """Scott's rule for weighted points: the weighted per-dimension standard deviation, averaged, times
    n_eff^(−1/(d + 4)) with Kish's effective count n_eff = 1 / Σp²."""
    n_eff = 1.0 / float((probabilities ** 2).sum())
    mean = probabilities @ points
    std = np.sqrt(probabilities @ (points - mean) ** 2)
    return float(std.mean() * n_eff ** (-1.0 / (points.shape[1] + 4)))


class KdeKind(PerClassKind):
    """The ``kde`` generator kind (see the module docstring)."""

    name: ClassVar[str] = "kde"
    pipeline: ClassVar[str] = "KdeGenerator"  # what its sets record (PerClassKind.pipeline)
    Options: ClassVar[type] = KdeOptions

    def fit_class(self, points: np.ndarray, weights: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The class's images themselves and its bandwidth; with training ``weights`` also the probability of
        drawing each image (w / Σw), and Scott's rule from the weighted spread and Kish's effective count."""
        if weights is None:
            h = self.options.bandwidth or scott_bandwidth(points.astype(np.float64))
            return {"points": points, "bandwidth": np.array([h], dtype=np.float64)}
        if not weights.sum() > 0:
            raise ValueError(f"all {len(points)} images of a class have training weight 0")
        probabilities = np.asarray(weights, dtype=np.float64) / weights.sum()
        h = self.options.bandwidth or weighted_scott_bandwidth(points.astype(np.float64), probabilities)
        return {"points": points, "bandwidth": np.array([h], dtype=np.float64), "probabilities": probabilities}

    @classmethod
    def check_arrays(cls, arrays: Mapping[str, np.ndarray], dim: int, options: KdeOptions, where: str) -> None:
        """``points`` (N ≥ 1, D) uint8 and ``bandwidth`` (1,), a finite float ≥ 0: the option's when it is set."""
        points = arrays.get("points")
        count = points.shape[0] if points is not None and points.ndim == 2 else -1
        shapes = {"points": (count, dim), "bandwidth": (1,)}
        if "probabilities" in arrays:  # a fit to a weighted set
            shapes["probabilities"] = (count,)
        check_shapes(arrays, shapes, where)
        if points.dtype != np.uint8 or not len(points):
            raise ValueError(f"{where}: array 'points' should be one or more uint8 images, got {len(points)} of "
                             f"{points.dtype}")
        super().check_arrays(arrays, dim, options, where)
        h = arrays["bandwidth"]
        if h.dtype.kind != "f" or not h[0] >= 0 or (options.bandwidth and h[0] != options.bandwidth):
            want = f"the option's {options.bandwidth}" if options.bandwidth else "a number ≥ 0"
            raise ValueError(f"{where}: array 'bandwidth' = {h[0]!r} should be {want}")
        p = arrays.get("probabilities")
        if p is not None and (p.dtype.kind != "f" or p.min() < 0 or abs(float(p.sum()) - 1.0) > 1e-6):
            raise ValueError(f"{where}: array 'probabilities' should be numbers ≥ 0 that sum to 1")

    @classmethod
    def fitted_moments(cls, arrays: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The (weighted) mean of the class's images and their spread (divided by n, or by Σw) plus h²."""
        points = arrays["points"].astype(np.float64)
        p = arrays.get("probabilities")
        p = np.full(len(points), 1.0 / len(points)) if p is None else p
        mean = p @ points
        return mean, p @ (points - mean) ** 2 + float(arrays["bandwidth"][0]) ** 2

    def draw(self, parameters: Mapping[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
        points = parameters["points"]
        p = parameters.get("probabilities")
        index = rng.integers(len(points)) if p is None else rng.choice(len(points), p=p)
        centre = points[index].astype(np.float64)
        return centre + float(parameters["bandwidth"][0]) * rng.standard_normal(centre.shape)
