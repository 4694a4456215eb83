"""The network parts of the class-conditional model, built from its ``TrainConfig``, and their cost.

A diffusers ``UNet2DModel`` whose class embedding has one extra row, the *null* class (classifier-free
guidance); a ``DDPMScheduler`` for the training noise; DPM-Solver++ or DDIM (eta 0) for sampling.
``estimate_size`` counts parameters and activation memory without building anything, so a damaged or
hand-edited model folder is refused before it can ask for unbounded memory.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from imgsynth.pipelines.conditional.config import SAMPLERS, TrainConfig, _short

MAX_PARAMETERS = 2_000_000_000
# Loading or sampling a model whose estimated float32 weights plus activations exceed the memory of the
# device it runs on (a CUDA device's memory, or the machine's RAM) is refused; this environment variable
# sets another limit, in GB (10^9 bytes). Where the memory cannot be read the limit is 16 GB.
MAX_MODEL_GB_ENV = "IMGSYNTH_MAX_MODEL_GB"
FALLBACK_MAX_MODEL_GB = 16.0


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




@dataclass(frozen=True)
class ModelSize:
    """What sampling a model costs, estimated from its config alone: parameters and float32 bytes."""

    parameters: int
    # One forward pass of one image at the model's resolution, as ``_activation_floats`` counts it.
    activation_bytes: int
    # The config fields that decide the size, for messages.
    fields: str = ""

    def sampling_bytes(self, batch_size: int) -> int:
        """Weights plus the activations of ``batch_size`` images (doubled by classifier-free guidance)."""
        return 4 * self.parameters + 2 * batch_size * self.activation_bytes


def estimate_size(config: TrainConfig, num_classes: int) -> ModelSize:
    """Parameter count and activation memory of ``build_unet(config, num_classes)``, without building it.

    The count follows diffusers' ``UNet2DModel`` layer by layer (a test compares it with built models);
    it takes microseconds even for a config that would never fit in memory.
    """
    widths, layers, attention = config.block_out_channels, config.layers_per_block, set(config.attention_levels)
    io = config.channels * config.patch_size ** 2
    time_dim = 4 * widths[0]
    total = _conv(io, widths[0], 3) + _linear(widths[0], time_dim) + _linear(time_dim, time_dim)
    total += (num_classes + 1) * time_dim + 2 * widths[0] + _conv(widths[0], io, 3)
    previous = widths[0]
    for level, width in enumerate(widths):  # down
        for j in range(layers):
            total += _resnet(previous if j == 0 else width, width, time_dim) + (level in attention) * _attention(width)
        total += _conv(width, width, 3) if level < len(widths) - 1 else 0
        previous = width
    if config.mid_block:
        total += 2 * _resnet(widths[-1], widths[-1], time_dim) + bool(attention) * _attention(widths[-1])
    reversed_widths = widths[::-1]
    for i, width in enumerate(reversed_widths):  # up: each resnet also takes a skip connection
        skip_in = reversed_widths[min(i + 1, len(widths) - 1)]
        for j in range(layers + 1):
            first = reversed_widths[max(i - 1, 0)] if j == 0 else width
            skip = skip_in if j == layers else width
            total += _resnet(first + skip, width, time_dim) + (len(widths) - 1 - i in attention) * _attention(width)
        total += _conv(width, width, 3) if i < len(widths) - 1 else 0
    fields = (f"block_out_channels={_short(list(widths))}, layers_per_block={layers}, "
              f"sample_size={config.image_size // config.patch_size}")
    return ModelSize(total, 4 * _activation_floats(config), fields)


def _conv(inputs: int, outputs: int, kernel: int) -> int:
    return inputs * outputs * kernel * kernel + outputs


def _linear(inputs: int, outputs: int) -> int:
    return inputs * outputs + outputs


def _resnet(inputs: int, outputs: int, time_dim: int) -> int:
    shortcut = _conv(inputs, outputs, 1) if inputs != outputs else 0
    return 2 * inputs + _conv(inputs, outputs, 3) + _linear(time_dim, outputs) + 2 * outputs + \
        _conv(outputs, outputs, 3) + shortcut


def _attention(width: int) -> int:
    inner = width // 8 * 8  # heads of diffusers' default attention_head_dim, 8
    return 2 * width + 3 * _linear(width, inner) + _linear(inner, width)


def _activation_floats(config: TrainConfig) -> int:
    """Floats alive at once in one image's forward pass (inference: no autograd graph is kept).

    The skip connections the down path hands to the up path, twenty maps of the widest level (an up
    block's concatenated input, its norm, conv and time-shifted copies, and the kernels' workspaces) and
    one attention score matrix: ``scaled_dot_product_attention`` does not hold one per head. Checked
    against the per-image peak memory of CPU forward passes of the GPU presets: 1.0–1.4× of it.
    """
    side = config.image_size // config.patch_size
    widths, last = config.block_out_channels, len(config.block_out_channels) - 1
    pixels = [(side >> level) ** 2 for level in range(len(widths))]
    skips = widths[0] * pixels[0] + sum(config.layers_per_block * w * p for w, p in zip(widths, pixels))
    skips += sum(widths[i] * pixels[i + 1] for i in range(last))
    working = 20 * max(w * p for w, p in zip(widths, pixels))
    attended = set(config.attention_levels) | ({last} if config.mid_block and config.attention_levels else set())
    scores = max((pixels[i] ** 2 for i in attended), default=0)
    return skips + working + scores


def max_model_bytes(device: torch.device | None = None) -> tuple[float, str]:
    """(the memory limit for loading and sampling a model, in bytes; where the limit comes from)."""
    raw = os.environ.get(MAX_MODEL_GB_ENV, "").strip()
    if raw:
        try:
            limit = float(raw)
        except ValueError:
            limit = math.nan
        if not (limit > 0 and math.isfinite(limit)):
            raise ValueError(f"{MAX_MODEL_GB_ENV}={raw!r}: expected a positive number of gigabytes")
        return limit * 1e9, f"set by {MAX_MODEL_GB_ENV}"
    if device is not None and device.type == "cuda":
        return float(torch.cuda.get_device_properties(device.index or 0).total_memory), f"the memory of {device}"
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")), "this machine's RAM"
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows)
        return FALLBACK_MAX_MODEL_GB * 1e9, "imgsynth's default"


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

