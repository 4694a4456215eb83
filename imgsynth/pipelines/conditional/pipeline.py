"""Sampling the class-conditional model: the denoising loop, and the model as a diffusers ``DiffusionPipeline``.

``ClassConditionalPipeline`` is what ``imgsynth train`` saves (``save_pretrained``) and what
``DiffusionPipeline.from_pretrained(model_dir)`` returns once this module is imported (importing it
makes the class known to diffusers by name; no remote code is involved)::

    from diffusers import DiffusionPipeline
    from imgsynth.pipelines.conditional import ClassConditionalPipeline  # noqa: F401 (makes the class known)

    pipe = DiffusionPipeline.from_pretrained("runs/digits-collapse/seed_0/gen_0/model")
    images = pipe(class_labels=["3", "7"], generator=[torch.Generator().manual_seed(s) for s in (1, 2)]).images

With one ``torch.Generator`` per image seeded with an image's seed, the images are those ``imgsynth
generate`` writes for that seed (sampling is deterministic and an image never depends on its batch).
"""

from __future__ import annotations

from typing import Any, Sequence

import diffusers
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, DiffusionPipeline, ImagePipelineOutput, UNet2DModel
from PIL import Image

from imgsynth.pipelines import device as devices
from imgsynth.pipelines.conditional.config import DEFAULT_GUIDANCE_SCALE, DEFAULT_SAMPLE_STEPS
from imgsynth.pipelines.conditional.folder import LoadedModel
from imgsynth.pipelines.conditional.model import build_sampler
from imgsynth.pipelines.work import WorkItem


class ClassConditionalPipeline(DiffusionPipeline):
    """A class-conditional diffusion model with classifier-free guidance, as a diffusers pipeline.

    Components: ``unet`` (a ``UNet2DModel`` with ``len(class_names) + 1`` class embeddings, the last the
    null class) and ``scheduler`` (the training ``DDPMScheduler``; the sampler, DPM-Solver++ or DDIM,
    is derived from its config at each call). The config holds what sampling needs besides the weights:
    ``class_names``, ``image_mode``, ``patch_size`` (pixel-unshuffle factor), the default ``sampler``,
    ``sample_steps`` and ``guidance_scale``, and whether the UNet was trained under bf16 autocast.
    """

    model_cpu_offload_seq = "unet"

    def __init__(self, unet: UNet2DModel, scheduler: DDPMScheduler, class_names: list[str] | None = None,
                 image_mode: str = "L",
                 patch_size: int = 1, sampler: str = "dpm++", sample_steps: int = DEFAULT_SAMPLE_STEPS,
                 guidance_scale: float = DEFAULT_GUIDANCE_SCALE, mixed_precision: bool = True) -> None:
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        self.register_to_config(class_names=list(class_names or []), image_mode=image_mode, patch_size=int(patch_size),
                                sampler=sampler, sample_steps=int(sample_steps),
                                guidance_scale=float(guidance_scale), mixed_precision=bool(mixed_precision))

    def as_loaded_model(self) -> LoadedModel:
        """The view of this pipeline that :func:`denoise` samples from."""
        config = self.config
        info = {"classes": list(config.class_names), "null_class_index": len(config.class_names),
                "patch_size": config.patch_size, "image_mode": config.image_mode,
                "training_config": {"mixed_precision": config.mixed_precision}}
        return LoadedModel(self.unet, info, dict(self.scheduler.config), "", self.unet.device)

    @torch.inference_mode()
    def __call__(self, class_labels: Sequence[str | int], guidance_scale: float | None = None,
                 num_inference_steps: int | None = None,
                 generator: torch.Generator | Sequence[torch.Generator] | None = None,
                 sampler: str | None = None, noise_temperature: float = 1.0, output_type: str = "pil",
                 return_dict: bool = True) -> ImagePipelineOutput | tuple[Any]:
        """Sample one image per entry of ``class_labels`` (class names or indices into ``class_names``).

        ``guidance_scale`` (classifier-free guidance), ``num_inference_steps`` and ``sampler`` ("dpm++" or
        "ddim") default to the model's. ``generator`` is one CPU ``torch.Generator`` for the whole batch or
        one per image (then an image depends only on its own generator); ``noise_temperature`` scales the
        starting noise. ``output_type`` "pil" gives PIL images, "np" uint8 arrays (N, H, W, C), "pt" the
        float tensor in [-1, 1]. Returns ``ImagePipelineOutput(images=...)`` or, with ``return_dict=False``,
        a one-element tuple.
        """
        config = self.config
        names = list(config.class_names)
        indices = [names.index(c) if isinstance(c, str) and c in names else c for c in class_labels]
        bad = [c for c in indices if not isinstance(c, int) or not 0 <= c < len(names)]
        if bad:
            raise ValueError(f"class_labels {bad} are not classes of this model; it knows {names}")
        channels = 1 if config.image_mode == "L" else 3
        side = int(self.unet.config.sample_size) * config.patch_size
        shape = (channels, side, side)
        generators = list(generator) if isinstance(generator, (list, tuple)) else None
        if generators is not None and len(generators) != len(indices):
            raise ValueError(f"got {len(generators)} generators for {len(indices)} images; pass one per image "
                             "or a single one")
        if generators is None:
            noise = torch.randn((len(indices), *shape), generator=generator)
        else:
            noise = torch.stack([torch.randn(shape, generator=g) for g in generators])
        images = denoise(self.as_loaded_model(), noise * noise_temperature, torch.tensor(indices, dtype=torch.long),
                         guidance_scale=config.guidance_scale if guidance_scale is None else float(guidance_scale),
                         steps=config.sample_steps if num_inference_steps is None else int(num_inference_steps),
                         sampler=sampler or config.sampler)
        if output_type == "pt":
            result: Any = images
        elif output_type == "np":
            result = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().permute(0, 2, 3, 1).numpy()
        else:
            result = to_pil(images, config.image_mode)
        return ImagePipelineOutput(images=result) if return_dict else (result,)


