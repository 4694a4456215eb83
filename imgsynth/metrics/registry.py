"""Every metric declared once: what it is, how it is computed, which way is better, what it needs.

``METRICS`` (an :class:`imgsynth.registry.Registry`) maps a metric's name to its :class:`Metric`
declaration, and everything that knows about metrics reads it: ``metrics.evaluate`` (which metrics to
compute for an extractor, with which minimum counts, the bounds of their intervals, the names a request
may use), the dashboard (panel order, the ↑/↓ of each title, the heat map's colours) and the findings
(which metrics get a verdict line, in which order). This module imports no torch: the recipe checks and
the reports read it; compute functions are ``"module:attribute"`` strings imported on first use.

A new metric is one declaration::

    METRICS.register("sharpness_gap", Metric(
        MetricFamily(compute="mypkg.sharp:gap", two_sample=True), direction=LOWER, bounds=(0.0, math.inf)))

with ``compute(settings, candidate, reference)`` returning ``{"sharpness_gap": value}`` (see
:class:`MetricFamily` for the signature). Orders are registration orders: the dashboard's panels come in
the order metrics are registered (metrics nobody declared follow alphabetically); ``evaluate`` writes the
two-sample metrics first, then the one-sample ones, each in registration order.
"""

from __future__ import annotations

import math
import pkgutil
from dataclasses import dataclass, field
from typing import Callable, Collection, Literal, Mapping

from imgsynth.registry import Registry

# What a metric can need, and what an extractor (or the data) can supply.
FEATURES = "features"
"""An image feature matrix (every extractor supplies it)."""
LABELS = "labels"
"""The images' class labels (a classifier trained on them: the loop's classification score). ``evaluate``
already computes every metric per class, so it hands no labels to a compute function."""
CAPTIONS = "captions"
"""Text embeddings of the candidate images' captions (their class names when empty), paired with its rows."""
TEXT_ENCODER = "text_encoder"
"""Image features in a joint image–text space whose extractor also embeds text (CLIP)."""
TRAIN_FEATURES = "train_features"
"""Features of the training set the candidate's generator learned from (in the loop: that generation's training
set), in the extractor's space. A compute function gets them as ``train=`` (per class, that class's rows); the
bootstrap never resamples them. Opt-in: without a training set these metrics are left out without a note."""
NEEDS = (FEATURES, LABELS, CAPTIONS, TEXT_ENCODER, TRAIN_FEATURES)
# Needs met by the data handed to ``evaluate`` rather than by the extractor: a metric left out for want of
# one of them is noted (the caller forgot an input), one the extractor cannot serve is left out silently.
DATA_NEEDS = frozenset({LABELS, CAPTIONS})
# How a missing need reads in an error or note ("cmmd need CLIP embeddings; …").
NEED_WORDS = {FEATURES: "image features", LABELS: "class labels",
              CAPTIONS: "text embeddings of the candidate captions", TEXT_ENCODER: "CLIP embeddings",
              TRAIN_FEATURES: "features of the generator's training set"}

Direction = Literal["higher", "lower", "neither"]
HIGHER: Direction = "higher"
LOWER: Direction = "lower"
NEITHER: Direction = "neither"
ARROWS: Mapping[str, str] = {HIGHER: "↑", LOWER: "↓", NEITHER: ""}


@dataclass(frozen=True)
class MetricSettings:
    """The knobs of the built-in metrics (``evaluate``'s arguments of the same names)."""

    k: int = 5
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    seed: int = 0
    progress: bool | None = None  # bars over FID/KID/PRDC/CMMD blocks; None: on a terminal, after 2 s


Count = int | Callable[[MetricSettings], int]


