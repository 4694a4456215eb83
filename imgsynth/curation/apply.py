"""Turn an ImageSet into a curated ImageSet whose manifest says what was dropped, by which filter and why.

Filters run in a fixed order, each on the images the previous ones kept:

0. ``best_of``: of every K candidates (``imgsynth.curation.best_of``: within a class, positions g, g + m, …,
   g + (K − 1)m with m = ⌊n_c/K⌋) keep the one a registered reward (``imgsynth.curation.rewards``) ranks
   highest; K = 1 skips the stage;
1. ``confidence``: a classifier trained on real data must give the image's own label probability
   ≥ ``min_confidence`` (images the reference model does not recognise as their class go);
2. ``clip``: the image–caption CLIP score must be ≥ ``min_clip_score`` and/or in the top
   ``clip_top_fraction`` of its class;
3. ``dedup``: near-duplicates by embedding cosine similarity ≥ ``dedup``; within each class, in set
   order, the first image of a group is kept;
4. ``rebalance``: every class is downsampled (seeded) to the smallest kept class count.

Quality filters come before deduplication so that a kept representative of a near-duplicate group is
never one a later filter would throw away (which would empty the whole group). The curated set has
kind ``curated`` and the input as its parent; its ``imageset.json`` holds a ``curation`` record with
the settings, the drop counts per filter and per class, and one entry per dropped image (file, label,
sha256, filter and the number that decided it). Dropped images are not copied.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from imgsynth.curation.best_of import candidate_groups, check_best_of, choose_best
from imgsynth.curation.filters import keep_aligned, keep_confident, rebalance as rebalance_mask
from imgsynth.curation.rewards import REWARDS, RewardContext, clip_scores, label_probabilities
from imgsynth.curation.similarity import Extractor, embed_images, greedy_dedup, resolve_embedding
from imgsynth.notes import Note
from imgsynth.imageset import ImageSet, ImageSetError

FILTERS = ("best_of", "confidence", "clip", "dedup", "rebalance")
PIXEL_DEDUP_EMBEDDING = "pixels:16"


@dataclass
class CurationLog:
    """What curation did, as stored under ``imageset.json["curation"]``."""

    input: dict[str, Any]
    filters: list[dict[str, Any]] = field(default_factory=list)
    drops: list[dict[str, Any]] = field(default_factory=list)

    def record(self, samples: ImageSet, index: int, name: str, **detail: Any) -> None:
        r = samples.records[index]
        self.drops.append({"file_name": r.file_name, "label": r.label, "sha256": r.sha256, "filter": name,
                           **{k: _plain(v) for k, v in detail.items()}})

    def to_dict(self, kept_counts: dict[str, int]) -> dict[str, Any]:
        by_filter = Counter(d["filter"] for d in self.drops)
        by_class: dict[str, dict[str, int]] = {f["filter"]: {} for f in self.filters}
        for d in self.drops:
            by_class[d["filter"]][d["label"]] = by_class[d["filter"]].get(d["label"], 0) + 1
        return {
            "input": self.input,
            "filters": self.filters,
            "kept": {"total": sum(kept_counts.values()), "counts": kept_counts},
            "dropped": {"total": len(self.drops),
                        "by_filter": {f["filter"]: by_filter.get(f["filter"], 0) for f in self.filters},
                        "by_filter_and_class": by_class},
            "drops": self.drops,
        }


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return round(float(value), 6) if isinstance(value, np.floating) else value.item()
    if isinstance(value, float):
        return round(value, 6)
    return value


def curate(samples: ImageSet | str | os.PathLike, out: str | os.PathLike, *, dedup: float | None = None,
           min_confidence: float | None = None, min_clip_score: float | None = None,
           clip_top_fraction: float | None = None, classifier: Any = None, clip: Any = None,
           rebalance: bool = True, seed: int = 0, embedding: str | Extractor | None = None,
           batch_size: int = 256, best_of: int = 1, reward: str = "confidence") -> ImageSet:
    """Apply the requested filters to ``samples`` and write the kept images to ``out`` (kind ``curated``).

    ``classifier`` is a checkpoint folder (or a loaded classifier) trained on real data, needed by
    ``min_confidence``; ``clip`` is an open_clip model name for the ``clip:`` extractor (or an
    extractor object), needed by ``min_clip_score`` / ``clip_top_fraction``. ``embedding`` chooses
    the space for ``dedup``: default the ``pixels:16`` thumbnail correlation (a near-copy is a perceptual
    notion; a classifier's features put a class's images close together by design, so ``domain:`` at
    0.98 would drop 69% of the real digits, see benchmarks/README.md); any ``imgsynth.metrics.features``
    name or ``pixels:<size>`` works. ``best_of`` = K > 1 first keeps the best of every K candidates under
    the registered ``reward`` (``imgsynth.curation.rewards.REWARDS``: ``confidence`` uses ``classifier``,
    ``clip`` uses ``clip``). A filter left at ``None`` is skipped. Raises ``ValueError`` for
    settings that cannot work and ``ImageSetError`` when nothing would be kept.
    """
    samples = samples if isinstance(samples, ImageSet) else ImageSet.open(samples)
    best_of = check_best_of(best_of)
    context = RewardContext(classifier=classifier, clip=clip, batch_size=batch_size)
    if best_of > 1:
        REWARDS[reward].check(reward, context)
    _check_settings(dedup, min_confidence, min_clip_score, clip_top_fraction, classifier, clip, rebalance,
                    best_of > 1)
    labels = np.asarray(samples.labels)
    alive = np.ones(len(samples), dtype=bool)
    log = CurationLog(input={"id": samples.id, "path": str(samples.root), "num_images": len(samples),
                             "counts": samples.counts})
    chosen: list[dict[str, Any]] = []

    if best_of > 1:
        alive &= _best_of_filter(samples, best_of, reward, context, log, chosen)
    if min_confidence is not None:
        alive &= _confidence_filter(samples, alive, classifier, min_confidence, batch_size, log)
    if min_clip_score is not None or clip_top_fraction is not None:
        alive &= _clip_filter(samples, alive, clip, min_clip_score, clip_top_fraction, batch_size, log)
    if dedup is not None:
        extractor = resolve_embedding(embedding or PIXEL_DEDUP_EMBEDDING)
        alive &= _dedup_filter(samples, alive, labels, extractor, dedup, batch_size, log)
    if rebalance:
        alive &= _rebalance_filter(samples, alive, labels, seed, log)

    kept = np.flatnonzero(alive).tolist()
    if not kept:
        raise ImageSetError(f"{out}: curation kept none of the {len(samples)} images of {samples.root} "
                            f"(dropped per filter: {dict(Counter(d['filter'] for d in log.drops))}); "
                            "loosen the thresholds")
    kept_counts = {c: 0 for c in samples.classes}
    kept_counts.update(Counter(samples.records[i].label for i in kept))
    emptied = [c for c in samples.classes if samples.counts.get(c) and not kept_counts[c]]
    if emptied:
        import warnings

        warnings.warn(f"{out}: curation removed every image of class(es) {emptied}", Note, stacklevel=2)
    record = log.to_dict(kept_counts)
    if chosen:
        kept_files = {samples.records[i].file_name for i in kept}
        record["best_of"] = [c for c in chosen if c["file_name"] in kept_files]
    return samples.subset(kept, out, kind="curated", config={"curation": {"filters": log.filters}},
                          annotations={"curation": record})


def _check_settings(dedup: float | None, min_confidence: float | None, min_clip_score: float | None,
                    clip_top_fraction: float | None, classifier: Any, clip: Any, rebalance: bool,
                    choosing: bool = False) -> None:
    if dedup is not None and not -1.0 <= dedup <= 1.0:
        raise ValueError(f"dedup is a cosine-similarity threshold and must lie in [-1, 1], got {dedup}")
    if min_confidence is not None:
        if not 0.0 <= min_confidence <= 1.0:
            raise ValueError(f"min_confidence is a probability and must lie in [0, 1], got {min_confidence}")
        if classifier is None:
            raise ValueError("min_confidence needs a classifier trained on real data (--classifier CKPT)")
    if (min_clip_score is not None or clip_top_fraction is not None) and not clip:
        raise ValueError("the CLIP alignment filter needs a CLIP model (--clip NAME, open_clip weights on disk)")
    if clip_top_fraction is not None and not 0.0 < clip_top_fraction <= 1.0:
        raise ValueError(f"clip_top_fraction must lie in (0, 1], got {clip_top_fraction}")
    if all(v is None for v in (dedup, min_confidence, min_clip_score, clip_top_fraction)) and not rebalance \
            and not choosing:
        raise ValueError("no curation filter requested: set best_of (> 1), dedup, min_confidence, min_clip_score, "
                         "clip_top_fraction or rebalance")


def _best_of_filter(samples: ImageSet, k: int, reward: str, context: RewardContext, log: CurationLog,
                    chosen: list[dict[str, Any]]) -> np.ndarray:
    """Keep the best-rewarded candidate of every group of ``k`` (see ``imgsynth.curation.best_of``)."""
    groups, left_out = candidate_groups(samples.labels, k)
    log.filters.append({"filter": "best_of", "k": k, "reward": reward, "groups": len(groups),
                        "grouping": "within class: positions g, g + m, …, g + (k − 1)m, m = ⌊n_c / k⌋"})
    keep = np.zeros(len(samples), dtype=bool)
    grouped = sorted(p for group in groups for p in group)
    values = np.full(len(samples), np.nan)
    if grouped:
        values[grouped] = np.asarray(REWARDS[reward].score(samples, grouped, context), dtype=np.float64)
    if np.isnan(values[grouped]).any():
        raise ValueError(f"reward {reward!r} gave NaN for images of {samples.root}")
    winners, ranks = choose_best(values, groups)
    for group, winner in zip(groups, winners):
        keep[winner] = True
        chosen.append({"file_name": samples.records[winner].file_name, "label": samples.records[winner].label,
                       "k": k, "reward": _plain(values[winner]), "rank": 1})
        for position in group:
            if position != winner:
                log.record(samples, position, "best_of", k=k, reward=values[position], rank=ranks[position],
                           kept_instead=samples.records[winner].file_name)
    for position in left_out:
        log.record(samples, position, "best_of", k=k, reason="incomplete group")
    return keep


def _confidence_filter(samples: ImageSet, alive: np.ndarray, classifier: Any, threshold: float,
                       batch_size: int, log: CurationLog) -> np.ndarray:
    indices = np.flatnonzero(alive)
    label_probability, predicted, classes = label_probabilities(samples, indices, classifier, batch_size)
    keep_here = keep_confident(label_probability, threshold)
    log.filters.append({"filter": "confidence", "min_confidence": threshold, "classifier": _name(classifier)})
    keep = np.ones_like(alive)
    for position in np.flatnonzero(~keep_here):
        i = indices[position]
        keep[i] = False
        log.record(samples, i, "confidence", probability=label_probability[position],
                   predicted=classes[int(predicted[position])])
    return keep


def _clip_filter(samples: ImageSet, alive: np.ndarray, clip: Any, min_score: float | None,
                 top_fraction: float | None, batch_size: int, log: CurationLog) -> np.ndarray:
    log.filters.append({"filter": "clip", "min_clip_score": min_score, "top_fraction": top_fraction,
                        "model": _name(clip)})
    keep = np.ones_like(alive)
    indices = np.flatnonzero(alive)
    if not len(indices):
        return keep
    scores = clip_scores(samples, indices, clip, batch_size)
    keep_here = keep_aligned(scores, np.asarray(samples.labels)[indices], min_score, top_fraction)
    for position in np.flatnonzero(~keep_here):
        keep[indices[position]] = False
        log.record(samples, indices[position], "clip", clip_score=scores[position])
    return keep


def _dedup_filter(samples: ImageSet, alive: np.ndarray, labels: np.ndarray, extractor: Extractor,
                  threshold: float, batch_size: int, log: CurationLog) -> np.ndarray:
    log.filters.append({"filter": "dedup", "threshold": threshold, "embedding": extractor.id,
                        "scope": "within class"})
    keep = np.ones_like(alive)
    indices = np.flatnonzero(alive)
    if not len(indices):
        return keep
    features = embed_images(samples, extractor, indices, batch_size)
    for label in np.unique(labels[indices]):
        members = np.flatnonzero(labels[indices] == label)
        kept, duplicate_of, similarity = greedy_dedup(features[members], threshold)
        for local in np.flatnonzero(~kept):
            i = indices[members[local]]
            original = indices[members[duplicate_of[local]]]
            keep[i] = False
            log.record(samples, i, "dedup", duplicate_of=samples.records[original].file_name,
                       similarity=similarity[local])
    return keep


def _rebalance_filter(samples: ImageSet, alive: np.ndarray, labels: np.ndarray, seed: int,
                      log: CurationLog) -> np.ndarray:
    indices = np.flatnonzero(alive)
    keep_here = rebalance_mask(labels[indices], seed)
    target = int(keep_here.sum() // max(1, len(np.unique(labels[indices])))) if len(indices) else 0
    log.filters.append({"filter": "rebalance", "seed": seed})
    keep = np.ones_like(alive)
    for position in np.flatnonzero(~keep_here):
        keep[indices[position]] = False
        log.record(samples, indices[position], "rebalance", per_class=target)
    return keep


def _name(thing: Any) -> str:
    if isinstance(thing, (str, os.PathLike)):
        return str(thing)
    return str(getattr(thing, "id", None) or getattr(thing, "path", None) or type(thing).__name__)


def curation_record(image_set: ImageSet) -> dict[str, Any] | None:
    """The ``curation`` record of a curated set's manifest (None for sets that were not curated)."""
    return image_set.manifest.get("curation")


__all__ = ["FILTERS", "CurationLog", "clip_scores", "curate", "curation_record"]
