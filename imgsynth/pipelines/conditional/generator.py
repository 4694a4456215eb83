"""Sampling a trained class-conditional model into a labeled ImageSet, resumable shard by shard."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, Mapping, Sequence

import torch

from imgsynth.generator_record import GeneratorRecord
from imgsynth.generator_record import generator_record as normalized_record
from imgsynth.imageset import ImageSet, ImageSetError, ImageSetWriter, Sample
from imgsynth.pipelines.conditional.config import DEFAULT_GUIDANCE_SCALE, DEFAULT_SAMPLE_STEPS, check_sampling
from imgsynth.pipelines.conditional.folder import PIPELINE_NAME, UNET_CONFIG_FILE, LoadedModel, load_model
from imgsynth.pipelines.conditional.model import build_sampler, check_model_size
from imgsynth.pipelines.conditional.pipeline import denoise, initial_noise, to_pil
from imgsynth.pipelines.work import DEFAULT_SHARD_SIZE, WorkItem, balanced_work, batches, shards


@dataclass(frozen=True)
class SamplingPlan:
    """What to sample and how; one plan, one set of bytes (up to the batch size's rounding)."""

    classes: list[str]
    per_class: int
    seed: int
    guidance_scale: float
    steps: int
    sampler: str
    noise_temperature: float
    shard_size: int
    generation: int | None


def sample(model_dir: str | os.PathLike, out: str | os.PathLike, per_class: int, *,
           guidance_scale: float | None = None, steps: int | None = None, seed: int = 0, batch_size: int = 64,
           device: str | None = None, noise_temperature: float = 1.0, classes: Sequence[str] | None = None,
           generation: int | None = None, progress: bool = True, shard_size: int = DEFAULT_SHARD_SIZE,
           sampler: str | None = None) -> ImageSet:
    """Sample ``per_class`` images of every class (or of ``classes``) into a generated ImageSet at ``out``.

    ``guidance_scale`` (classifier-free guidance; default: the model's) and ``noise_temperature`` (scale
    of the starting noise) are the sampling-bias knobs, recorded per image and in the manifest. Work is
    done in fixed shards of ``shard_size`` items; an interrupted call resumes from the last whole shard,
    and a finished set with the same settings is returned as it is.
    """
    job = SamplingJob(model_dir, out, per_class, guidance_scale=guidance_scale, steps=steps, seed=seed,
                      device=device, noise_temperature=noise_temperature, classes=classes,
                      generation=generation, shard_size=shard_size, sampler=sampler)
    if job.finished is not None:
        return job.finished
    job.run(job.pending(), batch_size, progress)
    return job.writer.finalize()


def sample_shards(model_dir: str | os.PathLike, out: str | os.PathLike, per_class: int,
                  shard_indices: Collection[int], *, batch_size: int = 64, progress: bool = True,
                  **settings: Any) -> list[int]:
    """Compute only ``shard_indices`` of a ``sample`` job (one worker's share); returns those written.

    Takes ``sample``'s settings; a later ``sample`` call with the same settings computes the shards still
    missing and finalizes the set, byte-identical to a set made in one call.
    """
    job = SamplingJob(model_dir, out, per_class, **settings)
    if job.finished is not None:
        return []
    wanted = set(shard_indices)
    bad = sorted(wanted - set(range(len(job.work))))
    if bad:
        raise ValueError(f"shards {bad} do not exist; this job has shards 0..{len(job.work) - 1}")
    todo = [i for i in job.pending() if i in wanted]
    job.run(todo, batch_size, progress)
    return todo


class SamplingJob:
    """One sampling job: the loaded model, the plan, the writer on ``out`` and the fixed work shards."""

    def __init__(self, model_dir: str | os.PathLike, out: str | os.PathLike, per_class: int, *,
                 guidance_scale: float | None = None, steps: int | None = None, seed: int = 0,
                 device: str | None = None, noise_temperature: float = 1.0, classes: Sequence[str] | None = None,
                 generation: int | None = None, shard_size: int = DEFAULT_SHARD_SIZE,
                 sampler: str | None = None) -> None:
        self.model = model = load_model(model_dir, device)
        info = model.info
        self.plan = plan = _make_plan(info, per_class, classes, seed, guidance_scale, steps, sampler,
                                      noise_temperature, shard_size, generation)
        self.out = Path(out).absolute()
        self.work = shards(balanced_work(plan.classes, plan.per_class, plan.seed), plan.shard_size)
        generator_record = GeneratorRecord("conditional", PIPELINE_NAME, str(model.path), model.weights_hash,
                                           plan.seed, settings={
            "scheduler": type(build_sampler(plan.sampler, model.scheduler_config)).__name__,
            "sampler": plan.sampler, "steps": plan.steps, "guidance_scale": plan.guidance_scale,
            "noise_temperature": plan.noise_temperature,
            "prediction_type": model.scheduler_config.get("prediction_type"), "shard_size": plan.shard_size,
        }).to_dict()
        self.finished = _finished_set(self.out, generator_record, {c: plan.per_class for c in plan.classes})
        if self.finished is not None:
            return
        parent = info.get("parent") or {}
        parents = []
        if parent.get("id"):
            parent_root = (model.path / parent.get("path", "")).resolve()
            parents.append({"id": parent["id"], "path": os.path.relpath(parent_root, self.out),
                            "kind": parent.get("kind")})
        # What the writer is opened with; a backend's driver may open it elsewhere (it holds the lock).
        self.writer_arguments: dict[str, Any] = dict(
            classes=list(plan.classes), kind="generated", parents=parents, generator=generator_record,
            config={"per_class": plan.per_class, "generation": plan.generation, "classes": plan.classes,
                    "training_config": info["training_config"]},
            license={"name": "generated", "note": "sampled from a model trained on the parent set; "
                     "the parent's license terms apply"})

    @functools.cached_property
    def writer(self) -> ImageSetWriter:
        """The writer on ``out`` (opened, and the folder locked, on first use)."""
        return ImageSetWriter(self.out, **self.writer_arguments)

    def pending(self) -> list[int]:
        done = self.writer.done_shards
        return [i for i in range(len(self.work)) if i not in done]

    def run(self, todo: Sequence[int], batch_size: int, progress: bool = True) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        write_shards(self.model, self.writer, self.work, todo, self.plan, batch_size, progress)


def _make_plan(info: Mapping[str, Any], per_class: int, classes: Sequence[str] | None, seed: int,
               guidance_scale: float | None, steps: int | None, sampler: str | None, noise_temperature: float,
               shard_size: int, generation: int | None) -> SamplingPlan:
    known = list(info["classes"])
    if classes is None:
        chosen = known
    else:
        chosen = list(dict.fromkeys(classes))
        unknown = [c for c in chosen if c not in known]
        if unknown or not chosen:
            raise ValueError(f"classes {unknown or chosen} are not classes of this model; it knows {known}")
    config = info["training_config"]
    guidance = float(config.get("guidance_scale", DEFAULT_GUIDANCE_SCALE) if guidance_scale is None else guidance_scale)
    n_steps = int(config.get("sample_steps", DEFAULT_SAMPLE_STEPS) if steps is None else steps)
    name = sampler or config.get("sampler", "dpm++")
    if per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}")
    check_sampling(guidance, n_steps, name, noise_temperature, shard_size)
    timesteps = int(config.get("num_train_timesteps", 1000))
    if n_steps > timesteps:  # a sampler takes distinct timesteps of the training schedule
        raise ValueError(f"steps = {n_steps}: this model's schedule has {timesteps} timesteps; sample with at most "
                         f"{timesteps} steps")
    return SamplingPlan(chosen, int(per_class), int(seed), guidance, n_steps, name, float(noise_temperature),
                        int(shard_size), generation)


