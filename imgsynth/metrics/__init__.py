"""Metrics for synthetic image sets: feature extractors, distances, fidelity, diversity, alignment.

Everything works on feature matrices (torch, float64 math, CPU or GPU); ``evaluate`` turns two
ImageSets into tidy rows. Each metric is declared once in ``imgsynth.metrics.registry`` (``METRICS``),
each extractor in ``imgsynth.metrics.extractors``. Metrics never import pipelines.

The names below are imported on first use, so importing a light module of this package (the metric and
extractor registries, which the recipe checks and reports read) loads no torch.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

_WHERE = {
    "clip_score": "alignment", "clip_score_per_sample": "alignment",
    "bootstrap_intervals": "bootstrap", "bootstrap_replicates": "bootstrap",
    "BiasedEstimateWarning": "distances", "cmmd": "distances", "feature_statistics": "distances",
    "frechet_distance": "distances", "frechet_distance_from_statistics": "distances", "kid": "distances",
    "kid_subset_values": "distances",
    "clip_diversity": "diversity", "vendi_score": "diversity",
    "EvaluationNote": "evaluate", "MetricRow": "evaluate", "evaluate": "evaluate",
    "evaluate_features": "evaluate", "rows_to_frame": "evaluate",
    "EXTRACTORS": "features", "FeatureExtractor": "features", "cached_features": "features",
    "create_extractor": "features", "register_extractor": "features",
    "precision_recall_density_coverage": "fidelity",
    "METRICS": "registry", "Metric": "registry", "MetricFamily": "registry",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)


class _Package(types.ModuleType):
    """``imgsynth.metrics.evaluate`` is the function, as it always was: importing the submodule of the same
    name binds the package attribute to the module, so that binding is turned into the function."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _WHERE and isinstance(value, types.ModuleType):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
