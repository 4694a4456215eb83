"""Closed-form expectations of every loop mode on the exact-theory kinds, and the loop's measurements of them.

The derivation is ``docs/theory.md``. In short: per class and pixel, write y = x − μ₀ for a pixel value x,
μ₀ and v₀ the mean and the divide-by-N variance of the class's N real training images (generation 0 fits
exactly those). Every quantity a mode combines (the mean of a real chunk, of a generation's samples, of a
draw from a pool) is then a linear function of a few random "atoms" whose second moments follow exact
recursions: the fitted mean e_k of generation k is a weighted average of its training parts, the fitted
variance is a constant times the weighted second central moment (plus h² for the KDE, or fixed), and a
generation's n samples have mean e_k plus noise of variance (V_k + 1/12)/n (1/12: rounding to uint8). So

- ``fit_mean_error`` = E[(μ_k − μ₀)²] / v₀ (mean over classes and pixels), and
- ``fit_variance_ratio`` = E[V_k] / v₀

are exact for imgsynth's definitions: sample counts, what is kept, draws without replacement from finite
pools (a fresh chunk's mean has variance v₀ (N − c)/(c (N − 1)) and disjoint chunks covary by −v₀/(N − 1)),
MLE or unbiased (reliability-weighted) refits, training weights, and the mode's own stratified counts. They
hold for any pixel distribution (only first and second moments enter) up to the rounding term's
approximation and clipping at 0 and 255, and they assume class-balanced real data (every class the same N).

:func:`expectations` gives them for a recipe (written to the run as ``theory.json``, ``experiments.run.THEORY_FILE``); :func:`moment_rows`
measures a fitted model the same way (rows of ``metrics.json``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:
    from imgsynth.experiments.config import Recipe
    from imgsynth.experiments.modes import LoopData
    from imgsynth.imageset import ImageSet

MEAN_ERROR, VARIANCE_RATIO = "fit_mean_error", "fit_variance_ratio"
THEORY_METRICS = (MEAN_ERROR, VARIANCE_RATIO)
ROUNDING_VARIANCE = 1.0 / 12.0  # rounding a continuous value to an integer adds ≈ 1/12 (Sheppard)
EXACT_MODES = ("replace", "accumulate", "mix", "fresh", "fresh-mix", "augment", "accumulate-subsample", "weighted")


@dataclass(frozen=True)
class FitLaw:
    """How a kind's fit turns a (weighted) training set into a per-pixel variance V:
    ``fixed_variance`` when given, else c·M₂ + ``added_variance`` with M₂ = Σw(y − ȳ_w)²/Σw and c = 1 (MLE) or
    V₁²/(V₁² − V₂) (``unbiased``: Σw − Σw²/Σw in the denominator; n − 1 for equal weights)."""

    unbiased: bool = False
    fixed_variance: float | None = None
    added_variance: float = 0.0
    rounding: float = ROUNDING_VARIANCE


@dataclass(frozen=True)
class Part:
    """One part of a training set: ``kind`` "whole" (every image of ``sources``), "sub" (``count`` drawn
    uniformly without replacement from their union) or "chunk" (``count`` new real images, disjoint from every
    earlier chunk); ``sources`` are "real" and output indices; every image of the part weighs ``weight``."""

    kind: str
    sources: tuple[Any, ...] = ()
    count: int = 0
    weight: float = 1.0


@dataclass
class Chain:
    """The second moments of one chain of one class, in pixel levels² (see the module docstring).

    ``gram`` holds E[aᵢ aⱼ] of the atoms: the mean (minus μ₀) of each generation's samples and of each fresh
    real chunk; ``outputs`` (atom, n, E[per-image y²]) per generation; ``chunks`` (atom, size).
    """

    real: int
    real_variance: float
    law: FitLaw
    gram: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    outputs: list[tuple[int, int, float]] = field(default_factory=list)
    chunks: list[tuple[int, int]] = field(default_factory=list)

    def _atom(self, cross: np.ndarray, moment: float) -> int:
        k = len(self.gram)
        gram = np.zeros((k + 1, k + 1))
        gram[:k, :k], gram[k, :k], gram[:k, k], gram[k, k] = self.gram, cross, cross, moment
        self.gram = gram
        return k

    def _union(self, sources: Sequence[Any]) -> tuple[np.ndarray, float, int]:
        """(mean as atom coefficients, E[mean y² per image], size) of a union of the real set and outputs."""
        coefficients, second, size = np.zeros(len(self.gram)), 0.0, 0
        for source in sources:
            if source == "real":  # mean 0 by definition of μ₀; Σy² = N·v₀
                second, size = second + self.real * self.real_variance, size + self.real
            else:
                atom, n, q = self.outputs[source]
                coefficients[atom] += n
                second, size = second + n * q, size + n
        return coefficients / size, second / size, size

    def _chunk(self, count: int) -> int:
        """A new real chunk's atom: given the earlier chunks, its mean's expectation is minus their total over
        the rest of the pool, which fixes its covariance with everything before it."""
        taken = sum(c for _, c in self.chunks)
        n = self.real
        if taken + count > n:
            raise ValueError(f"{self.real} real images cannot give another chunk of {count} after {taken}")
        cross = np.zeros(len(self.gram))
        for atom, c in self.chunks:
            cross -= c * self.gram[atom] / (n - taken)
        moment = self.real_variance * (n - count) / (count * (n - 1)) if n > 1 else 0.0
        atom = self._atom(cross, moment)
        self.chunks.append((atom, count))
        return atom

    def generation(self, parts: Sequence[Part], samples: int) -> tuple[float, float]:
        """Fit to ``parts``, then draw ``samples`` images: returns (E[e²], E[V]) of the fit."""
        chunk_atoms = {i: self._chunk(p.count) for i, p in enumerate(parts) if p.kind == "chunk"}
        size = len(self.gram)
        resolved = []  # (part, mean as atom coefficients, E[y²] per image, extra variance of its mean, images)
        for i, part in enumerate(parts):
            if part.kind == "chunk":
                coefficients = np.zeros(size)
                coefficients[chunk_atoms[i]] = 1.0
                resolved.append((part, coefficients, self.real_variance, 0.0, part.count))
                continue
            coefficients, second, union = self._union(part.sources)
            count = union if part.kind == "whole" else part.count
            extra = 0.0
            if part.kind == "sub" and count < union:  # a uniform draw without replacement from the union
                spread = second - coefficients @ self.gram @ coefficients
                extra = max(spread, 0.0) * (union - count) / (count * (union - 1))
            resolved.append((part, coefficients, second, extra, count))
        v1 = sum(count * part.weight for part, *_, count in resolved)
        v2 = sum(count * part.weight ** 2 for part, *_, count in resolved)
        shares = [count * part.weight / v1 for part, *_, count in resolved]
        mean = sum(share * coefficients for share, (_, coefficients, *_) in zip(shares, resolved))
        error = float(mean @ self.gram @ mean) + sum(share ** 2 * r[3] for share, r in zip(shares, resolved))
        second = sum(share * r[2] for share, r in zip(shares, resolved))
        law = self.law
        if law.fixed_variance is not None:
            variance = law.fixed_variance
        else:
            scale = v1 * v1 / (v1 * v1 - v2) if law.unbiased else 1.0
            variance = scale * (second - error) + law.added_variance
        noise = variance + law.rounding
        atom = self._atom(self.gram @ mean, error + noise / samples)
        self.outputs.append((atom, samples, error + noise))
        return error, variance


def stratified_count(take: int, source_size: int, class_size: int) -> int:
    """How many images of one class a stratified draw of ``take`` from ``source_size`` keeps (the rounding of
    ``imageset.stratified_split_indices``; all of them when ``take`` ≥ ``source_size``)."""
    if take >= source_size:
        return class_size
    k = int(round(take / source_size * class_size))
    return min(max(k, 1), class_size - 1) if class_size >= 2 else k


def mode_parts(mode: str, k: int, real: int, per_class: int, classes: int, data: LoopData) -> list[Part]:
    """The training parts of generation k ≥ 1 of ``mode`` for one class (``real`` images of it, ``per_class``
    sampled per generation, ``classes`` classes), exactly as the mode in ``experiments/modes.py`` builds them."""
    previous, everything = (k - 1,), ("real", *range(k))
    n_total = per_class * classes
    fresh = data.fresh_per_class or per_class
    if mode == "replace":
        return [Part("whole", previous)]
    if mode == "accumulate":
        return [Part("whole", everything)]
    if mode == "mix":
        n_real = int(round(data.mix_real_fraction * n_total))
        r = stratified_count(n_real, real * classes, real) if n_real else 0
        s = stratified_count(n_total - n_real, n_total, per_class) if n_total - n_real else 0
        return [p for p in (Part("sub", ("real",), r), Part("sub", previous, s)) if p.count]
    if mode == "fresh":
        return [Part("chunk", count=per_class)]
    if mode == "fresh-mix":
        synthetic = previous if data.fresh_synthetic == "previous" else tuple(range(k))
        return [Part("chunk", count=fresh), Part("whole", synthetic)]
    if mode == "augment":
        take = min(int(round(data.augment_ratio * real * classes)), n_total)
        return [Part("whole", ("real",)), Part("sub", previous, stratified_count(take, n_total, per_class))]
    if mode == "accumulate-subsample":
        pool = real + k * per_class
        size = data.subsample_size or real * classes
        return [Part("sub", everything, stratified_count(size, pool * classes, pool))]
    if mode == "weighted":
        w, total = data.real_weight, classes * (fresh + per_class)
        return [Part("chunk", count=fresh, weight=w * total / (classes * fresh)),
                Part("whole", previous, weight=(1.0 - w) * total / (classes * per_class))]
    raise ValueError(f"no closed form for loop mode {mode!r}")


def chain_expectations(mode: str, generations: int, real: int, per_class: int, classes: int, real_variance: float,
                       law: FitLaw, data: LoopData) -> dict[str, list[float]]:
    """``fit_mean_error`` and ``fit_variance_ratio`` of generations 0 … generations − 1 of one mode."""
    chain = Chain(real, real_variance, law)
    errors, variances = [], []
    for k in range(generations):
        parts = [Part("whole", ("real",))] if k == 0 else mode_parts(mode, k, real, per_class, classes, data)
        error, variance = chain.generation(parts, per_class)
        errors.append(error / real_variance)
        variances.append(variance / real_variance)
    return {MEAN_ERROR: errors, VARIANCE_RATIO: variances}


def fit_law(kind: str, options: dict[str, Any]) -> FitLaw | str:
    """The fit law of a recipe's generator, or why it has no closed form."""
    if kind == "gaussian":
        variance = float(options.get("variance", 0.0) or 0.0)
        return FitLaw(unbiased=options.get("estimator", "mle") == "unbiased", fixed_variance=variance or None)
    if kind == "kde":
        h = float(options.get("bandwidth", 0.0) or 0.0)
        if not h:
            return "the kde kind's bandwidth is Scott's rule, which depends on the data: set bandwidth > 0"
        return FitLaw(added_variance=h * h)
    return f"the {kind} kind has no closed-form fit"


