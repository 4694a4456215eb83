"""One call from two ImageSets to tidy metric rows: overall and per class, with bootstrap intervals.

``evaluate(candidate, reference, extractor)`` extracts (cached) features, then ``evaluate_features``
computes every metric declared in ``imgsynth.metrics.registry`` (``METRICS``) that applies to what the
extractor supplies (``FeatureExtractor.supplies``) and the data at hand. The built-in ones:

* two-sample, candidate vs reference: ``fid`` (Fréchet distance in the extractor's feature space; FID
  proper with ``inception``), ``kid``, ``precision``, ``recall``, ``density``, ``coverage`` and, for
  ``clip:`` extractors, ``cmmd``;
* one-sample, candidate only: ``diversity`` (``clip_diversity`` for ``clip:`` extractors), ``vendi`` and,
  for ``clip:`` extractors, ``clip_score`` of each image against its caption (its class name when the
  caption is empty);
* against the generator's training set, only when one is given (``train_set``): ``memorisation_rate``,
  ``authenticity``, ``knn_entropy`` (the samples') and ``train_knn_entropy`` (the training set's; its row's
  ``n`` is still the candidate count).

Rows come two-sample metrics first, then one-sample ones, each in registration order. Per class, each
metric runs on that class's images in both sets. A metric that cannot run for a class
(too few images, class missing from one set) is left out and said so in an ``EvaluationNote`` warning;
no row ever carries NaN. ``n`` in a row is the number of candidate images the value was computed on.

Both sets must hold images of one size and mode (the manifests' ``image_size`` and ``image_mode``):
otherwise every metric would measure the difference in resolution or colour as much as the images, so
``evaluate`` refuses, naming both sets, unless ``resize=True`` converts the candidate to the reference's
size and mode (``conform_to``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import partial
from typing import Any, Collection, Iterable, Sequence

import pandas as pd
import torch
from PIL import Image

from imgsynth.notes import Note
from imgsynth.imageset import ImageSet
from imgsynth.metrics.bootstrap import bootstrap_intervals
from imgsynth.metrics.distances import BiasedEstimateWarning
from imgsynth.metrics.features import FeatureExtractor, cached_features, create_extractor
from imgsynth.metrics.registry import (CAPTIONS, DATA_NEEDS, FEATURES, METRICS, NEED_WORDS, TEXT_ENCODER,
                                       TRAIN_FEATURES, MetricFamily, MetricSettings, applies, bounds, resolve)

ALL = "all"
FRAME_COLUMNS = ["metric", "class", "value", "ci_low", "ci_high", "n", "extractor"]


class EvaluationNote(Note):
    """Something the reader of a metrics table should know: a skipped metric, a biased estimate."""


@dataclass
class MetricRow:
    """One number of a results table: ``metric`` for ``class_name`` ("all" or a class), with its interval."""

    metric: str
    class_name: str
    value: float
    ci_low: float | None
    ci_high: float | None
    n: int
    extractor: str


@dataclass(frozen=True)
class _Chosen:
    """A family to compute: its members that apply (named in notes) and those whose rows are kept."""

    family: MetricFamily
    names: tuple[str, ...]
    wanted: tuple[str, ...]


def known_metrics() -> list[str]:
    """The metrics ``evaluate`` can compute (declared in ``imgsynth.metrics.registry`` with a family)."""
    return [name for name, metric in METRICS.items() if metric.family is not None]


def _chosen(wanted: Collection[str], supplied: set[str]) -> list[_Chosen]:
    """The families of the ``wanted`` metrics: two-sample first, then one-sample, each in registration order."""
    groups: dict[MetricFamily, list[str]] = {}
    for name in known_metrics():
        family = METRICS[name].family
        if family is not None and applies(name, supplied):
            groups.setdefault(family, []).append(name)
    chosen = [_Chosen(family, tuple(members), tuple(m for m in members if m in wanted))
              for family, members in groups.items()]
    chosen = [c for c in chosen if c.wanted]
    return sorted(chosen, key=lambda c: not c.family.two_sample)  # a stable sort: registration order within each


def _missing(name: str, supplied: set[str]) -> list[str]:
    return sorted(METRICS[name].requires - supplied)


def _unmet(names: Iterable[str], supplied: set[str], extractor_name: str) -> str:
    """Why ``names`` cannot be computed with ``supplied``: one clause per missing need."""
    by_need: dict[str, list[str]] = {}
    for name in names:
        missing = _missing(name, supplied)
        # What the extractor lacks comes first: without it the data's inputs would not help.
        from_extractor = [need for need in missing if need not in DATA_NEEDS]
        for need in from_extractor or missing:
            by_need.setdefault(need, []).append(name)
    hint = {TEXT_ENCODER: f"; extractor {extractor_name!r} supplies no text encoder (use a 'clip:' extractor)",
            CAPTIONS: " (candidate_text)", TRAIN_FEATURES: " (give the training set: train_set, --train)"}
    return "; ".join(f"{', '.join(sorted(members))} need {NEED_WORDS[need]}{hint.get(need, '')}"
                     for need, members in by_need.items())


def _select(metrics: Sequence[str] | None, extractor_supplies: Collection[str], data_supplies: Collection[str],
            extractor_name: str) -> tuple[list[_Chosen], list[str]]:
    """The families to compute, and notes on metrics left out for want of an input the data should supply.

    By default every declared metric that applies: one the extractor cannot serve (CMMD outside a CLIP
    space) is left out silently, one whose data input is missing (CLIP score without captions) with a
    note. A request (``metrics``) for an unknown metric, or for one that cannot be computed, is a ValueError.
    """
    supplied = set(extractor_supplies) | set(data_supplies)
    known = known_metrics()
    if metrics is None:
        notes = [f"{name} skipped: no {NEED_WORDS[need]} were given" for name in known
                 for need in _missing(name, supplied) if set(_missing(name, supplied)) <= DATA_NEEDS]
        return _chosen(known, supplied), notes
    elsewhere = sorted(m for m in set(metrics) if m in METRICS and METRICS[m].family is None)
    if elsewhere:
        raise ValueError(f"{', '.join(elsewhere)}: not computed from features (the experiment loop produces them); "
                         f"metrics from features: {', '.join(known)}")
    unknown = sorted(set(metrics) - set(known))
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; known: {', '.join(known)}")
    wanted = {resolve(m, supplied) for m in metrics}
    unmet = [n for n in known if n in wanted and not applies(n, supplied)]
    if unmet:
        raise ValueError(_unmet(unmet, supplied, extractor_name))
    return _chosen(wanted, supplied), []


def _group_rows(labels: Sequence[str]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(label, []).append(i)
    return groups


def evaluate_features(candidate: torch.Tensor, reference: torch.Tensor, *, candidate_labels: Sequence[str],
                      reference_labels: Sequence[str], extractor: str, classes: Sequence[str] | None = None,
                      per_class: bool = True, bootstrap: int = 0, seed: int = 0,
                      metrics: Sequence[str] | None = None, candidate_text: torch.Tensor | None = None,
                      supplies: Collection[str] = frozenset({FEATURES}), k: int = 5, kid_subsets: int = 100,
                      kid_subset_size: int = 1000, confidence: float = 0.95, interval: str = "recentred",
                      device: str | torch.device | None = None, train: torch.Tensor | None = None,
                      train_labels: Sequence[str] | None = None) -> list[MetricRow]:
    """Metric rows from feature matrices and per-row class names (what ``evaluate`` runs after extraction).

    ``supplies`` is what the extractor supplies (``FeatureExtractor.supplies``: a CLIP extractor adds a
    text encoder, which enables the CLIP-space metrics and the ``clip_diversity`` name); ``candidate_text``
    (unit text embeddings paired with the candidate rows) supplies the captions ``clip_score`` needs;
    ``train`` (with ``train_labels``), the features of the training set the candidate's generator learned
    from, supplies what the memorisation and k-NN entropy families need (opt-in: without it they are left
    out). The metrics are those declared in ``imgsynth.metrics.registry``. ``classes`` orders the per-class rows
    (default: reference classes first, then any the candidate adds).
    """
    if len(candidate_labels) != candidate.shape[0] or len(reference_labels) != reference.shape[0]:
        raise ValueError(f"labels do not match features: {len(candidate_labels)} labels for {candidate.shape[0]} "
                         f"candidate rows, {len(reference_labels)} for {reference.shape[0]} reference rows")
    if bootstrap < 0:
        raise ValueError(f"bootstrap must be ≥ 0, got {bootstrap}")
    if train is not None and (train_labels is None or len(train_labels) != train.shape[0]):
        raise ValueError(f"labels do not match features: {0 if train_labels is None else len(train_labels)} labels "
                         f"for {train.shape[0]} training-set rows")
    device = torch.device(device) if device else candidate.device
    candidate, reference = candidate.to(device), reference.to(device)
    text = candidate_text.to(device) if candidate_text is not None else None
    train = train.to(device) if train is not None else None
    data_supplies = ({CAPTIONS} if text is not None else set()) | ({TRAIN_FEATURES} if train is not None else set())
    families, notes = _select(metrics, supplies, data_supplies, extractor)
    settings = MetricSettings(k=k, kid_subsets=kid_subsets, kid_subset_size=kid_subset_size, seed=seed)
    limits = bounds()

    cand_groups, ref_groups = _group_rows(candidate_labels), _group_rows(reference_labels)
    train_groups = _group_rows(train_labels) if train is not None and train_labels is not None else {}
    if classes is None:
        classes = list(ref_groups) + [c for c in cand_groups if c not in ref_groups]
    scopes: list[tuple[str, list[int] | None, list[int] | None]] = [(ALL, None, None)]
    if per_class:
        scopes += [(c, cand_groups.get(c, []), ref_groups.get(c, [])) for c in classes]

    rows: list[MetricRow] = []
    biased: list[str] = []
    for scope, cand_rows, ref_rows in scopes:
        c = candidate if cand_rows is None else candidate[cand_rows]
        r = reference if ref_rows is None else reference[ref_rows]
        t = text if text is None or cand_rows is None else text[cand_rows]
        tr = train if train is None or cand_rows is None else train[train_groups.get(scope, [])]
        for chosen in families:
            family = chosen.family
            min_candidate, min_reference = family.minimum(settings)
            uses_train = TRAIN_FEATURES in family.needs
            min_train = family.minimum_train(settings) if uses_train else 0
            if c.shape[0] < min_candidate or (family.two_sample and r.shape[0] < min_reference) or \
                    (uses_train and tr is not None and tr.shape[0] < min_train):
                have = f"{c.shape[0]} candidate" + (f" / {r.shape[0]} reference" if family.two_sample else "")
                need = f"{min_candidate}" + (f" / {min_reference}" if family.two_sample else "")
                if uses_train and tr is not None:
                    have, need = f"{have} / {tr.shape[0]} training-set", f"{need} / {min_train}"
                notes.append(f"{'/'.join(chosen.names)} skipped for class {scope!r}: {have} images, needs {need}")
                continue
            # Training-set rows are bound here, not passed as rows, so the bootstrap never resamples them.
            compute = partial(family.function(), settings, **({"train": tr} if uses_train else {}))
            extra = (t,) if CAPTIONS in family.needs else ()
            args = ((c, r) if family.two_sample else (c,)) + extra
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", BiasedEstimateWarning)
                values = compute(*args)
            if any(issubclass(w.category, BiasedEstimateWarning) for w in caught):
                biased.append(scope)
            for w in caught:
                if not issubclass(w.category, BiasedEstimateWarning):
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            intervals: dict[str, tuple[float, float]] = {}
            if bootstrap and family.resample:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", BiasedEstimateWarning)
                    intervals = bootstrap_intervals(
                        compute, c, r if family.two_sample else None, replicates=bootstrap, seed=seed,
                        confidence=confidence, method=interval, estimate=values, bounds=limits, extra=extra)
            for name, value in values.items():
                if name not in chosen.wanted:
                    continue
                low, high = intervals.get(name, (None, None))
                rows.append(MetricRow(name, scope, float(value), low, high, int(c.shape[0]), extractor))
    if biased:
        notes.append(f"fid for {', '.join(map(repr, biased))}: fewer samples than feature dimensions "
                     f"({candidate.shape[1]}), so the estimate is biased upwards; compare only values with equal n")
    for note in notes:
        warnings.warn(note, EvaluationNote, stacklevel=2)
    return rows


# The filter of the candidate's conversion to the reference's size: antialiased, as in the extractors.
RESIZE_FILTER = Image.Resampling.BICUBIC


def _geometry(image_set: ImageSet) -> tuple[tuple[int, ...] | None, str | None]:
    size = image_set.image_size
    return (tuple(size) if size else None), image_set.manifest.get("image_mode")


def _describe(image_set: ImageSet) -> str:
    size, mode = _geometry(image_set)
    shown_size = f"{size[0]}x{size[1]} (HxW)" if size else "mixed-size"
    return f"{shown_size} {mode or 'mixed-mode'} images"


class _Converted(Sequence[Image.Image]):
    """The images of a set, each converted to ``mode`` and resized to ``size_wh`` as it is read."""

    def __init__(self, images: ImageSet | Sequence[Image.Image], mode: str, size_wh: tuple[int, int]) -> None:
        self.images, self.mode, self.size_wh = images, mode, size_wh

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Image.Image:  # type: ignore[override] - no slices needed
        image = self.images.load_image(index) if isinstance(self.images, ImageSet) else self.images[index]
        image = image.convert(self.mode)
        return image if image.size == self.size_wh else image.resize(self.size_wh, resample=RESIZE_FILTER)


class _ConvertingExtractor(FeatureExtractor):
    """``base``, fed images converted to another mode and size first; the conversion is part of the
    preprocessing, so converted features get cache entries of their own."""

    def __init__(self, base: FeatureExtractor, mode: str, size_wh: tuple[int, int]) -> None:
        self.base, self.mode, self.size_wh = base, mode, size_wh
        self.name, self.id, self.device = base.name, base.id, base.device
        self.preprocessing = f"convert:{mode}|resize:{size_wh[0]}x{size_wh[1]}:pil-bicubic|{base.preprocessing}"

    def extract(self, images: ImageSet | Sequence[Image.Image], batch_size: int = 64,
                num_workers: int = 0) -> torch.Tensor:
        return self.base.extract(_Converted(images, self.mode, self.size_wh), batch_size=batch_size,
                                 num_workers=num_workers)


def conform_to(candidate_set: ImageSet, reference_set: ImageSet, resize: bool) -> tuple[str, tuple[int, int]] | None:
    """How the candidate's images must be converted to be compared with the reference's: ``None`` when
    both sets hold images of one size and mode; with ``resize``, the reference's (mode, (width, height)),
    to which each candidate image is converted (PIL ``Image.convert``: L→RGB copies the grey level,
    RGB→L is ITU-R 601-2 luma) and then resized (PIL bicubic, antialiased); else a ValueError naming both
    sets and what they hold."""
    wanted = _geometry(reference_set)
    if _geometry(candidate_set) == wanted:
        return None
    if not resize:
        raise ValueError(f"{candidate_set.root} holds {_describe(candidate_set)} but the reference "
                         f"{reference_set.root} holds {_describe(reference_set)}; metrics compare sets of one size "
                         "and mode (otherwise they measure the resolution or colour difference): convert the "
                         "candidate to the reference's with --resize (resize=True)")
    size, mode = wanted
    if size is None or mode is None:
        raise ValueError(f"cannot resize {candidate_set.root} to the reference {reference_set.root}: the reference "
                         f"holds {_describe(reference_set)}, so there is no one size and mode to convert to")
    return mode, (size[1], size[0])


def _caption_texts(image_set: ImageSet) -> list[str]:
    return [r.caption.strip() or r.label for r in image_set.records]


def evaluate(candidate_set: ImageSet, reference_set: ImageSet, extractor: str | FeatureExtractor, per_class: bool = True,
             bootstrap: int = 0, seed: int = 0, metrics: Sequence[str] | None = None,
             cache_dir: str | None = None, *, k: int = 5, kid_subsets: int = 100, kid_subset_size: int = 1000,
             confidence: float = 0.95, interval: str = "recentred", batch_size: int = 64,
             device: str | torch.device | None = None, resize: bool = False,
             train_set: ImageSet | None = None) -> list[MetricRow]:
    """Evaluate ``candidate_set`` against ``reference_set`` in ``extractor``'s feature space.

    ``extractor`` is a name (see ``imgsynth.metrics.features``) or a built extractor. Features of both
    sets are cached on disk (``cache_dir``, default ``$IMGSYNTH_CACHE/features``). ``bootstrap`` > 0
    adds seeded bootstrap intervals (``confidence``; ``interval`` "recentred" or "percentile", see
    ``imgsynth.metrics.bootstrap``); ``metrics`` restricts the metrics computed.
    Rows come overall (class "all") first, then per class in the reference set's class order.
    Sets whose image size or mode differ are refused, naming both, unless ``resize`` converts the
    candidate's images to the reference's mode and size (``conform_to`` says how; converted features are
    cached apart from the candidate's own). ``train_set``, the set the candidate's generator was trained on
    (converted like the candidate), adds the metrics that need it (memorisation rate, authenticity, k-NN
    entropy of the samples and of that set).
    """
    conversion = conform_to(candidate_set, reference_set, resize)  # before any weights are loaded
    train_conversion = conform_to(train_set, reference_set, resize) if train_set is not None else None
    extractor = create_extractor(extractor, device)
    candidate_extractor = extractor if conversion is None else _ConvertingExtractor(extractor, *conversion)
    candidate = cached_features(candidate_set, candidate_extractor, cache_dir, batch_size)
    reference = cached_features(reference_set, extractor, cache_dir, batch_size)
    train = None
    if train_set is not None:
        train_extractor = extractor if train_conversion is None else _ConvertingExtractor(extractor, *train_conversion)
        train = cached_features(train_set, train_extractor, cache_dir, batch_size)
    text = extractor.encode_text(_caption_texts(candidate_set)) if TEXT_ENCODER in extractor.supplies else None
    classes = list(reference_set.classes) + [c for c in candidate_set.classes if c not in reference_set.classes]
    return evaluate_features(
        candidate, reference, candidate_labels=[r.label for r in candidate_set.records],
        reference_labels=[r.label for r in reference_set.records], extractor=extractor.name, classes=classes,
        per_class=per_class, bootstrap=bootstrap, seed=seed, metrics=metrics, candidate_text=text,
        supplies=extractor.supplies, k=k, kid_subsets=kid_subsets, kid_subset_size=kid_subset_size,
        confidence=confidence, interval=interval, device=device or extractor.device, train=train,
        train_labels=[r.label for r in train_set.records] if train_set is not None else None)


def rows_to_frame(rows: Iterable[MetricRow]) -> pd.DataFrame:
    """Tidy table with columns metric, class, value, ci_low, ci_high, n, extractor."""
    records: list[dict[str, Any]] = [
        {"metric": r.metric, "class": r.class_name, "value": r.value, "ci_low": r.ci_low, "ci_high": r.ci_high,
         "n": r.n, "extractor": r.extractor} for r in rows]
    return pd.DataFrame.from_records(records, columns=FRAME_COLUMNS)
