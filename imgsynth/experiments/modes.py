"""Loop modes: how generation k of a chain gets its training set from the real data and the earlier generations.

A loop mode is one function from :class:`ModeInputs` (the real data, the chain's earlier generations, the
generation index, where to write) to the next training set, registered in :data:`LOOP_MODES` under the
name a recipe's ``[loop] modes`` uses. A mode may also carry a ``check``, run once with the real data
before any task starts, that refuses a run it cannot serve (``fresh`` needs a new real chunk every
generation). Adding a mode is one function and one registration, e.g. from a plugin or a test::

    def halve(inputs: ModeInputs) -> ImageSet:
        previous = inputs.previous
        return previous.subset(range(0, len(previous), 2), inputs.out, config={"loop": "halve"})

    LOOP_MODES.register("halve", LoopMode(halve))

Rules the loop relies on, which every mode keeps:

- Deterministic: the same inputs give the same set (byte for byte); draw randomness only from
  :meth:`ModeInputs.seed_for`, which hashes the replicate, the purpose and the generation.
- A new set is written to ``inputs.out`` (intermediate sets under ``inputs.scratch``, which the loop empties
  before and deletes after); a mode may instead return one of its inputs itself (``replace`` returns the
  previous generation's output), and then writes nothing.
- Once ``inputs.out`` holds a complete set the loop reuses it and does not call the mode again, so a killed
  run resumes with the same training set.

Built-ins: ``replace``, ``accumulate``, ``mix`` and ``fresh``, and the loops of the 2023–2025 collapse
papers: ``fresh-mix`` (new real data every generation plus synthetic data, Alemohammad et al. 2023),
``augment`` (the whole real set plus λ·|real| synthetic, Bertrand et al. 2024), ``accumulate-subsample``
(a fixed-size draw from everything accumulated, Kazdan et al. 2024) and ``weighted`` (fresh real and
synthetic data weighted w : 1 − w through the training set's ``weight`` column, He, Xu and Cheng 2025).
Each records its settings and what it drew in the training set's manifest (``config``); their expected
behaviour on the exact-theory kinds is :mod:`imgsynth.experiments.theory` (derived in ``docs/theory.md``).

The loop runs a mode named ``<mode>+curate`` (:data:`CURATED_SUFFIX`) as ``<mode>`` with the ``[curate]``
stage applied to every generation's samples (best-of-K under a reward, ``best_of``/``reward``, which makes such a
generation sample K × ``per_class`` candidates per class; then the filters), so ``history`` then holds the
curated sets, ``per_class`` per class after best-of-K as without it.

The mode of a chain is looked up in the process that starts the run and handed to the chain's task, so a
mode registered at run time also reaches local worker processes, as long as its function can be imported
there by module and name (a function of an importable module, not of ``__main__``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from imgsynth.imageset import ImageSet, concatenate, stratified_split_indices
from imgsynth.registry import Registry

# A loop mode with this suffix ("replace+curate") runs the base mode with the [curate] filters applied,
# so one run can compare a mode with and without curation.
CURATED_SUFFIX = "+curate"


def base_mode(mode: str) -> str:
    """The loop mode a mode name runs: ``replace+curate`` → ``replace``."""
    return mode.removesuffix(CURATED_SUFFIX)


def loop_seed(seed: int, purpose: str, generation: int) -> int:
    """A seed for one purpose ("train", "mix") of one generation of replicate ``seed``.

    Hashed rather than ``seed + generation``, which would give replicate 1's generation 0 the weights
    of replicate 0's generation 1: replicates must not share any stream.
    """
    digest = hashlib.sha256(f"imgsynth-loop/{seed}/{purpose}/{generation}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


@dataclass(frozen=True)
class LoopData:
    """What every generation of a run shares: the real data and the recipe's settings a mode may read."""

    real_train: ImageSet  # generation 0's training set (the real data, thinned by [data] minority_classes)
    real_pool: ImageSet  # the whole real training split, where a mode draws new real images from
    per_class: int  # samples per class each generation draws ([generator] per_class)
    generations: int  # generations per chain, generation 0 included ([loop] generations)
    mix_real_fraction: float  # λ of the mix mode ([loop] mix_real_fraction)
    # The other modes' settings ([loop] fields of the same names; see experiments.config.LoopConfig).
    fresh_per_class: int = 0  # new real images per class per generation (fresh-mix, weighted); 0: per_class
    fresh_synthetic: str = "previous"  # fresh-mix's synthetic part: "previous" generation or "all" earlier ones
    augment_ratio: float = 0.1  # augment's λ: λ·|real| synthetic images next to the whole real set
    subsample_size: int = 0  # accumulate-subsample's training-set size; 0: as many as the real training set
    real_weight: float = 0.5  # weighted's w: the real part's share of the total training weight

    @property
    def samples_per_generation(self) -> int:
        """How many images a generation passes on before any filter: per_class × classes (best-of-K samples K
        times as many candidates and keeps this many)."""
        return self.per_class * len(self.real_pool.classes)

    @property
    def fresh_per_generation(self) -> int:
        """New real images each generation of ``fresh-mix`` and ``weighted`` takes: fresh_per_class × classes."""
        return (self.fresh_per_class or self.per_class) * len(self.real_pool.classes)

    @property
    def augment_count(self) -> int:
        """Synthetic images ``augment`` adds to the real set: round(augment_ratio × |real|)."""
        return int(round(self.augment_ratio * len(self.real_train)))

    @property
    def subsample_count(self) -> int:
        """The size of ``accumulate-subsample``'s training set."""
        return self.subsample_size or len(self.real_train)