def real_moments(real_train: ImageSet) -> tuple[np.ndarray, np.ndarray]:
    """(per-class mean, per-class divide-by-N variance) of the real training images' pixels, (classes, D)."""
    flat = real_train.as_array().reshape(len(real_train), -1).astype(np.float64)
    labels = np.asarray(real_train.labels)
    present = [i for i in range(len(real_train.classes)) if (labels == i).any()]
    means = np.stack([flat[labels == i].mean(axis=0) for i in present])
    variances = np.stack([flat[labels == i].var(axis=0) for i in present])
    return means, variances


def expectations(recipe: Recipe, data: LoopData) -> dict[str, Any] | None:
    """What ``theory.json`` holds for a run: per mode, the expected ``fit_mean_error`` and
    ``fit_variance_ratio`` of every generation (or why a mode has none); None for a kind with no fitted moments."""
    g = recipe.generator
    if g.kind not in ("gaussian", "kde"):
        return None
    law = fit_law(g.kind, dict(g.options))
    counts = set(data.real_train.counts.values())
    classes = len(data.real_train.classes)
    reason = law if isinstance(law, str) else None
    if reason is None and recipe.data.minority_classes:
        reason = "[data] minority_classes thins the real data: the classes differ in N"
    if reason is None and len(counts) != 1:
        reason = f"the real classes differ in size ({sorted(counts)}); the closed forms assume balanced classes"
    _, variances = real_moments(data.real_train)
    v0 = float(variances.mean())
    modes: dict[str, Any] = {}
    for mode in recipe.loop.modes:
        why = reason
        if why is None and mode not in EXACT_MODES:
            why = f"no closed form for loop mode {mode!r} (curation, or a mode registered elsewhere)"
        if why is not None:
            modes[mode] = {"derived": False, "why": why}
            continue
        real = next(iter(counts))
        try:
            values = chain_expectations(mode, recipe.loop.generations, real, g.per_class, classes, v0, law, data)
        except ValueError as exc:
            modes[mode] = {"derived": False, "why": str(exc)}
            continue
        modes[mode] = {"derived": True, **values}
    return {"derivation": "docs/theory.md (imgsynth.experiments.theory)", "metrics": list(THEORY_METRICS),
            "real_variance": v0, "real_per_class": sorted(counts), "per_class": g.per_class,
            "law": None if isinstance(law, str) else law.__dict__, "modes": modes}


