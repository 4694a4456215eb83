"""An exact-theory generator: per class, a Gaussian kernel density estimate over the training images.

Sampling picks one training image of the class uniformly (its own seed decides which) and adds
independent N(0, h²) noise to every pixel, so one generation of ``replace`` maps a class's pixel variance
σ² to σ²·(n − 1)/n + h² in expectation (n images): a KDE refitted to its own samples spreads out by h² per
generation instead of collapsing, until clipping at 0 and 255 bounds it. ``bandwidth`` is h in pixel
levels; 0 picks Scott's rule per class, h = σ̂ · n^(−1/(d + 4)) (σ̂ the mean per-pixel standard deviation,
d the number of pixel values).
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


class KdeKind(PerClassKind):
    """The ``kde`` generator kind (see the module docstring)."""

    name: ClassVar[str] = "kde"
    pipeline: ClassVar[str] = "KdeGenerator"  # what its sets record (PerClassKind.pipeline)
    Options: ClassVar[type] = KdeOptions

    def fit_class(self, points: np.ndarray) -> dict[str, np.ndarray]:
        """The class's images themselves and its bandwidth."""
        h = self.options.bandwidth or scott_bandwidth(points.astype(np.float64))
        return {"points": points, "bandwidth": np.array([h], dtype=np.float64)}

    @classmethod
    def check_arrays(cls, arrays: Mapping[str, np.ndarray], dim: int, options: KdeOptions, where: str) -> None:
        """``points`` (N ≥ 1, D) uint8 and ``bandwidth`` (1,), a finite float ≥ 0: the option's when it is set."""
        points = arrays.get("points")
        check_shapes(arrays, {"points": (points.shape[0] if points is not None and points.ndim == 2 else -1, dim),
                              "bandwidth": (1,)}, where)
        if points.dtype != np.uint8 or not len(points):
            raise ValueError(f"{where}: array 'points' should be one or more uint8 images, got {len(points)} of "
                             f"{points.dtype}")
        super().check_arrays(arrays, dim, options, where)
        h = arrays["bandwidth"]
        if h.dtype.kind != "f" or not h[0] >= 0 or (options.bandwidth and h[0] != options.bandwidth):
            want = f"the option's {options.bandwidth}" if options.bandwidth else "a number ≥ 0"
            raise ValueError(f"{where}: array 'bandwidth' = {h[0]!r} should be {want}")

    def draw(self, parameters: Mapping[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
        points = parameters["points"]
        centre = points[rng.integers(len(points))].astype(np.float64)
        return centre + float(parameters["bandwidth"][0]) * rng.standard_normal(centre.shape)
