"""Sampling a trained class-conditional model into a labeled ImageSet: the kind's :class:`ConditionalSamplingJob`.

The job says what is particular to this kind (the sampling plan from the model's defaults and the
caller's settings, the generator record, how a shard's items are denoised in batches); writing shards,
resuming and the finished-set check are the shared driver's (:mod:`imgsynth.pipelines.sharding`), so a set
is byte-identical however its work is split, resumed or spread over backends.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Collection, Mapping, Sequence

import torch

from imgsynth.compute import fast_matmul
from imgsynth.generator_record import GeneratorRecord
from imgsynth.imageset import ImageSet, Sample
from imgsynth.pipelines.conditional.config import DEFAULT_GUIDANCE_SCALE, DEFAULT_SAMPLE_STEPS, check_sampling
from imgsynth.pipelines.conditional.folder import PIPELINE_NAME, UNET_CONFIG_FILE, LoadedModel, load_model
from imgsynth.pipelines.conditional.model import build_sampler, check_model_size
from imgsynth.pipelines.conditional.pipeline import denoise, initial_noise, to_pil
from imgsynth.pipelines.sharding import SameSet, SetJob, SetSpec, open_job, write_set, write_shards
from imgsynth.pipelines.work import DEFAULT_SHARD_SIZE, WorkItem, balanced_work, batches, check_per_class


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
    of the starting noise) are the sampling-bias knobs, recorded per image and in the manifest; ``steps``
    are sampling steps (default: the model's). Work is done in fixed shards of ``shard_size`` items; an
    interrupted call resumes from the last whole shard, and a finished set with the same settings is
    returned as it is.
    """
    job = ConditionalSamplingJob(str(model_dir), per_class, guidance_scale=guidance_scale, steps=steps, seed=seed,
                                 batch_size=batch_size, device=device, noise_temperature=noise_temperature,
                                 classes=classes, generation=generation, shard_size=shard_size, sampler=sampler)
    return write_set(job, out, progress=progress)


def sample_shards(model_dir: str | os.PathLike, out: str | os.PathLike, per_class: int,
                  shard_indices: Collection[int], *, batch_size: int = 64, progress: bool = True,
                  **settings: Any) -> list[int]:
    """Compute only ``shard_indices`` of a ``sample`` job (one worker's share); returns those written.

    Takes ``sample``'s settings; a later ``sample`` call with the same settings computes the shards still
    missing and finalizes the set, byte-identical to a set made in one call.
    """
    job = ConditionalSamplingJob(str(model_dir), per_class, batch_size=batch_size, **settings)
    opened = open_job(job, Path(out).absolute())
    if isinstance(opened, ImageSet):
        return []
    return write_shards(job, opened, shard_indices, progress=progress)


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
    check_per_class(per_class)
    check_sampling(guidance, n_steps, name, noise_temperature, shard_size)
    timesteps = int(config.get("num_train_timesteps", 1000))
    if n_steps > timesteps:  # a sampler takes distinct timesteps of the training schedule
        raise ValueError(f"steps = {n_steps}: this model's schedule has {timesteps} timesteps; sample with at most "
                         f"{timesteps} steps")
    return SamplingPlan(chosen, int(per_class), int(seed), guidance, n_steps, name, float(noise_temperature),
                        int(shard_size), generation)