def moment_rows(kind: Any, model_dir: Path, real_means: np.ndarray, real_variances: np.ndarray) -> list[dict[str, Any]]:
    """The measured ``fit_mean_error`` and ``fit_variance_ratio`` of a fitted per-class model (metric rows),
    or none for a kind without closed-form moments."""
    moments = getattr(kind, "fitted_moments", None)
    if moments is None:
        return []
    info, parameters = kind.load(model_dir)
    fitted = [(info["classes"].index(label), moments(arrays)) for label, arrays in parameters.items()]
    if any(m is None for _, m in fitted) or len(fitted) != len(real_means):
        return []
    fitted.sort(key=lambda item: item[0])
    means = np.stack([m[0] for _, m in fitted])
    variances = np.stack([m[1] for _, m in fitted])
    v0 = float(real_variances.mean())
    n = int(means.size)
    return [_row(MEAN_ERROR, float(((means - real_means) ** 2).mean() / v0), n),
            _row(VARIANCE_RATIO, float(variances.mean() / v0), n)]


def _row(metric: str, value: float, n: int) -> dict[str, Any]:
    return {"metric": metric, "class_name": "all", "value": value if math.isfinite(value) else None,
            "ci_low": None, "ci_high": None, "n": n, "extractor": ""}


__all__ = ["EXACT_MODES", "THEORY_METRICS", "Chain", "FitLaw", "Part", "chain_expectations",
           "expectations", "fit_law", "mode_parts", "moment_rows", "real_moments", "stratified_count"]