@dataclass(frozen=True)
class MetricFamily:
    """Metrics computed together by one call (precision, recall, density and coverage share their k-NN balls).

    ``compute(settings, candidate, [reference,] [candidate_text,] [train=…])`` returns ``{metric name: value}``:
    ``reference`` is passed when ``two_sample``, ``candidate_text`` (unit text embeddings, one row per
    candidate row) when ``needs`` holds :data:`CAPTIONS`, the keyword ``train`` (the generator's training-set
    features) when it holds :data:`TRAIN_FEATURES`. Rows of both sets are bootstrap-resampled
    independently, text rows with their candidate row, training rows never. ``min_candidate``/``min_reference``
    /``min_train`` are the fewest rows the call can work with (a number, or a function of the settings: k + 1
    for k-NN balls); a class with fewer is skipped with a note. ``resample``: False for a statistic that
    resampling with replacement breaks (a k-NN entropy has no value with repeated rows): no bootstrap interval.
    ``compute`` is a callable or ``"module:attribute"``.
    """

    compute: str | Callable[..., Mapping[str, float]]
    two_sample: bool
    min_candidate: Count = 1
    min_reference: Count = 0
    needs: frozenset[str] = frozenset({FEATURES})
    min_train: Count = 0
    resample: bool = True

    def __post_init__(self) -> None:
        unknown = sorted(set(self.needs) - set(NEEDS))
        if unknown:
            raise ValueError(f"unknown needs {unknown}; known: {', '.join(NEEDS)}")
        if LABELS in self.needs:
            raise ValueError("a compute function gets no labels: evaluate already computes every metric per "
                             "class (declare LABELS on a Metric that something else computes)")
        if FEATURES not in self.needs:
            raise ValueError("every metric family is computed from image features: needs must hold FEATURES")

    def function(self) -> Callable[..., Mapping[str, float]]:
        """The compute callable (imported on first use when declared as ``"module:attribute"``)."""
        return pkgutil.resolve_name(self.compute) if isinstance(self.compute, str) else self.compute

    def minimum(self, settings: MetricSettings) -> tuple[int, int]:
        """(fewest candidate rows, fewest reference rows) under ``settings``."""
        return tuple(n(settings) if callable(n) else n  # type: ignore[return-value]
                     for n in (self.min_candidate, self.min_reference))

    def minimum_train(self, settings: MetricSettings) -> int:
        """Fewest training-set rows under ``settings`` (0 unless the family needs :data:`TRAIN_FEATURES`)."""
        return self.min_train(settings) if callable(self.min_train) else self.min_train


@dataclass(frozen=True)
class Metric:
    """One metric's declaration (its name is the name it is registered under in :data:`METRICS`).

    ``family``: how it is computed, or ``None`` for a metric something else produces (the loop's
    classifier scores, its bookkeeping counts) that the reports still need to know. ``direction``: which
    way is better (the dashboard's arrow and colours). ``bounds``: the values it can take, so bootstrap
    intervals stay inside them. ``headline``: its rank among the findings' verdict lines (1 first; ``None``:
    no verdict line). ``replaced_by``: the metric reported instead when the extractor supplies what that
    one needs (``diversity`` is reported as ``clip_diversity`` in a CLIP space); a request for either name
    gets the one that applies. ``bookkeeping``: describes the run rather than measuring it (no findings).
    """

    family: MetricFamily | None
    direction: Direction = NEITHER
    bounds: tuple[float, float] = (-math.inf, math.inf)
    headline: int | None = None
    replaced_by: str | None = None
    bookkeeping: bool = False
    description: str = ""
    needs: frozenset[str] = field(default=frozenset())

    def __post_init__(self) -> None:
        if self.direction not in ARROWS:
            raise ValueError(f"direction must be one of {', '.join(ARROWS)}, got {self.direction!r}")
        low, high = self.bounds
        if not low <= high:
            raise ValueError(f"bounds must be (low, high) with low ≤ high, got {self.bounds}")
        unknown = sorted(set(self.needs) - set(NEEDS))
        if unknown:
            raise ValueError(f"unknown needs {unknown}; known: {', '.join(NEEDS)}")

    @property
    def requires(self) -> frozenset[str]:
        """Everything this metric needs: its family's inputs and its own (e.g. the labels a classifier uses)."""
        return (self.family.needs if self.family else frozenset()) | self.needs

    @property
    def arrow(self) -> str:
        """↑ (higher is better), ↓ (lower is better) or nothing."""
        return ARROWS[self.direction]