# LoopData's fields that a recipe's [loop] table sets under the same names, None there meaning the default here.
MODE_SETTINGS = ("fresh_per_class", "fresh_synthetic", "augment_ratio", "subsample_size", "real_weight")


def mode_settings(loop: Any) -> dict[str, Any]:
    """The mode settings a ``[loop]`` table (``experiments.config.LoopConfig``) gives, leaving out those it
    leaves unset, as keyword arguments of :class:`LoopData`."""
    return {name: getattr(loop, name) for name in MODE_SETTINGS if getattr(loop, name, None) is not None}


@dataclass(frozen=True)
class ModeInputs:
    """Everything a loop mode may read to build generation ``generation``'s training set."""

    data: LoopData
    history: Sequence[ImageSet]  # this chain's outputs of generations 0 … generation − 1, in order
    generation: int  # the generation being trained, ≥ 1
    seed: int  # the replicate's seed
    out: Path  # where a newly written training set goes
    scratch: Path  # room for intermediate sets; empty when the mode is called, deleted afterwards

    @property
    def previous(self) -> ImageSet:
        """The output of the generation before this one (its samples, curated when the chain curates)."""
        return self.history[-1]

    def seed_for(self, purpose: str) -> int:
        """A seed of its own for one purpose of this generation of this replicate (see :func:`loop_seed`)."""
        return loop_seed(self.seed, purpose, self.generation)


@dataclass(frozen=True)
class LoopMode:
    """A registered loop mode: ``build`` makes the training set; ``check``, when given, runs once before any
    task with the run's real data and raises ``ValueError`` (one line naming ``[loop] mode '<name>'``) when
    the mode cannot serve every generation."""

    build: Callable[[ModeInputs], ImageSet]
    check: Callable[[LoopData], None] | None = None

    def __post_init__(self) -> None:
        # The registry names an entry by its module and qualified name; borrowing those of ``build`` makes a
        # refused registration name both functions ("… registered as imgsynth.experiments.modes:replace").
        object.__setattr__(self, "__module__", self.build.__module__)
        object.__setattr__(self, "__qualname__", self.build.__qualname__)


LOOP_MODES: Registry[LoopMode] = Registry("loop mode")


# ------------------------------------------------------------------------------------------ built-in modes

def replace(inputs: ModeInputs) -> ImageSet:
    """Train on the previous generation's output alone (the classic collapse loop); writes nothing."""
    return inputs.previous


def accumulate(inputs: ModeInputs) -> ImageSet:
    """Train on the real data and every earlier generation's output, kept whole."""
    return concatenate([inputs.data.real_train, *inputs.history], inputs.out,
                       config={"loop": "accumulate", "generation": inputs.generation})


def mix(inputs: ModeInputs) -> ImageSet:
    """As many images as the previous generation gave: a fraction λ drawn from the real data, the rest from
    the previous generation's output, both stratified by class with one seed."""
    previous, fraction = inputs.previous, inputs.data.mix_real_fraction
    n = len(previous)
    n_real = int(round(fraction * n))
    seed = inputs.seed_for("mix")
    pieces = []
    if n_real:
        pieces.append(_stratified_sample(inputs.data.real_train, n_real, seed, inputs.scratch / "real"))
    if n - n_real:
        pieces.append(_stratified_sample(previous, n - n_real, seed, inputs.scratch / "synthetic"))
    return concatenate(pieces, inputs.out, config={"loop": "mix", "generation": inputs.generation,
                                                   "real_fraction": fraction})