@dataclass
class ConditionalSamplingJob(SetJob):
    """Sampling a model folder shard by shard; arguments as ``sample``'s.

    Holds only settings until ``spec`` (on the driver) or ``load`` (on a worker), so it pickles cheaply to
    Ray actors. ``spec`` loads the model on the driver to read its plan (the model is small; on a driver
    without the workers' GPU it loads on the CPU); the local driver then samples with that copy.
    """

    # A set made with the same model, sampling settings, seed and counts is this job's; the batch size
    # (rounding only) and the shard size (the unit of work) are not compared.
    same_set: ClassVar[SameSet] = SameSet(
        generator=("weights_sha256", "sampler", "steps", "guidance_scale", "seed", "noise_temperature"),
        config=(), counts=True)

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
        from imgsynth.compute import uses_gpu

        self.model_dir = str(Path(self.model_dir).absolute())
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        self.num_gpus = 1.0 if uses_gpu(self.device) else 0.0
        self.plan: SamplingPlan | None = None
        self.model: LoadedModel | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "model": None}  # workers load their own copy

    def spec(self, out: Path) -> SetSpec:
        here = self.device if not self.num_gpus or torch.cuda.is_available() else "cpu"
        model = load_model(self.model_dir, here)
        if here == self.device:
            self.model = model  # the local driver samples with it
        info = model.info
        self.plan = plan = _make_plan(info, self.per_class, self.classes, self.seed, self.guidance_scale, self.steps,
                                      self.sampler, self.noise_temperature, self.shard_size, self.generation)
        out = Path(out).absolute()
        record = GeneratorRecord("conditional", PIPELINE_NAME, str(model.path), model.weights_hash, plan.seed,
                                 settings={
            "scheduler": type(build_sampler(plan.sampler, model.scheduler_config)).__name__,
            "sampler": plan.sampler, "steps": plan.steps, "guidance_scale": plan.guidance_scale,
            "noise_temperature": plan.noise_temperature,
            "prediction_type": model.scheduler_config.get("prediction_type"), "shard_size": plan.shard_size,
        }).to_dict()
        parent = info.get("parent") or {}
        parents = []
        if parent.get("id"):
            parent_root = (model.path / parent.get("path", "")).resolve()
            parents.append({"id": parent["id"], "path": os.path.relpath(parent_root, out), "kind": parent.get("kind")})
        return SetSpec(list(plan.classes), kind="generated", parents=parents, generator=record,
                       config={"per_class": plan.per_class, "generation": plan.generation, "classes": plan.classes,
                               "training_config": info["training_config"]},
                       license={"name": "generated", "note": "sampled from a model trained on the parent set; "
                                "the parent's license terms apply"})

    def work(self) -> list[WorkItem]:
        if self.plan is None:
            raise RuntimeError("ConditionalSamplingJob.work() needs spec(out) first (it reads the model's plan)")
        return balanced_work(self.plan.classes, self.plan.per_class, self.plan.seed)

    def load(self) -> None:
        if self.model is None:
            self.model = load_model(self.model_dir, self.device)
        if self.model.size is not None:  # a LoadedModel assembled by hand may carry no estimate
            check_model_size(self.model.size, self.batch_size, self.model.path / UNET_CONFIG_FILE, self.model.device,
                             hint=", or lower the batch size")

    def generate(self, items: Sequence[WorkItem]) -> list[Sample]:
        """Denoise the items in batches of ``batch_size``; each image's noise comes from its own seed."""
        model, plan = self.model, self.plan
        assert model is not None and plan is not None, "spec(out) and load() first"
        info = model.info
        height, width = info["image_size"]
        channels = 1 if info["image_mode"] == "L" else 3
        class_index = {c: i for i, c in enumerate(info["classes"])}
        captions = info.get("class_captions") or {}
        tag = f"{PIPELINE_NAME}:{model.weights_hash[:12]}"
        scheduler = build_sampler(plan.sampler, model.scheduler_config)
        samples: list[Sample] = []
        for batch in batches(items, self.batch_size):
            noise = initial_noise(batch, (channels, height, width), plan.noise_temperature)
            labels = torch.tensor([class_index[item.label] for item in batch], dtype=torch.long)
            with fast_matmul(model.device):
                images = denoise(model, noise, labels, guidance_scale=plan.guidance_scale, steps=plan.steps,
                                 sampler=scheduler)
            for item, image in zip(batch, to_pil(images, info["image_mode"])):
                caption = captions.get(item.label) or f"a {item.label}"
                samples.append(Sample(image, item.label, caption, item.seed, item.image_id, {
                    "generator": tag, "generation": plan.generation, "prompt": caption,
                    "guidance_scale": plan.guidance_scale, "steps": plan.steps,
                    "noise_temperature": plan.noise_temperature}))
        return samples