METRICS: Registry[Metric] = Registry("metric")


# ------------------------------------------------------------------------------------------- queries

def declared(name: str) -> Metric | None:
    """The declaration of ``name``, or None for a metric nobody declared (e.g. a row of an older run)."""
    return METRICS[name] if name in METRICS else None


def direction(name: str) -> Direction:
    """Which way is better for ``name`` ("neither" when undeclared)."""
    metric = declared(name)
    return metric.direction if metric else NEITHER


def panel_order() -> list[str]:
    """Metric names in the dashboard's reading order (registration order)."""
    return METRICS.names()


def headline_metrics() -> list[str]:
    """Metrics the findings write a verdict line for, in rank order (ties: registration order)."""
    ranked = [(metric.headline, i, name) for i, (name, metric) in enumerate(METRICS.items())
              if metric.headline is not None]
    return [name for _, _, name in sorted(ranked)]


def bookkeeping_metrics() -> set[str]:
    """Rows that describe a run (sizes, counts) rather than measure it."""
    return {name for name, metric in METRICS.items() if metric.bookkeeping}


def bounds() -> dict[str, tuple[float, float]]:
    """{name: (low, high)} of every declared metric."""
    return {name: metric.bounds for name, metric in METRICS.items()}


def applies(name: str, supplied: Collection[str]) -> bool:
    """Whether ``name`` is computed when ``supplied`` (extractor and data) is what is at hand: its needs are
    met and no metric that replaces it applies."""
    metric = METRICS[name]
    if metric.family is None or not metric.requires <= set(supplied):
        return False
    return metric.replaced_by is None or not applies(metric.replaced_by, supplied)


def resolve(name: str, supplied: Collection[str]) -> str:
    """The metric a request for ``name`` means: itself, or the member of its replacement pair that applies."""
    metric = METRICS[name]
    if metric.replaced_by and applies(metric.replaced_by, supplied):
        return metric.replaced_by
    if not applies(name, supplied):
        for other, declaration in METRICS.items():
            if declaration.replaced_by == name and applies(other, supplied):
                return other
    return name


# ------------------------------------------------------------------------------------------- built-ins

_SAMPLES = "imgsynth.metrics.families"
INF = math.inf


def _k_plus_one(settings: MetricSettings) -> int:
    return settings.k + 1


_FID = MetricFamily(f"{_SAMPLES}:fid", two_sample=True, min_candidate=2, min_reference=2)
_KID = MetricFamily(f"{_SAMPLES}:kid", two_sample=True, min_candidate=2, min_reference=2)
_PRDC = MetricFamily(f"{_SAMPLES}:prdc", two_sample=True, min_candidate=_k_plus_one, min_reference=_k_plus_one)
_DIVERSITY = MetricFamily(f"{_SAMPLES}:diversity", two_sample=False, min_candidate=2)
_CLIP_DIVERSITY = MetricFamily(f"{_SAMPLES}:clip_diversity", two_sample=False, min_candidate=2,
                               needs=frozenset({FEATURES, TEXT_ENCODER}))
_VENDI = MetricFamily(f"{_SAMPLES}:vendi", two_sample=False, min_candidate=1)
_CLIP_SCORE = MetricFamily(f"{_SAMPLES}:clip_score", two_sample=False, min_candidate=1,
                           needs=frozenset({FEATURES, TEXT_ENCODER, CAPTIONS}))
_CMMD = MetricFamily(f"{_SAMPLES}:cmmd", two_sample=True, min_candidate=2, min_reference=2,
                     needs=frozenset({FEATURES, TEXT_ENCODER}))
# Against the generator's training set (opt-in: computed only when one is given, e.g. [metrics]
# train_set_metrics = true in a recipe); one module per family.
_MEMORISATION = MetricFamily("imgsynth.metrics.memorisation:family", two_sample=False, min_candidate=1,
                             min_train=2, needs=frozenset({FEATURES, TRAIN_FEATURES}))
