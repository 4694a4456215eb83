"""Curation: filters that turn an ImageSet into a smaller, reviewed one with the drops on record.

``curate(samples, out, dedup=…, min_confidence=…, min_clip_score=…, …)`` is the entry point (see
``imgsynth.curation.apply``); the filters themselves are pure functions in ``filters``, and the
embeddings and chunked similarity search shared with ``imgsynth.audit`` live in ``similarity``.
"""

from imgsynth.curation.apply import FILTERS, CurationLog, clip_scores, curate, curation_record
from imgsynth.curation.similarity import PixelEmbedding, greedy_dedup, nearest_neighbours, resolve_embedding

__all__ = ["FILTERS", "CurationLog", "PixelEmbedding", "clip_scores", "curate", "curation_record",
           "greedy_dedup", "nearest_neighbours", "resolve_embedding"]
