"""The registry's ``conditional`` kind: its options (preset, sampling, any ``TrainConfig`` field) and class.

Light to import (no torch, no diffusers until a model is trained or sampled), so checking a recipe or
listing kinds stays fast.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from imgsynth.pipelines.conditional.config import (AUTO, PRESETS, TrainConfig, auto_preset, check_sampling,
                                                   preset)
from imgsynth.pipelines.base import GeneratorKind
from imgsynth.pipelines.work import DEFAULT_SHARD_SIZE

if TYPE_CHECKING:
    from imgsynth.imageset import ImageSet
    from imgsynth.pipelines.conditional.sampling import ConditionalSamplingJob
    from imgsynth.pipelines.conditional.training import DataParallel


@dataclass
class ConditionalOptions:
    """The ``conditional`` kind's options: ``preset`` (or ``auto``: chosen from the data and the device), the
    sampling settings (None: the model's own defaults, which its preset set at training), and every other
    ``TrainConfig`` field as an optional override of the preset (None: the preset's value; ``image_size``
    and ``channels``: the data's). ``train_steps`` is ``TrainConfig.steps`` (optimizer steps), kept apart
    by name from ``sample_steps``."""

    preset: str = "digits16-cpu"
    # sampling
    guidance_scale: float | None = None
    sample_steps: int | None = None
    sampler: str | None = None
    noise_temperature: float = 1.0
    sample_batch_size: int = 64
    shard_size: int = DEFAULT_SHARD_SIZE
    # training overrides (TrainConfig's fields, checked by TrainConfig.validate)
    image_size: int | None = None
    channels: int | None = None
    patch_size: int | None = None
    block_out_channels: tuple[int, ...] | None = None
    layers_per_block: int | None = None
    attention_levels: tuple[int, ...] | None = None
    mid_block: bool | None = None
    norm_num_groups: int | None = None
    dropout: float | None = None
    hflip: bool | None = None
    train_steps: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    lr_schedule: str | None = None
    warmup_steps: int | None = None
    grad_clip: float | None = None
    ema_decay: float | None = None
    ema_power: float | None = None
    label_dropout: float | None = None
    num_train_timesteps: int | None = None
    beta_schedule: str | None = None
    prediction_type: str | None = None
    snr_gamma: float | None = None
    device: str | None = None
    checkpoint_every: int | None = None
    keep_checkpoints: bool | None = None
    mixed_precision: bool | None = None
    compile: bool | None = None

    def validate(self) -> ConditionalOptions:
        """Check the options as far as they can be checked without the data: the preset with the overrides."""
        if self.preset not in PRESETS and self.preset != AUTO:
            raise ValueError(f"preset {self.preset!r} is not a conditional preset; known: {[*PRESETS, AUTO]}")
        train_config(self, image_size=None, channels=None, seed=0)
        if self.sample_batch_size is None or self.sample_batch_size < 1:
            raise ValueError(f"sample_batch_size must be at least 1, got {self.sample_batch_size!r}")
        check_sampling(self.guidance_scale, self.sample_steps, self.sampler, self.noise_temperature, self.shard_size)
        return self


# Options that are not training overrides: the preset names the base config, and the sampling settings change
# how a model is sampled, never what is trained. The seed is the caller's.
_SAMPLING_OPTIONS = ("preset", "guidance_scale", "sample_steps", "sampler", "noise_temperature", "sample_batch_size",
                     "shard_size")
# An option whose TrainConfig field has another name (TrainConfig.steps, stored so in model folders).
_TRAIN_CONFIG_NAME = {"train_steps": "steps"}


def training_overrides(options: ConditionalOptions) -> dict[str, Any]:
    """The TrainConfig fields ``options`` set (under TrainConfig's names)."""
    return {_TRAIN_CONFIG_NAME.get(f.name, f.name): getattr(options, f.name) for f in dataclasses.fields(options)
            if f.name not in _SAMPLING_OPTIONS and getattr(options, f.name) is not None}


def train_config(options: ConditionalOptions, *, image_size: int | None, channels: int | None, seed: int,
                 on_gpu_machine: Callable[[], bool] | None = None) -> TrainConfig:
    """The training config of ``options``: the preset, the data's image size and channels (when given and not
    set in the options), then the options' overrides. The preset describes capacity and schedule; the data
    decides its own shape. ``auto`` picks the preset from the data and the device (``auto_preset``);
    ``on_gpu_machine`` says whether this machine has a GPU (not asked when checking a recipe: CPU assumed)."""
    overrides = training_overrides(options)
    if image_size is not None:
        overrides.setdefault("image_size", image_size)
    if channels is not None:
        overrides.setdefault("channels", channels)
    name = options.preset
    if name == AUTO:
        device = str(options.device or "")
        on_gpu = device.startswith("cuda") or (device in ("", "auto") and on_gpu_machine is not None and on_gpu_machine())
        name = auto_preset(overrides.get("image_size"), overrides.get("channels"), on_gpu)
    return preset(name, seed=seed, **overrides)


class ConditionalKind(GeneratorKind):
    """The ``conditional`` kind: train a class-conditional diffusion model, then sample it."""

    name = "conditional"
    Options = ConditionalOptions
    recipe_fields = {"preset": "preset", "train_steps": "train_steps", "batch_size": "batch_size", "lr": "lr",
                     "sample_steps": "sample_steps", "guidance_scale": "guidance_scale",
                     "noise_temperature": "noise_temperature", "sample_batch_size": "sample_batch_size",
                     "device": "device"}
    renamed_options = {"steps": "train_steps"}
    options: ConditionalOptions

    @classmethod
    def owns(cls, model: str | Path) -> bool:
        """Whether ``model`` is a model folder of this kind (``imgsynth_model.json`` is there, or its
        ``model_index.json`` names this kind's pipeline: an unfinished one, refused when read)."""
        from imgsynth.pipelines.conditional.folder import is_model_dir, is_pipeline_of_this_kind

        return is_model_dir(model) or is_pipeline_of_this_kind(model)

    def check_data(self, image_size: int, channels: int) -> TrainConfig:
        """The training config for square images of ``image_size`` px with ``channels``; ``ValueError`` when
        the preset and options cannot take them (e.g. a size the UNet's levels do not divide)."""
        return train_config(self.options, image_size=image_size, channels=channels, seed=0)

    def fit(self, train_set: ImageSet, out: Path, seed: int, progress: bool = True, *,
            parallel: DataParallel | None = None) -> Path:
        """Train on ``train_set`` (image size and channels from the set unless the options set them)."""
        from imgsynth.pipelines.conditional.training import train

        size = train_set.image_size
        mode = train_set.manifest.get("image_mode") or "L"
        config = train_config(self.options, image_size=None if size is None or size[0] != size[1] else int(size[0]),
                              channels=1 if mode == "L" else 3, seed=seed, on_gpu_machine=_cuda_available)
        return train(train_set, out, config, progress=progress, parallel=parallel)

    def job(self, model_dir: Path, per_class: int, seed: int, generation: int | None = None,
            classes: Sequence[str] | None = None) -> ConditionalSamplingJob:
        """Sampling the model at ``model_dir`` with the options' sampling settings."""
        from imgsynth.pipelines.conditional.sampling import ConditionalSamplingJob

        o = self.options
        return ConditionalSamplingJob(str(model_dir), per_class, guidance_scale=o.guidance_scale, steps=o.sample_steps,
                                      seed=seed, batch_size=o.sample_batch_size, device=o.device,
                                      noise_temperature=o.noise_temperature, classes=classes, generation=generation,
                                      shard_size=o.shard_size, sampler=o.sampler)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
