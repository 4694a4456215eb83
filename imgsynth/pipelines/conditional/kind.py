"""The registry's ``conditional`` kind: its options (preset, sampling, any ``TrainConfig`` field) and class.

Light to import (no torch, no diffusers until a model is trained or sampled), so checking a recipe or
listing kinds stays fast.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from imgsynth.pipelines.conditional.config import (AUTO, PRESETS, TrainConfig, auto_preset, check_sampling,
                                                   preset)
from imgsynth.pipelines.work import DEFAULT_SHARD_SIZE

if TYPE_CHECKING:
    from imgsynth.imageset import ImageSet
    from imgsynth.pipelines.conditional.generator import ConditionalShardGenerator

# TrainConfig fields that are not training overrides: the preset's name and the seed (the caller's) are set by
# the kind; guidance_scale, sample_steps and sampler are options of sampling, so changing them never retrains.
_OWN_FIELDS = ("preset", "seed", "guidance_scale", "sample_steps", "sampler")


def _options_type() -> type:
    """``ConditionalOptions``: ``preset``, the sampling options, and every other ``TrainConfig`` field as an
    optional override of the preset (None: the preset's value; image_size and channels: the data's)."""
    training = [(f.name, f"{f.type} | None", dataclasses.field(default=None))
                for f in dataclasses.fields(TrainConfig) if f.name not in _OWN_FIELDS]
    fields = [("preset", "str", dataclasses.field(default="digits16-cpu")),
              ("guidance_scale", "float | None", dataclasses.field(default=None)),
              ("sample_steps", "int | None", dataclasses.field(default=None)),
              ("sampler", "str | None", dataclasses.field(default=None)),
              ("noise_temperature", "float", dataclasses.field(default=1.0)),
              ("sample_batch_size", "int", dataclasses.field(default=64)),
              ("shard_size", "int", dataclasses.field(default=DEFAULT_SHARD_SIZE)), *training]
    options = dataclasses.make_dataclass("ConditionalOptions", fields, namespace={"validate": _validate_options})
    options.__module__ = __name__
    options.__doc__ = _options_type.__doc__
    return options


def _validate_options(options: Any) -> Any:
    """Check the options as far as they can be checked without the data: the preset with the overrides."""
    if options.preset not in PRESETS and options.preset != AUTO:
        raise ValueError(f"preset {options.preset!r} is not a conditional preset; known: {[*PRESETS, AUTO]}")
    train_config(options, image_size=None, channels=None, seed=0)
    if options.sample_batch_size is None or options.sample_batch_size < 1:
        raise ValueError(f"sample_batch_size must be at least 1, got {options.sample_batch_size!r}")
    check_sampling(options.guidance_scale, options.sample_steps, options.sampler, options.noise_temperature,
                   options.shard_size)
    return options


def train_config(options: Any, *, image_size: int | None, channels: int | None, seed: int,
                 on_gpu_machine: Callable[[], bool] | None = None) -> TrainConfig:
    """The training config of ``options``: the preset, the data's image size and channels (when given and not
    set in the options), then the options' overrides. The preset describes capacity and schedule; the data
    decides its own shape. ``auto`` picks the preset from the data and the device (``auto_preset``);
    ``on_gpu_machine`` says whether this machine has a GPU (not asked when checking a recipe: CPU assumed)."""
    overrides = {f.name: getattr(options, f.name) for f in dataclasses.fields(TrainConfig)
                 if f.name not in _OWN_FIELDS and getattr(options, f.name) is not None}
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


ConditionalOptions = _options_type()


class ConditionalGenerator:
    """The ``conditional`` kind: train a class-conditional diffusion model, then sample it."""

    kind = "conditional"
    Options = ConditionalOptions
    # The flat [generator] fields of older recipes, and the option each one is (experiments.config).
    recipe_fields = {"preset": "preset", "train_steps": "steps", "batch_size": "batch_size", "lr": "lr",
                     "sample_steps": "sample_steps", "guidance_scale": "guidance_scale",
                     "noise_temperature": "noise_temperature", "sample_batch_size": "sample_batch_size",
                     "device": "device"}

    def __init__(self, options: Any = None) -> None:
        self.options = (options or ConditionalOptions()).validate()

    @staticmethod
    def owns(model: str | os.PathLike) -> bool:
        """Whether ``model`` is a model folder of this kind (``imgsynth_model.json`` is there)."""
        from imgsynth.pipelines.conditional.folder import is_model_dir

        return is_model_dir(model)

    def check_data(self, image_size: int, channels: int) -> TrainConfig:
        """The training config for square images of ``image_size`` px with ``channels``; ``ValueError`` when
        the preset and options cannot take them (e.g. a size the UNet's levels do not divide)."""
        return train_config(self.options, image_size=image_size, channels=channels, seed=0)

    def fit(self, train_set: ImageSet, out: Path, seed: int, progress: bool = True, *,
            parallel: Any = None) -> Path:
        """Train on ``train_set`` (image size and channels from the set unless the options set them)."""
        from imgsynth.pipelines.conditional.training import train

        size = train_set.image_size
        mode = train_set.manifest.get("image_mode") or "L"
        config = train_config(self.options, image_size=None if size is None or size[0] != size[1] else int(size[0]),
                              channels=1 if mode == "L" else 3, seed=seed, on_gpu_machine=_cuda_available)
        return train(train_set, out, config, progress=progress, parallel=parallel)

    def sampling(self) -> dict[str, Any]:
        """``sample``'s keyword arguments from the options."""
        o = self.options
        return dict(guidance_scale=o.guidance_scale, steps=o.sample_steps, sampler=o.sampler,
                    noise_temperature=o.noise_temperature, device=o.device, shard_size=o.shard_size)

    def sample(self, model_dir: Path, out: Path, per_class: int, seed: int, generation: int | None = None,
               progress: bool = True, classes: Sequence[str] | None = None) -> ImageSet:
        """``per_class`` images of every class (or of ``classes``) of the model at ``model_dir``."""
        from imgsynth.pipelines.conditional.generator import sample

        return sample(model_dir, out, per_class, seed=seed, generation=generation, progress=progress,
                      batch_size=self.options.sample_batch_size, classes=classes, **self.sampling())

    def shard_generator(self, model_dir: Path, per_class: int, seed: int, generation: int | None = None,
                        classes: Sequence[str] | None = None) -> ConditionalShardGenerator:
        """The same job as ``sample``, for a backend (Ray actors, accelerate ranks)."""
        from imgsynth.pipelines.conditional.generator import ConditionalShardGenerator

        return ConditionalShardGenerator(str(model_dir), per_class, seed=seed, generation=generation,
                                         batch_size=self.options.sample_batch_size, classes=classes,
                                         **self.sampling())


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