def fresh(inputs: ModeInputs) -> ImageSet:
    """A new, disjoint, stratified chunk of real images every generation, as many as a generation samples
    (the control: what the loop does with no synthetic data at all)."""
    data = inputs.data
    chunk = _fresh_chunk(data.real_pool, data.samples_per_generation, inputs.generation, inputs.seed)
    return data.real_pool.subset(chunk, inputs.out, config={"loop": "fresh", "generation": inputs.generation})


def check_fresh(data: LoopData) -> None:
    """Refuse a run whose real pool cannot give every generation after the first its own chunk."""
    needed = data.samples_per_generation * (data.generations - 1)
    if needed > len(data.real_pool):
        raise ValueError(f"[loop] mode 'fresh' needs {needed} new real training images "
                         f"(per_class × classes × (generations − 1)) but {data.real_pool.root} has "
                         f"{len(data.real_pool)}; lower per_class or generations, or drop 'fresh'")


def fresh_mix(inputs: ModeInputs) -> ImageSet:
    """MAD's fresh-data loop: a new, disjoint, stratified chunk of real images (``fresh_per_class`` per class;
    chunks never repeat within a chain) plus the whole output of the previous generation
    (``fresh_synthetic = "previous"``) or of every earlier one (``"all"``)."""
    data = inputs.data
    chunk = _fresh_chunk(data.real_pool, data.fresh_per_generation, inputs.generation, inputs.seed)
    synthetic = [inputs.previous] if data.fresh_synthetic == "previous" else list(inputs.history)
    return concatenate([data.real_pool, *synthetic], inputs.out, indices=[chunk, *[None] * len(synthetic)],
                       config={"loop": "fresh-mix", "generation": inputs.generation,
                               "fresh_real": len(chunk), "synthetic": data.fresh_synthetic,
                               "synthetic_sets": [s.id for s in synthetic]})


def augment(inputs: ModeInputs) -> ImageSet:
    """Synthetic augmentation (Bertrand et al. 2024): the whole real training set plus round(λ·|real|) images
    of the previous generation's output (all of it when it has no more), drawn stratified by class."""
    data, previous = inputs.data, inputs.previous
    count = min(data.augment_count, len(previous))
    chosen = _stratified_indices(previous, count, inputs.seed_for("augment"))
    return concatenate([data.real_train, previous], inputs.out, indices=[None, chosen],
                       config={"loop": "augment", "generation": inputs.generation,
                               "augment_ratio": data.augment_ratio, "synthetic": len(chosen)})


def accumulate_subsample(inputs: ModeInputs) -> ImageSet:
    """Kazdan et al. 2024: a stratified draw of a fixed size (``subsample_size``) from the real data and every
    earlier generation's output together, each image equally likely within its class."""
    parts = [inputs.data.real_train, *inputs.history]
    labels = [r.label for part in parts for r in part.records]
    chosen = _stratified_positions(labels, inputs.data.subsample_count, inputs.seed_for("subsample"))
    offsets = np.cumsum([0, *map(len, parts)])
    indices = [[int(i - offsets[p]) for i in chosen if offsets[p] <= i < offsets[p + 1]] for p in range(len(parts))]
    keep = [p for p in range(len(parts)) if indices[p]]
    return concatenate([parts[p] for p in keep], inputs.out, indices=[indices[p] for p in keep],
                       config={"loop": "accumulate-subsample", "generation": inputs.generation,
                               "subsample_size": len(chosen), "pool": int(offsets[-1]),
                               "drawn_per_part": {parts[p].id: len(indices[p]) for p in keep}})


def weighted(inputs: ModeInputs) -> ImageSet:
    """He, Xu and Cheng 2025: a fresh real chunk (as ``fresh-mix``) and the previous generation's output,
    weighted so the real part holds a share w (``real_weight``) of the total training weight and the synthetic
    part 1 − w; per image, w·T/r and (1 − w)·T/s for r real and s synthetic of T images (mean weight 1)."""
    data, previous = inputs.data, inputs.previous
    chunk = _fresh_chunk(data.real_pool, data.fresh_per_generation, inputs.generation, inputs.seed)
    w, total = data.real_weight, len(chunk) + len(previous)
    weights = [w * total / len(chunk), (1.0 - w) * total / len(previous)]
    return concatenate([data.real_pool, previous], inputs.out, indices=[chunk, None], weights=weights,
                       config={"loop": "weighted", "generation": inputs.generation, "real_weight": w,
                               "fresh_real": len(chunk), "synthetic": len(previous)})


