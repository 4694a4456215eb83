"""The one job that writes a set: what a kind's sampling job supplies, and the driver every backend shares.

A generator kind says only what is particular to it, in a :class:`SetJob`: the set it describes
(:class:`SetSpec`: classes, kind, parents, generator record, config), its work items, how a shard's items
become images (``generate``), and which settings make two sets "the same" (:class:`SameSet`). Everything
else is written once, here: opening (or resuming) the writer, the one check of a finished set
(:func:`finished_set`, one error type), writing pending shards in this process (:func:`write_shards`),
and finalizing only when every shard is there (:func:`finalize_job`). ``kind.sample`` is
:func:`write_set`; the Ray backend and ``accelerate launch`` ranks (``imgsynth.distributed``) use the same
pieces and differ only in who computes which shard.

Every image has its own seed and a shard always holds the same items, so whoever computes a shard writes
the same bytes, and the set id does not depend on the backend or the number of workers. A job is shipped
to workers by pickling, so it holds only its configuration until ``load()`` (called once per worker)
builds the model.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Collection, Mapping, Sequence

from imgsynth.compute import torch_threads
from imgsynth.generator_record import generator_record
from imgsynth.imageset import MANIFEST, ImageSet, ImageSetError, ImageSetWriter, Sample
from imgsynth.pipelines.work import WorkItem, shards
from imgsynth.provenance.markers import Marking

ShardCallback = Callable[[int, int], None]  # (shard index, images written)


class IncompleteGenerationError(ImageSetError):
    """A job stopped before every shard was written; the written shards are kept for a rerun to resume."""


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
    # Opt-in marks (watermark, C2PA) beyond the XMP packet every generated image carries.
    marking: Marking = field(default_factory=Marking)

    def writer(self, out: str | Path, *, worker: bool = False) -> ImageSetWriter:
        """Open (or resume) the writer of this set at ``out``.

        The driver's writer holds the folder lock; a ``worker`` writes into the partial the driver
        holds (it must not take the lock, which the driver has, nor discard the driver's partial).
        """
        return ImageSetWriter(out, list(self.classes), kind=self.kind, parents=list(self.parents),
                              generator=self.generator, config=self.config, license=self.license,
                              annotations=self.annotations, locked_by_driver=worker, marking=self.marking)

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


@dataclass(frozen=True)
class SameSet:
    """Which recorded settings make a finished set this job's set (so there is nothing to do).

    ``generator`` and ``config`` name keys of the manifest's generator record (as normalised by
    :func:`~imgsynth.generator_record.generator_record`, so sets of any version compare) and of its
    config; a dotted key reads a nested field (``lora.sha256``). None means the whole record or config.
    ``counts`` also compares the images per class. A job leaves out what does not change the pixels
    or labels (batch size, compilation), so rerunning with another batch size returns the set as it is.
    """

    generator: tuple[str, ...] | None = None
    config: tuple[str, ...] | None = None
    counts: bool = False

    def identity(self, record: Mapping[str, Any], config: Mapping[str, Any],
                 counts: Mapping[str, int]) -> dict[str, Any]:
        """What must be equal for two sets to be the same, from one set's record, config and counts."""
        plain = json.loads(json.dumps({"generator": generator_record(dict(record)), "config": dict(config)},
                                      default=str))  # as a manifest stores them (tuples as lists, paths as str)
        return {"generator": _pick(plain["generator"], self.generator), "config": _pick(plain["config"], self.config),
                "counts": dict(counts) if self.counts else None}


def _pick(values: Mapping[str, Any], keys: tuple[str, ...] | None) -> Any:
    if keys is None:
        return dict(values)
    picked = {}
    for key in keys:
        value: Any = values
        for part in key.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        picked[key] = value
    return picked


class SetJob:
    """A set-writing job: what a generator kind supplies so that any backend can write its set.

    Subclasses set ``shard_size`` (fixes the shards: changing it changes nothing in the pixels, only the
    unit of work and resumption) and ``num_gpus`` (what one worker reserves on a cluster; 0 on CPU), and
    define ``spec``, ``work``, ``load`` and ``generate``. ``generate`` must be deterministic given the
    items: same items, same bytes, whichever worker. ``same_set`` and ``prepare_writer`` have defaults.
    """

    shard_size: int
    num_gpus: float = 0.0
    # An exact match of the generator record and config, unless a job says what else may differ.
    same_set: ClassVar[SameSet] = SameSet()

    def spec(self, out: Path) -> SetSpec:
        """The set this job writes at ``out`` (classes, kind, parents relative to it, generator record, config)."""
        raise NotImplementedError

    def work(self) -> list[WorkItem]:
        """The job's work manifest in order: one item per image (after ``spec``)."""
        raise NotImplementedError

    def load(self) -> None:
        """Build the model on this worker's device; called once per worker before ``generate``."""
        raise NotImplementedError

    def generate(self, items: Sequence[WorkItem]) -> list[Sample]:
        """The samples of one shard's items, in item order, each with the item's image id and seed."""
        raise NotImplementedError

    def prepare_writer(self, writer: ImageSetWriter) -> None:
        """Called once on the driver after the writer is opened (e.g. to record the sampling plan, or to refuse
        resuming a write another plan started)."""


