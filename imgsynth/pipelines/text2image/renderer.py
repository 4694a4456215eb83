"""A loaded text-to-image pipeline that renders work items (prompts + seeds) into samples.

Any pipeline ``AutoPipelineForText2Image`` can load works: Stable Diffusion 1.x/2.x, SD-Turbo, SDXL,
PixArt, FLUX, … from a local ``save_pretrained`` folder or a Hub id (from the local cache when
``HF_HUB_OFFLINE=1``). Every image has its own ``torch.Generator`` seeded from its work item and handed
to the pipeline as a list, so an image's noise does not depend on which batch, shard or worker it lands in.

On CUDA the pipeline runs in bf16 (fp16 where bf16 is unsupported) with PyTorch's scaled-dot-product
attention (the diffusers default on torch 2), channels-last UNets and, optionally, a compiled denoiser.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from PIL import Image

from imgsynth.compute import fast_matmul, resolve_device
from imgsynth.generator_record import GeneratorRecord
from imgsynth.imageset import Sample
from imgsynth.pipelines.prompts import CaptionRewriter
from imgsynth.pipelines.text2image.loading import (CAPTION_REWRITE_BATCH, DEFAULT_GUIDANCE, DEFAULT_STEPS,
                                                  component_folder, denoiser_name, load_text2image_pipeline,
                                                  lora_record, weights_hash)
from imgsynth.pipelines.work import WorkItem, batches
from imgsynth.provenance import model_license
from imgsynth.safe_loading import UnsafeFileError, refusing_pickles


@dataclass(frozen=True)
class SamplingOptions:
    """How every image is sampled; all of it is recorded in the manifest and in each image's row."""

    steps: int = DEFAULT_STEPS
    guidance_scale: float = DEFAULT_GUIDANCE
    negative_prompt: str = ""
    height: int | None = None
    width: int | None = None

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        if self.guidance_scale < 0:
            raise ValueError(f"guidance scale must be non-negative, got {self.guidance_scale}")
        for side in (self.height, self.width):
            if side is not None and side < 8:
                raise ValueError(f"image height/width must be at least 8 pixels, got {side}")

    @property
    def guided(self) -> bool:
        # diffusers applies classifier-free guidance (and so the negative prompt) only above 1.
        return self.guidance_scale > 1.0


