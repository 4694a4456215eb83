"""The work manifest of a generation job: which image, of which class, from which seed, in which shard.

Every image gets its own seed derived from (base seed, class name, index within class), so the same
image comes out however the work is batched, split across workers or resumed. Work is cut into fixed
shards of the manifest; a shard is the unit of computation, of writing and of resuming, so workers that
take whole shards produce byte-identical sets.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from imgsynth.limits import MAX_PER_CLASS, check_count

DEFAULT_SHARD_SIZE = 64


def image_seed(base_seed: int, label: str, index: int) -> int:
    """A 63-bit seed from (base seed, class name, index): stable across class order and class count."""
    digest = hashlib.sha256(f"imgsynth/{int(base_seed)}/{label}/{int(index)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


@dataclass(frozen=True)
class WorkItem:
    """One image to make: its class, its index within the class, its seed, and text for text models."""

    label: str
    index: int
    seed: int
    prompt: str = ""
    caption: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def image_id(self) -> str:
        return f"{self.label}-{self.index:06d}".replace(" ", "_")


def check_per_class(per_class: int, name: str = "per_class") -> int:
    """``per_class`` when it lies in [1, ``MAX_PER_CLASS``]; else one ``ValueError`` naming ``name`` (a flag or
    field), raised before any work list is built."""
    return check_count(name, per_class, MAX_PER_CLASS)


def balanced_work(classes: Sequence[str], per_class: int, base_seed: int) -> list[WorkItem]:
    """``per_class`` items for every class, interleaved by index so each shard mixes classes."""
    check_per_class(per_class)
    if not classes:
        raise ValueError("no classes to generate")
    return [WorkItem(label, index, image_seed(base_seed, label, index))
            for index in range(per_class) for label in classes]


def shards(items: Sequence[WorkItem], shard_size: int = DEFAULT_SHARD_SIZE) -> list[list[WorkItem]]:
    """Cut the manifest into consecutive fixed-size shards (the last may be shorter)."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {shard_size}")
    return [list(items[i:i + shard_size]) for i in range(0, len(items), shard_size)]


def batches(items: Sequence[WorkItem], batch_size: int) -> Iterator[list[WorkItem]]:
    """Consecutive batches within one shard."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    for i in range(0, len(items), batch_size):
        yield list(items[i:i + batch_size])
