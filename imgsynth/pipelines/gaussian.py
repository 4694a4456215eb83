"""An exact-theory generator: per class, a Gaussian fitted to the training images' pixels.

Fitting is closed form (mean and covariance of the flattened uint8 pixels, in float64), so what a
recursive loop does to it has closed-form expectations (``imgsynth/assets/experiments/gaussian-theory.toml``):
with the maximum-likelihood covariance (divide by n) the expected variance shrinks by (n − 1)/n per
generation under ``replace``, with the unbiased one (divide by n − 1) it stays, while the mean random-walks.
Sampling draws each image from its own seed (``work.image_seed``), rounds to uint8 and writes an
ImageSet like any other generator, in fixed shards, so sets are byte-identical however they are resumed.

Covariance: ``full`` (D × D; D = pixels × channels) or, for large images, the top ``rank`` principal
directions plus the residual diagonal (a probabilistic-PCA-style low-rank + diagonal model); or, with
``variance`` > 0, fixed to variance·I (the known-variance setting: only the mean is learnt). A training set
with a ``weight`` column gives the weighted mean and covariance. What every loop mode does to the fit in
expectation is :mod:`imgsynth.experiments.theory` (derived in ``docs/theory.md``).

A model folder (``pipelines.per_class.write_model``) holds ``model.safetensors`` (per class ``mean`` and a
``factor`` F with Σ = F Fᵀ, plus ``residual`` for the low-rank model) and ``imgsynth_model_info.json``
(kind, classes, image shape, options, training set, the weights' sha256).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Mapping

import numpy as np

from imgsynth.pipelines.per_class import PIXEL_MAX, PerClassKind, check_shapes

ESTIMATORS = ("mle", "unbiased")


@dataclass
class GaussianOptions:
    """``estimator``: "mle" (covariance / n) or "unbiased" (/ (n − 1)); ``rank``: 0 for the full covariance,
    else the number of principal directions kept (plus the residual diagonal); ``shard_size``: images per
    shard when sampling."""

    estimator: str = "mle"
    rank: int = 0
    shard_size: int = 256
    # > 0: the covariance is not fitted but fixed to variance·I (pixel levels²): the known-variance setting of
    # the theory of recursive training (only the mean is learnt); 0: fitted.
    variance: float = 0.0
    # Options added after model folders were first written: recorded only when set (per_class.recorded_options).
    added_later: ClassVar[tuple[str, ...]] = ("variance",)

    def validate(self) -> GaussianOptions:
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {self.estimator!r}")
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 0:
            raise ValueError(f"rank must be a whole number ≥ 0 (0: full covariance), got {self.rank!r}")
        if not isinstance(self.variance, (int, float)) or isinstance(self.variance, bool) \
                or not 0 <= self.variance <= PIXEL_MAX ** 2:
            raise ValueError(f"variance must be a number in [0, {PIXEL_MAX ** 2:g}] (0: fitted), got {self.variance!r}")
        if self.variance and self.rank:
            raise ValueError("variance fixes the whole covariance; it cannot be combined with rank")
        if not isinstance(self.shard_size, int) or self.shard_size < 1:
            raise ValueError(f"shard_size must be a whole number ≥ 1, got {self.shard_size!r}")
        return self


class GaussianKind(PerClassKind):
    """The ``gaussian`` generator kind (see the module docstring)."""

    name: ClassVar[str] = "gaussian"
    pipeline: ClassVar[str] = "GaussianGenerator"  # what its sets record (PerClassKind.pipeline)
    Options: ClassVar[type] = GaussianOptions

    def fit_class(self, points: np.ndarray, weights: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Mean and covariance factor of one class's flattened images (N, D), in float64.

        With training ``weights``: the weighted mean and the weighted covariance, divided by Σw (``mle``) or by
        Σw − Σw²/Σw (``unbiased``, reliability weights: n − 1 when all weights are equal), as
        ``numpy.cov(aweights=…, ddof=0 | 1)`` computes them. With ``variance`` > 0 the covariance is that
        variance times the identity, whatever the data."""
        pixels = points.astype(np.float64)
        n = len(pixels)
        if weights is not None and not weights.sum() > 0:
            raise ValueError(f"all {n} images of a class have training weight 0")
        mean = pixels.mean(axis=0) if weights is None else np.average(pixels, axis=0, weights=weights)
        if self.options.variance:
            return {"mean": mean, "factor": np.sqrt(float(self.options.variance)) * np.eye(len(mean))}
        if weights is None:
            centred = pixels - mean
            divisor = n if self.options.estimator == "mle" else n - 1
            if divisor < 1:
                raise ValueError(f"the unbiased estimator needs at least 2 images per class, got {n}")
            covariance = centred.T @ centred / divisor
        else:
            ddof = 0 if self.options.estimator == "mle" else 1
            if ddof and weights.sum() ** 2 <= (weights ** 2).sum():
                raise ValueError("the unbiased estimator needs the weight of at least 2 images per class")
            covariance = np.atleast_2d(np.cov(pixels, rowvar=False, aweights=weights, ddof=ddof))
        values, vectors = np.linalg.eigh(covariance)
        values = np.clip(values, 0.0, None)  # round-off can make a zero eigenvalue slightly negative
        rank = self.options.rank
        if rank and rank < len(values):
            top = np.argsort(values)[::-1][:rank]
            factor = vectors[:, top] * np.sqrt(values[top])
            residual = np.clip(np.diag(covariance) - (factor ** 2).sum(axis=1), 0.0, None)
            return {"mean": mean, "factor": factor, "residual": np.sqrt(residual)}
        return {"mean": mean, "factor": vectors * np.sqrt(values)}

    @classmethod
    def check_arrays(cls, arrays: Mapping[str, np.ndarray], dim: int, options: GaussianOptions, where: str) -> None:
        """``mean`` (D,), ``factor`` (D, D), or (D, rank) plus ``residual`` (D,) when ``rank`` < D; floats,
        finite, within the range fitting uint8 pixels gives (a mean in [0, 255]; a factor entry or residual
        is at most a pixel's standard deviation, below 255)."""
        low_rank = bool(options.rank) and options.rank < dim
        shapes = {"mean": (dim,), "factor": (dim, options.rank if low_rank else dim)}
        if low_rank:
            shapes["residual"] = (dim,)
        check_shapes(arrays, shapes, where)
        super().check_arrays(arrays, dim, options, where)
        bounds = {"mean": (0.0, PIXEL_MAX), "factor": (-PIXEL_MAX, PIXEL_MAX), "residual": (0.0, PIXEL_MAX)}
        for name, (low, high) in bounds.items():
            if name in arrays and arrays[name].size and not (low <= arrays[name].min() and arrays[name].max() <= high):
                raise ValueError(f"{where}: array {name!r} has values outside [{low:g}, {high:g}], which no fit "
                                 "of uint8 pixels gives")

    @classmethod
    def fitted_moments(cls, arrays: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The class's mean and the diagonal of its covariance (F Fᵀ, plus the residual's square)."""
        variance = (arrays["factor"] ** 2).sum(axis=1)
        if "residual" in arrays:
            variance = variance + arrays["residual"] ** 2
        return arrays["mean"], variance

    def draw(self, parameters: Mapping[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
        factor = parameters["factor"]
        pixels = parameters["mean"] + factor @ rng.standard_normal(factor.shape[1])
        if "residual" in parameters:
            pixels = pixels + parameters["residual"] * rng.standard_normal(len(pixels))
        return pixels