def _finished_set(out: Path, generator_record: Mapping[str, Any], counts: Mapping[str, int]) -> ImageSet | None:
    """The set already at ``out`` when it came from the same model, settings and counts; else an error."""
    if not (out / "imageset.json").is_file():
        return None
    existing = ImageSet.open(out)
    previous = normalized_record(existing.manifest.get("generator"))  # sets of any version
    keys = ("weights_sha256", "sampler", "steps", "guidance_scale", "seed", "noise_temperature")
    if all(previous.get(k) == generator_record[k] for k in keys) and existing.counts == dict(counts):
        return existing
    raise ImageSetError(f"{out}: already holds an ImageSet made with other settings; remove it or choose "
                        "another folder")


def write_shards(model: LoadedModel, writer: ImageSetWriter, work: Sequence[Sequence[WorkItem]],
                 todo: Sequence[int], plan: SamplingPlan, batch_size: int, progress: bool = True) -> None:
    """Compute and write the shards ``todo`` of ``work``, batch by batch."""
    from tqdm.auto import tqdm

    info = model.info
    height, width = info["image_size"]
    channels = 1 if info["image_mode"] == "L" else 3
    class_index = {c: i for i, c in enumerate(info["classes"])}
    captions = info.get("class_captions") or {}
    tag = f"{PIPELINE_NAME}:{model.weights_hash[:12]}"
    total = sum(len(work[i]) for i in todo)
    if model.size is not None:  # a LoadedModel assembled by hand may carry no estimate
        check_model_size(model.size, batch_size, model.path / UNET_CONFIG_FILE, model.device,
                         hint=", or lower the batch size")
    scheduler = build_sampler(plan.sampler, model.scheduler_config)
    with tqdm(total=total, disable=not progress, desc="sample", unit="img", dynamic_ncols=True) as bar:
        for index in todo:
            samples: list[Sample] = []
            for batch in batches(work[index], batch_size):
                noise = initial_noise(batch, (channels, height, width), plan.noise_temperature)
                labels = torch.tensor([class_index[item.label] for item in batch], dtype=torch.long)
                images = denoise(model, noise, labels, guidance_scale=plan.guidance_scale, steps=plan.steps,
                                 sampler=scheduler)
                for item, image in zip(batch, to_pil(images, info["image_mode"])):
                    caption = captions.get(item.label) or f"a {item.label}"
                    samples.append(Sample(image, item.label, caption, item.seed, item.image_id, {
                        "generator": tag, "generation": plan.generation, "prompt": caption,
                        "guidance_scale": plan.guidance_scale, "steps": plan.steps,
                        "noise_temperature": plan.noise_temperature}))
                bar.update(len(batch))
            writer.write_shard(index, samples)


