"""Curation: filters that turn an ImageSet into a smaller, reviewed one with the drops on record.

``curate(samples, out, best_of=…, reward=…, dedup=…, min_confidence=…, min_clip_score=…, …)`` is the entry
point (see ``imgsynth.curation.apply``); best-of-K selection lives in ``best_of``, its rewards in ``rewards``
(the :data:`REWARDS` registry); the filters themselves are pure functions in ``filters``, and the
embeddings and chunked similarity search shared with ``imgsynth.audit`` live in ``similarity``.
"""

from imgsynth.curation.apply import FILTERS, CurationLog, clip_scores, curate, curation_record
from imgsynth.curation.best_of import expected_normal_maximum
from imgsynth.curation.rewards import REWARDS, Reward, RewardContext
from imgsynth.curation.similarity import PixelEmbedding, greedy_dedup, nearest_neighbours, resolve_embedding

__all__ = ["FILTERS", "REWARDS", "CurationLog", "PixelEmbedding", "Reward", "RewardContext", "clip_scores", "curate",
           "curation_record", "expected_normal_maximum", "greedy_dedup", "nearest_neighbours", "resolve_embedding"]
