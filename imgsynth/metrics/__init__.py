"""Metrics for synthetic image sets: feature extractors, distances, fidelity, diversity, alignment.

Everything works on feature matrices (torch, float64 math, CPU or GPU); ``evaluate`` turns two
ImageSets into tidy rows. Metrics never import pipelines.
"""

from imgsynth.metrics.alignment import clip_score, clip_score_per_sample
from imgsynth.metrics.bootstrap import bootstrap_intervals, bootstrap_replicates
from imgsynth.metrics.distances import (BiasedEstimateWarning, cmmd, feature_statistics, frechet_distance,
                                        frechet_distance_from_statistics, kid, kid_subset_values)
from imgsynth.metrics.diversity import clip_diversity, vendi_score
from imgsynth.metrics.evaluate import EvaluationNote, MetricRow, evaluate, evaluate_features, rows_to_frame
from imgsynth.metrics.features import (EXTRACTORS, FeatureExtractor, cached_features, create_extractor,
                                       register_extractor)
from imgsynth.metrics.fidelity import precision_recall_density_coverage

__all__ = [
    "BiasedEstimateWarning", "EXTRACTORS", "EvaluationNote", "FeatureExtractor", "MetricRow",
    "bootstrap_intervals", "bootstrap_replicates", "cached_features", "clip_diversity", "clip_score",
    "clip_score_per_sample", "cmmd", "create_extractor", "evaluate", "evaluate_features", "feature_statistics",
    "frechet_distance", "frechet_distance_from_statistics", "kid", "kid_subset_values",
    "precision_recall_density_coverage", "register_extractor", "rows_to_frame", "vendi_score",
]
