"""The network parts of the class-conditional model, built from its ``TrainConfig``, and their cost.

A diffusers ``UNet2DModel`` whose class embedding has one extra row, the *null* class (classifier-free
guidance); a ``DDPMScheduler`` for the training noise; DPM-Solver++ or DDIM (eta 0) for sampling.
``estimate_size`` counts parameters and activation memory without building anything, so a damaged or
hand-edited model folder is refused before it can ask for unbounded memory.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import torch

# The memory limit lives in compute.py (the classifier shares it) and the size estimate next to the config it
# reads (TrainConfig.validate refuses an oversized model without torch); both stay importable from here.
from imgsynth.compute import FALLBACK_MAX_MODEL_GB, MAX_MODEL_GB_ENV, max_model_bytes  # noqa: F401
from imgsynth.limits import MAX_PARAMETERS
from imgsynth.pipelines.conditional.config import SAMPLERS, ModelSize, TrainConfig, estimate_size  # noqa: F401


def unet_config(config: TrainConfig, num_classes: int) -> dict[str, Any]:
    """The ``UNet2DModel`` arguments a config decides (the rest keep diffusers' defaults); last class = null."""
    levels = range(len(config.block_out_channels))
    attention = set(config.attention_levels)
    return dict(
        sample_size=config.image_size // config.patch_size,
        in_channels=config.channels * config.patch_size ** 2,
        out_channels=config.channels * config.patch_size ** 2,
        block_out_channels=config.block_out_channels,
        layers_per_block=config.layers_per_block,
        down_block_types=tuple("AttnDownBlock2D" if i in attention else "DownBlock2D" for i in levels),
        up_block_types=tuple("AttnUpBlock2D" if i in attention else "UpBlock2D" for i in reversed(levels)),
        mid_block_type="UNetMidBlock2D" if config.mid_block else None,
        add_attention=bool(attention),
        norm_num_groups=config.norm_num_groups,
        dropout=config.dropout,
        num_class_embeds=num_classes + 1,
    )


def build_unet(config: TrainConfig, num_classes: int) -> Any:
    """The denoiser: a diffusers ``UNet2DModel`` with ``num_classes + 1`` class embeddings (last = null)."""
    from diffusers import UNet2DModel

    return UNet2DModel(**unet_config(config, num_classes))


def noise_scheduler_config(config: TrainConfig) -> dict[str, Any]:
    """The ``DDPMScheduler`` arguments a config decides (the rest keep diffusers' defaults)."""
    return dict(num_train_timesteps=config.num_train_timesteps, beta_schedule=config.beta_schedule,
                prediction_type=config.prediction_type, clip_sample=False)


def build_noise_scheduler(config: TrainConfig) -> Any:
    """The training (forward-process) scheduler; samplers are derived from its config."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(**noise_scheduler_config(config))


def build_sampler(name: str, scheduler_config: Mapping[str, Any]) -> Any:
    """A deterministic sampler from the training scheduler's config: DPM-Solver++ (2M) or DDIM with eta 0.

    Both clip their running estimate of the clean image to the data range [-1, 1] (DPM-Solver's
    thresholding, DDIM's clip_sample): the cosine schedule's last timestep has almost no signal, and
    an unclipped estimate there divides the model's error by ~1e-4 and saturates every pixel.
    "trailing" spacing starts at that last timestep, which matters with few sampling steps.
    """
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    if name == "dpm++":
        return DPMSolverMultistepScheduler.from_config(scheduler_config, algorithm_type="dpmsolver++",
                                                       solver_order=2, timestep_spacing="trailing",
                                                       thresholding=True, sample_max_value=1.0)
    if name == "ddim":
        return DDIMScheduler.from_config(scheduler_config, timestep_spacing="trailing", clip_sample=True,
                                         clip_sample_range=1.0, set_alpha_to_one=False)
    raise ValueError(f"unknown sampler {name!r}; known: {SAMPLERS}")




def check_model_size(size: ModelSize, batch_size: int, path: str | os.PathLike, device: torch.device | None = None,
                     hint: str = "") -> None:
    """Refuse, in one line naming ``path`` and the fields, a model past ``MAX_PARAMETERS`` or one whose
    batch of ``batch_size`` would need more than ``max_model_bytes(device)``."""
    if size.parameters > MAX_PARAMETERS:
        raise ValueError(f"{path}: {size.fields} give a UNet of ~{size.parameters:.3g} parameters, more than "
                         f"imgsynth loads ({MAX_PARAMETERS:.0e})")
    need, (limit, source) = size.sampling_bytes(batch_size), max_model_bytes(device)
    if need > limit:
        what = "one image" if batch_size == 1 else f"a batch of {batch_size}"
        raise ValueError(f"{path}: {size.fields} give a UNet of ~{size.parameters:.3g} parameters needing "
                         f"~{need / 1e9:.3g} GB to sample {what}, over the {limit / 1e9:.3g} GB limit ({source}; "
                         f"set {MAX_MODEL_GB_ENV} to change it{hint})")