class _CollectingWriter:
    """Stands in for an ImageSetWriter to take a shard's samples instead of writing them."""

    def __init__(self) -> None:
        self.samples: list[Sample] = []
        self.done_shards: set[int] = set()

    def write_shard(self, index: int, samples: Sequence[Sample]) -> list[Any]:
        self.samples.extend(samples)
        return []


@dataclass
class ConditionalShardGenerator:
    """Sampling a model folder shard by shard for a backend; arguments as ``sample``'s.

    Holds only settings until ``load()``, so it pickles cheaply to Ray actors. ``spec`` opens a
    ``SamplingJob`` on the driver (the model is small; on a driver without the workers' GPU it loads on the
    CPU), so the writer job, plan and generator record are exactly ``sample``'s.
    """

    model_dir: str
    per_class: int
    guidance_scale: float | None = None
    steps: int | None = None
    seed: int = 0
    batch_size: int = 64
    device: str | None = None
    noise_temperature: float = 1.0
    classes: Sequence[str] | None = None
    generation: int | None = None
    shard_size: int = DEFAULT_SHARD_SIZE
    sampler: str | None = None

    def __post_init__(self) -> None:
        from imgsynth.pipelines.device import uses_gpu

        self.model_dir = str(Path(self.model_dir).absolute())
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        self.num_gpus = 1.0 if uses_gpu(self.device) else 0.0
        self.plan: SamplingPlan | None = None
        self.model: LoadedModel | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "model": None}  # workers load their own copy

    def spec(self, out: Path) -> Any:
        from imgsynth.pipelines.sharding import SetSpec

        here = self.device if not self.num_gpus or torch.cuda.is_available() else "cpu"
        job = SamplingJob(self.model_dir, out, self.per_class, guidance_scale=self.guidance_scale, steps=self.steps,
                          seed=self.seed, device=here, noise_temperature=self.noise_temperature, classes=self.classes,
                          generation=self.generation, shard_size=self.shard_size, sampler=self.sampler)
        self.plan = job.plan
        if here == self.device:
            self.model = job.model  # the local backend samples with it
        if job.finished is not None:
            return SetSpec.of_manifest(job.finished.manifest)
        return SetSpec(**job.writer_arguments)

    def work(self) -> list[WorkItem]:
        if self.plan is None:
            raise RuntimeError("ConditionalShardGenerator.work() needs spec(out) first (it reads the model's plan)")
        return balanced_work(self.plan.classes, self.plan.per_class, self.plan.seed)

    def load(self) -> None:
        if self.model is None:
            self.model = load_model(self.model_dir, self.device)

    def generate(self, items: Sequence[WorkItem]) -> list[Sample]:
        collector = _CollectingWriter()
        write_shards(self.model, collector, [list(items)], [0], self.plan, self.batch_size,  # type: ignore[arg-type]
                     progress=False)
        return collector.samples
