"""Generators, each ending in an ImageSet. Pipelines never import metrics."""