class MarkedJob(SetJob):
    """A kind's job whose images also carry opt-in marks (a watermark, signed C2PA manifests): the same job
    otherwise, so its work, shards and finished-set rule are the kind's. Picklable, like the job it wraps."""

    def __init__(self, job: SetJob, marking: Marking) -> None:
        self.job = job
        self.marking = marking

    @property
    def shard_size(self) -> int:  # type: ignore[override]
        return self.job.shard_size

    @property
    def num_gpus(self) -> float:  # type: ignore[override]
        return self.job.num_gpus

    @property
    def same_set(self) -> SameSet:  # type: ignore[override]
        return self.job.same_set

    def spec(self, out: Path) -> SetSpec:
        return dataclasses.replace(self.job.spec(out), marking=self.marking)

    def work(self) -> list[WorkItem]:
        return self.job.work()

    def load(self) -> None:
        self.job.load()

    def generate(self, items: Sequence[WorkItem]) -> list[Sample]:
        return self.job.generate(items)

    def prepare_writer(self, writer: ImageSetWriter) -> None:
        self.job.prepare_writer(writer)


def with_marking(job: SetJob, marking: Marking | None) -> SetJob:
    """``job`` with ``marking``'s opt-in marks (``job`` itself when there are none)."""
    return job if marking is None or not marking.any else MarkedJob(job, marking)


def job_shards(job: SetJob) -> list[list[WorkItem]]:
    """The fixed shards of a job's work manifest."""
    return shards(job.work(), job.shard_size)


def finished_set(out: Path, job: SetJob, spec: SetSpec) -> ImageSet | None:
    """The set already at ``out`` when this job wrote it (nothing to do); an :class:`ImageSetError` when another
    job did; None when there is none. The one answer to "is this set already finished with these settings?"."""
    if not (Path(out) / MANIFEST).is_file():
        return None
    existing = ImageSet.open(out)
    manifest = existing.manifest
    wanted_counts: dict[str, int] = {}
    for item in job.work():
        wanted_counts[item.label] = wanted_counts.get(item.label, 0) + 1
    rule = job.same_set
    if rule.identity(manifest.get("generator") or {}, manifest.get("config") or {}, existing.counts) == \
            rule.identity(spec.generator, spec.config, wanted_counts):
        return existing
    raise ImageSetError(f"{out}: already holds an ImageSet made with other settings (model, LoRA, sampling, seed, "
                        "prompts or classes differ); remove it or choose another folder")


def open_job(job: SetJob, out: Path, *, spec: SetSpec | None = None, worker: bool = False,
             prepare: bool = True) -> ImageSet | ImageSetWriter:
    """The finished set when this job already wrote ``out``; otherwise its writer, opened or resumed (a
    ``worker`` joins the driver's partial folder), prepared by the job when ``prepare``. ``spec``: the job's
    ``spec(out)`` when the caller has it already."""
    spec = spec if spec is not None else job.spec(out)
    done = finished_set(out, job, spec)
    if done is not None:
        return done
    writer = spec.writer(out, worker=worker)
    if prepare:
        job.prepare_writer(writer)
    return writer


def write_shard(job: SetJob, writer: ImageSetWriter, index: int, items: Sequence[WorkItem]) -> int:
    """Compute one shard and commit it; returns the number of images written."""
    samples = job.generate(items)
    if len(samples) != len(items):
        raise ImageSetError(f"{writer.root}: shard {index} has {len(items)} work items but the job "
                            f"returned {len(samples)} samples")
    return len(writer.write_shard(index, samples))


def write_shards(job: SetJob, writer: ImageSetWriter, indices: Collection[int] | None = None, *,
                 cpu_threads: int | None = None, progress: bool = False,
                 on_shard: ShardCallback | None = None) -> list[int]:
    """Load the job once and write, in this process and in order, the shards among ``indices`` (all when None)
    not yet written; returns the indices written. Unknown indices are a ``ValueError``."""
    from tqdm.auto import tqdm

    all_shards = job_shards(job)
    wanted = set(range(len(all_shards))) if indices is None else set(indices)
    unknown = sorted(wanted - set(range(len(all_shards))))
    if unknown:
        raise ValueError(f"shards {unknown} do not exist; this job has shards 0..{len(all_shards) - 1}")
    todo = sorted(wanted - writer.done_shards)
    if not todo:
        return []
    job.load()
    total = sum(len(all_shards[i]) for i in wanted)
    with torch_threads(cpu_threads), tqdm(total=total, initial=total - sum(len(all_shards[i]) for i in todo),
                                          desc="sample", unit="img", disable=not progress) as bar:
        for index in todo:
            written = write_shard(job, writer, index, all_shards[index])
            bar.update(len(all_shards[index]))
            if on_shard is not None:
                on_shard(index, written)
    return todo


def finalize_job(writer: ImageSetWriter, num_shards: int) -> ImageSet:
    """Finalize once every shard of the job is written; otherwise say which are missing and how to resume."""
    missing = sorted(set(range(num_shards)) - writer.done_shards)
    if missing:
        raise IncompleteGenerationError(
            f"{writer.partial}: {len(missing)} of {num_shards} shards were not written (first: {missing[:5]}); "
            "the others are kept, run the same command again to resume")
    return writer.finalize()


def write_set(job: SetJob, out: str | Path, *, progress: bool = False, cpu_threads: int | None = None,
              on_shard: ShardCallback | None = None) -> ImageSet:
    """Write the job's set at ``out`` in this process, resuming an unfinished write; a finished set of the same
    job is returned as it is. ``cpu_threads``: torch intra-op threads to compute with (None: leave torch's)."""
    opened = open_job(job, Path(out).absolute())
    if isinstance(opened, ImageSet):
        return opened
    write_shards(job, opened, cpu_threads=cpu_threads, progress=progress, on_shard=on_shard)
    return finalize_job(opened, len(job_shards(job)))


def encode_items(items: Sequence[WorkItem]) -> str:
    """Items as one JSON string: a column value any dataframe engine carries unchanged."""
    return json.dumps([dataclasses.asdict(item) for item in items], sort_keys=True)


def decode_items(text: str) -> list[WorkItem]:
    """The work items :func:`encode_items` wrote."""
    return [WorkItem(**row) for row in json.loads(text)]
