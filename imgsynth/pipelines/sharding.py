"""The generator side of the contract with backends: the set a job describes, its work, a per-shard function.

A backend (local loop, Ray actor pool, ``accelerate launch`` ranks) never knows how images are made. It
asks a :class:`ShardGenerator` for the :class:`SetSpec` (the ImageSet's classes, kind, parents, generator
record), the work items and the shard size, cuts the items into fixed shards with
:func:`imgsynth.pipelines.work.shards`, and hands whole shards to ``generate``. Because every image has
its own seed and a shard always holds the same items, whoever computes a shard writes the same bytes,
so the set id does not depend on the backend or the number of workers.

A generator object is shipped to workers by pickling, so it holds only its configuration until
``load()`` (called once per worker) builds the model.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

from imgsynth.imageset import ImageSetWriter, Sample
from imgsynth.pipelines.work import WorkItem, shards


@dataclass(frozen=True)
class SetSpec:
    """The arguments of :class:`~imgsynth.imageset.ImageSetWriter` for the set a job writes.

    Workers rebuild the writer from it, so it must be the same on every worker: parents are given as
    manifest entries (dicts), never as opened ImageSets, once :meth:`for_workers` has normalised them.
    """

    classes: Sequence[str]
    kind: str = "generated"
    parents: Sequence[Any] = ()
    generator: Mapping[str, Any] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)
    license: Mapping[str, Any] | str | None = None
    annotations: Mapping[str, Any] = field(default_factory=dict)

    def writer(self, out: str | Path, *, worker: bool = False) -> ImageSetWriter:
        """Open (or resume) the writer of this set at ``out``.

        The driver's writer holds the folder lock; a ``worker`` writes into the partial the driver
        holds (it must not take the lock, which the driver has, nor discard the driver's partial).
        """
        return ImageSetWriter(out, list(self.classes), kind=self.kind, parents=list(self.parents),
                              generator=self.generator, config=self.config, license=self.license,
                              annotations=self.annotations, locked_by_driver=worker)

    @classmethod
    def of_manifest(cls, manifest: Mapping[str, Any]) -> SetSpec:
        """The spec a finished set's manifest records."""
        return cls(list(manifest["classes"]), kind=manifest["kind"], parents=list(manifest.get("parents") or []),
                   generator=dict(manifest.get("generator") or {}), config=dict(manifest.get("config") or {}),
                   license=manifest.get("license"))

    def for_workers(self, writer: ImageSetWriter) -> SetSpec:
        """This spec with parents and license as the driver's writer recorded them (plain, picklable)."""
        return dataclasses.replace(self, classes=list(writer.classes), parents=list(writer.parents),
                                   license=dict(writer.license))


@runtime_checkable
class ShardGenerator(Protocol):
    """A generator that backends can drive shard by shard.

    ``shard_size`` fixes the shards (changing it changes nothing in the pixels, only the unit of
    work and resumption). ``num_gpus`` is what one worker reserves on a cluster (0 on CPU).
    ``generate`` must be deterministic given the items: same items, same bytes, whichever worker.
    A generator may also define ``prepare_writer(writer)``, called once on the driver after the writer
    is opened (e.g. to record its sampling plan, or refuse to resume a write another plan started), and
    ``finished_set(out, spec)``, which returns the finished set at ``out`` when it is this job's (None
    when there is none, an error when another job's), for generators whose own rule is looser than an
    exact match of the generator record and config.
    """

    shard_size: int
    num_gpus: float

    def spec(self, out: Path) -> SetSpec:
        """The set this job writes at ``out`` (classes, kind, parents relative to it, generator record, config)."""

    def work(self) -> list[WorkItem]:
        """The job's work manifest in order: one item per image."""

    def load(self) -> None:
        """Build the model on this worker's device; called once per worker before ``generate``."""

    def generate(self, items: Sequence[WorkItem]) -> list[Sample]:
        """The samples of one shard's items, in item order, each with the item's image id and seed."""


def job_shards(generator: ShardGenerator) -> list[list[WorkItem]]:
    """The fixed shards of a generator's work manifest."""
    return shards(generator.work(), generator.shard_size)


def encode_items(items: Sequence[WorkItem]) -> str:
    """Items as one JSON string: a column value any dataframe engine carries unchanged."""
    return json.dumps([dataclasses.asdict(item) for item in items], sort_keys=True)


def decode_items(text: str) -> list[WorkItem]:
    return [WorkItem(**row) for row in json.loads(text)]