class Text2ImageRenderer:
    """A loaded pipeline that renders ``WorkItem`` lists (prompts + seeds) into ``Sample`` lists.

    ``render`` is a pure function of the items and the options: the same items give the same pixels
    whichever batch size, shard or process renders them (up to float rounding across batch sizes).
    """

    def __init__(self, pipe: Any, model: str, *, device: str, lora: str | Path | Mapping[str, Any] | None = None,
                 compiled: bool = False) -> None:
        self.pipe = pipe
        self.model = model
        self.device = device
        # The LoRA already loaded into ``pipe``: its path, or the record ``lora_record`` made of it.
        self.lora = dict(lora) if isinstance(lora, Mapping) else (lora_record(lora) if lora else None)
        self.compiled = compiled
        self._provenance: dict[str, Any] | None = None
        self.denoiser = denoiser_name(pipe)
        self._call_parameters = set(inspect.signature(pipe.__call__).parameters)
        pipe.set_progress_bar_config(disable=True)  # one outer bar over images, not one per batch

    @classmethod
    def from_pretrained(cls, model: str | os.PathLike, *, device: str | None = None, dtype: Any = None,
                        lora: str | Path | None = None, compile: bool = False,
                        channels_last: bool | None = None) -> Text2ImageRenderer:
        """Load ``model`` (folder or Hub id), move it to ``device`` and apply the speed settings.

        ``channels_last`` defaults to on for CUDA UNets; ``compile`` wraps the denoiser in
        ``torch.compile`` (first batches are slow while it compiles).
        """
        import torch

        device = str(resolve_device(device))
        record = lora_record(lora) if lora else None  # a wrong LoRA path fails before the slow load
        pipe = load_text2image_pipeline(model, device=device, dtype=dtype)
        if record is not None:
            if not hasattr(pipe, "load_lora_weights"):
                raise ValueError(f"{type(pipe).__name__} cannot load LoRA weights (diffusers has no LoRA loader "
                                 "for it); generate without --lora")
            try:
                with refusing_pickles(record["path"], "LoRA weights"):
                    pipe.load_lora_weights(record["path"])
            except UnsafeFileError:
                raise
            except (ValueError, OSError, KeyError) as exc:
                raise ValueError(f"LoRA {str(lora)!r} does not fit model {str(model)!r}: {exc}") from exc
        pipe.to(device)
        name = denoiser_name(pipe)
        if channels_last if channels_last is not None else device.startswith("cuda"):
            # Convolutions prefer channels-last; transformer denoisers have none, so only UNets and the VAE.
            if name == "unet":
                pipe.unet.to(memory_format=torch.channels_last)
            if getattr(pipe, "vae", None) is not None:
                pipe.vae.to(memory_format=torch.channels_last)
        if compile:
            setattr(pipe, name, torch.compile(getattr(pipe, name), dynamic=False))
        return cls(pipe, str(model), device=device, lora=record, compiled=compile)

    # ---- provenance
    def provenance(self) -> dict[str, Any]:
        """The manifest's record of the model: pipeline and scheduler class, path or id, weights hash, LoRA.

        Computed once per loaded pipeline (hashing multi-gigabyte weights takes seconds).
        """
        if self._provenance is None:
            self._provenance = self._describe()
        return dict(self._provenance)

    def _describe(self) -> dict[str, Any]:
        pipe = self.pipe
        folder = component_folder(pipe, self.denoiser)
        root = folder.parent if folder is not None else None
        model_path = Path(self.model).expanduser()
        record = GeneratorRecord(
            "text2image", type(pipe).__name__,
            str(model_path.resolve()) if model_path.exists() else (str(root) if root else None),
            weights_hash(folder) if folder is not None else None, None, settings={
                "model": self.model, "denoiser": self.denoiser, "scheduler": type(pipe.scheduler).__name__,
                "dtype": str(getattr(pipe, "dtype", "")).replace("torch.", ""), "lora": self.lora,
                "compiled": self.compiled}).to_dict()
        if not model_path.exists() and root is not None and root.parent.name == "snapshots":
            record["revision"] = root.name  # the Hub commit the cache resolved to
        record["license"] = model_license(model_path if model_path.exists() else self.model)
        return record

    # ---- rendering
    def render(self, items: Sequence[WorkItem], options: SamplingOptions, *, batch_size: int = 4,
               rewriter: CaptionRewriter | None = None, generation: int = 0,
               on_batch: Callable[[int], object] | None = None) -> list[Sample]:
        """Render ``items`` in batches of ``batch_size``; one torch.Generator per image, seeded by its item."""
        import torch

        if rewriter is not None:
            items = rewrite_items(items, rewriter)
        tag = self.image_tag()
        samples: list[Sample] = []
        for batch in batches(items, batch_size):
            prompts = [item.prompt or item.caption for item in batch]
            kwargs: dict[str, Any] = {
                "prompt": prompts, "num_inference_steps": options.steps,
                "guidance_scale": options.guidance_scale, "output_type": "np",
                "generator": [torch.Generator("cpu").manual_seed(item.seed) for item in batch],
            }
            negative = options.negative_prompt if options.guided else ""
            if negative:
                if "negative_prompt" not in self._call_parameters:
                    raise ValueError(f"{type(self.pipe).__name__} takes no negative prompt; "
                                     "generate without one (--negative-prompt '')")
                kwargs["negative_prompt"] = [negative] * len(batch)
            if options.height:
                kwargs["height"] = options.height
            if options.width:
                kwargs["width"] = options.width
            with torch.inference_mode(), fast_matmul(self.device):
                images = self.pipe(**kwargs).images
            for item, array in zip(batch, _as_uint8(images)):
                samples.append(Sample(
                    Image.fromarray(array), item.label, item.caption, item.seed, item.image_id,
                    {"prompt": item.prompt or item.caption,
                     "negative_prompt": negative, "guidance_scale": options.guidance_scale,
                     "steps": options.steps, "generator": tag, "generation": generation,
                     "caption_fields": item.extra.get("caption_fields", {})}))
            if on_batch is not None:
                on_batch(len(batch))
        return samples

    def image_tag(self) -> str:
        """Short per-image name of what made the image: pipeline class, model, and LoRA when there is one."""
        tag = f"{type(self.pipe).__name__}:{self.model}"
        return f"{tag}+lora:{Path(self.lora['path']).name}" if self.lora else tag


def _as_uint8(images: Any) -> list[np.ndarray]:
    """Pipeline output (float arrays in [0, 1] or PIL images) as HxWx3 uint8 arrays, rounded like diffusers."""
    out: list[np.ndarray] = []
    for image in images:
        if isinstance(image, Image.Image):
            out.append(np.asarray(image.convert("RGB")))
            continue
        array = np.nan_to_num(np.asarray(image, dtype=np.float32), nan=0.0)
        out.append((np.clip(array, 0.0, 1.0) * 255.0).round().astype(np.uint8))
    return out


def rewrite_items(items: Sequence[WorkItem], rewriter: CaptionRewriter) -> list[WorkItem]:
    """Items with captions rewritten by a language model; the template caption is kept in the fields."""
    rewritten: list[WorkItem] = []
    for chunk in batches(items, CAPTION_REWRITE_BATCH):
        texts = rewriter([item.caption for item in chunk])
        for item, text in zip(chunk, texts):
            fields = {**item.extra.get("caption_fields", {}), "template_caption": item.caption,
                      "caption_model": str(rewriter.path)}
            suffix = item.prompt[len(item.caption):] if item.prompt.startswith(item.caption) else ""
            rewritten.append(dataclasses.replace(item, caption=text, prompt=text + suffix,
                                                 extra={**item.extra, "caption_fields": fields}))
    return rewritten