def check_fresh_mix(data: LoopData) -> None:
    """Refuse a run whose real pool cannot give every generation after the first its own chunk."""
    _check_chunks(data, "fresh-mix")


def check_weighted(data: LoopData) -> None:
    """As ``fresh-mix``: every generation after the first needs its own chunk of real images."""
    _check_chunks(data, "weighted")


def check_augment(data: LoopData) -> None:
    """Refuse λ·|real| larger than what a generation samples (there would be nothing to draw them from)."""
    if data.augment_count > data.samples_per_generation:
        raise ValueError(f"[loop] mode 'augment' needs round(augment_ratio × real images) = {data.augment_count} "
                         f"synthetic images per generation but a generation samples {data.samples_per_generation} "
                         "(per_class × classes); raise per_class or lower augment_ratio")


def check_accumulate_subsample(data: LoopData) -> None:
    """Refuse a training-set size larger than generation 1's pool (the real data plus generation 0's samples)."""
    pool = len(data.real_train) + data.samples_per_generation
    if data.subsample_count > pool:
        raise ValueError(f"[loop] mode 'accumulate-subsample': subsample_size = {data.subsample_count} is more than "
                         f"generation 1 can draw from ({len(data.real_train)} real + {data.samples_per_generation} "
                         "sampled); lower subsample_size")


def _check_chunks(data: LoopData, mode: str) -> None:
    needed = data.fresh_per_generation * (data.generations - 1)
    if needed > len(data.real_pool):
        raise ValueError(f"[loop] mode '{mode}' needs {needed} new real training images (fresh_per_class × "
                         f"classes × (generations − 1)) but {data.real_pool.root} has {len(data.real_pool)}; lower "
                         f"fresh_per_class, per_class or generations, or drop '{mode}'")


def _stratified_positions(labels: Sequence[str], n: int, seed: int) -> list[int]:
    """``n`` positions of ``labels`` with class proportions kept (stratified_split_indices' rounding), seeded."""
    if n >= len(labels):
        return list(range(len(labels)))
    names = sorted(set(labels))
    _, chosen = stratified_split_indices([names.index(label) for label in labels], n / len(labels), seed)
    return chosen


def _stratified_indices(source: ImageSet, n: int, seed: int) -> list[int]:
    """``n`` indices of ``source`` with class proportions kept, seeded (all of them when n ≥ its size)."""
    return _stratified_positions([r.label for r in source.records], n, seed)


def _stratified_sample(source: ImageSet, n: int, seed: int, out: Path) -> ImageSet:
    """``n`` images of ``source`` with class proportions kept, seeded."""
    if n >= len(source):
        return source
    _, chosen = stratified_split_indices(source.labels, n / len(source), seed)
    return source.subset(chosen, out)


def _fresh_chunk(pool: ImageSet, n: int, k: int, seed: int) -> list[int]:
    """The k-th of disjoint stratified chunks of ``n`` real images (chunk 0 is never used: gen 0 is shared)."""
    order = np.random.default_rng(seed).permutation(len(pool))
    labels = np.asarray(pool.labels)[order]
    # Interleave classes so every chunk is stratified: sort by (rank within class, class).
    rank = np.zeros(len(order), dtype=int)
    for label in np.unique(labels):
        where = labels == label
        rank[where] = np.arange(where.sum())
    interleaved = order[np.lexsort((labels, rank))]
    start = (k - 1) * n
    return sorted(interleaved[start:start + n].tolist())


# Registration order is the order error messages and --help list the modes in.
LOOP_MODES.register("replace", LoopMode(replace))
LOOP_MODES.register("accumulate", LoopMode(accumulate))
LOOP_MODES.register("mix", LoopMode(mix))
LOOP_MODES.register("fresh", LoopMode(fresh, check=check_fresh))
LOOP_MODES.register("fresh-mix", LoopMode(fresh_mix, check=check_fresh_mix))
LOOP_MODES.register("augment", LoopMode(augment, check=check_augment))
LOOP_MODES.register("accumulate-subsample", LoopMode(accumulate_subsample, check=check_accumulate_subsample))
LOOP_MODES.register("weighted", LoopMode(weighted, check=check_weighted))

__all__ = ["CURATED_SUFFIX", "LOOP_MODES", "MODE_SETTINGS", "LoopData", "LoopMode", "ModeInputs", "base_mode",
           "loop_seed", "mode_settings"]