# DiffusionPipeline.from_pretrained finds a pipeline class by its name in the diffusers namespace; this
# makes a saved model folder load there with nothing but this import (no custom_pipeline, no remote code).
setattr(diffusers, ClassConditionalPipeline.__name__, ClassConditionalPipeline)


@torch.inference_mode()
def denoise(model: LoadedModel, noise: torch.Tensor, class_indices: torch.Tensor, *, guidance_scale: float,
            steps: int, sampler: str | Any) -> torch.Tensor:
    """Run the sampler from ``noise`` (N, C, H, W in image space) to images in [-1, 1] (image space).

    ``sampler`` is a name from ``SAMPLERS`` or a scheduler built by ``build_sampler`` (reused: its state
    is reset by ``set_timesteps``).

    Classifier-free guidance mixes the conditional and null-class predictions in one doubled batch;
    scales 1 and 0 need only one of them.
    """
    info = model.info
    patch = int(info["patch_size"])
    null_class = int(info.get("null_class_index", len(info["classes"])))
    scheduler = build_sampler(sampler, model.scheduler_config) if isinstance(sampler, str) else sampler
    scheduler.set_timesteps(steps, device=model.device)
    x = devices.prepare_input(noise, model.device) * scheduler.init_noise_sigma
    if patch > 1:
        x = F.pixel_unshuffle(x, patch)
    cond = class_indices.to(model.device)
    uncond = torch.full_like(cond, null_class)
    if guidance_scale == 1.0:
        labels = cond
    elif guidance_scale == 0.0:
        labels = uncond
    else:
        labels = torch.cat([cond, uncond])
    autocast_enabled = bool(info["training_config"].get("mixed_precision", True))
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(x, t)
        if len(labels) != len(x):
            model_input = torch.cat([model_input, model_input])
        with devices.autocast(model.device, autocast_enabled):
            out = model.unet(model_input, t, class_labels=labels).sample.float()
        if len(labels) != len(x):
            conditional, unconditional = out.chunk(2)
            out = unconditional + guidance_scale * (conditional - unconditional)
        x = scheduler.step(out, t, x).prev_sample
    if patch > 1:
        x = F.pixel_shuffle(x, patch)
    return x


def initial_noise(items: Sequence[WorkItem], shape: Sequence[int], temperature: float = 1.0) -> torch.Tensor:
    """Each item's starting noise from its own CPU generator, so an image never depends on its batch."""
    noise = [torch.randn(tuple(shape), generator=torch.Generator().manual_seed(item.seed)) for item in items]
    return torch.stack(noise) * temperature


def to_pil(images: torch.Tensor, mode: str) -> list[Image.Image]:
    """Images in [-1, 1] (N, C, H, W) → 8-bit PIL images (rounded, not truncated)."""
    array = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
    if mode == "L":
        return [Image.fromarray(a[0], mode="L") for a in array]
    return [Image.fromarray(a.transpose(1, 2, 0), mode="RGB") for a in array]