_ENTROPY = MetricFamily("imgsynth.metrics.entropy:family", two_sample=False, min_candidate=_k_plus_one,
                        min_train=_k_plus_one, needs=frozenset({FEATURES, TRAIN_FEATURES}), resample=False)

# Registration order is the dashboard's panel order (and, two-sample first, the order of evaluate's rows).
for _name, _metric in (
        ("fid", Metric(_FID, LOWER, (0.0, INF), headline=1,
                       description="Fréchet distance in the extractor's feature space (FID with inception)")),
        ("kid", Metric(_KID, LOWER, description="kernel inception distance (unbiased, may be negative)")),
        ("precision", Metric(_PRDC, HIGHER, (0.0, 1.0), headline=4,
                             description="candidates inside the reference's k-NN balls")),
        ("recall", Metric(_PRDC, HIGHER, (0.0, 1.0), headline=2,
                          description="references inside the candidate's k-NN balls")),
        ("density", Metric(_PRDC, HIGHER, (0.0, INF), description="reference balls per candidate, over k")),
        ("coverage", Metric(_PRDC, HIGHER, (0.0, 1.0), headline=3,
                            description="references whose ball holds a candidate")),
        ("diversity", Metric(_DIVERSITY, HIGHER, (0.0, 2.0), replaced_by="clip_diversity",
                             description="mean pairwise cosine distance of the candidate's features")),
        ("clip_diversity", Metric(_CLIP_DIVERSITY, HIGHER, (0.0, 2.0),
                                  description="mean pairwise cosine distance of CLIP embeddings")),
        ("vendi", Metric(_VENDI, HIGHER, (1.0, INF), description="Vendi score: effective number of distinct samples")),
        ("clip_score", Metric(_CLIP_SCORE, HIGHER, (0.0, 100.0), description="CLIP score of images vs captions")),
        ("cmmd", Metric(_CMMD, LOWER, (0.0, INF), description="MMD of CLIP embeddings")),
        ("memorisation_rate", Metric(_MEMORISATION, LOWER, (0.0, 1.0),
                                     description="share of samples whose nearest training row is nearer than "
                                                 "τ = 1/3 of their second nearest (distance-ratio test, Yoon et "
                                                 "al. 2023; Gu et al. 2023)")),
        ("authenticity", Metric(_MEMORISATION, HIGHER, (0.0, 1.0),
                                description="samples farther from their nearest training row than its own nearest "
                                            "neighbour (Alaa et al. 2022)")),
        ("knn_entropy", Metric(_ENTROPY, HIGHER, description="Kozachenko–Leonenko k-NN entropy of the samples (nats)")),
        ("train_knn_entropy", Metric(_ENTROPY, HIGHER,
                                     description="Kozachenko–Leonenko k-NN entropy of the generator's training set")),
        # Produced by the loop (a classifier trained on the samples, scored on real test data).
        ("cas_accuracy", Metric(None, HIGHER, (0.0, 1.0), headline=5, needs=frozenset({LABELS}),
                                description="classification accuracy score on real test data")),
        ("cas_macro_f1", Metric(None, HIGHER, (0.0, 1.0), needs=frozenset({LABELS}),
                                description="macro F1 of that classifier")),
        ("train_size", Metric(None, bounds=(0.0, INF), bookkeeping=True,
                              description="images in the generation's training set")),
        ("sample_count", Metric(None, bounds=(0.0, INF), bookkeeping=True,
                                description="images the generation sampled")),
):
    METRICS.register(_name, _metric)

# Produced by the loop for the exact-theory kinds (imgsynth.experiments.theory), next to their closed forms.
METRICS.register("fit_mean_error", Metric(None, LOWER, (0.0, INF), description=(
    "squared distance of the fitted per-pixel mean from the real data's, over the real data's variance")))
METRICS.register("fit_variance_ratio", Metric(None, NEITHER, (0.0, INF), description=(
    "the fitted per-pixel variance over the real data's (1: kept; below 1: collapsing)")))
