"""The registry's ``text2image`` kind: a pretrained pipeline, fine-tuned with LoRA on each generation's data.

Light to import (no torch, no diffusers until a pipeline is loaded), so checking a recipe stays fast.
:class:`Text2ImageOptions` is the one description of a text-to-image job: the recipe's
``[generator.options]``, ``imgsynth generate``'s flags and ``generate_text2image``'s keywords are its
fields, and the sampling job (:class:`~imgsynth.pipelines.text2image.sampling.Text2ImageSamplingJob`)
holds it as it is.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Sequence

from imgsynth.pipelines.base import GeneratorKind
from imgsynth.pipelines.work import DEFAULT_SHARD_SIZE

if TYPE_CHECKING:
    from imgsynth.imageset import ImageSet
    from imgsynth.pipelines.prompts import PromptBank
    from imgsynth.pipelines.text2image.sampling import Text2ImageSamplingJob


@dataclass
class Text2ImageOptions:
    """``model``: a local diffusers pipeline folder or a Hub id (generation 0 samples it as it is; later
    generations fine-tune a LoRA on the previous samples: ``lora_steps``, ``lora_rank``); ``classes`` and
    ``prompts`` (a bank's path or shipped name) choose the prompt bank; ``lora`` samples with a LoRA from
    ``imgsynth finetune`` (None: each class of the bank; an empty list is refused). Sampling: ``sample_steps`` and ``guidance_scale`` default by model (turbo-like:
    few steps and no guidance; others 30 and 7.5, ``loading.default_sampling``), ``negative_prompt`` to the
    bank's; ``sample_batch_size`` images per forward pass; ``dtype`` bf16/fp16/fp32 (default: bf16 on
    CUDA); ``caption_model`` a local language model that rewrites every caption; ``license`` the model's
    license when its card does not say."""

    model: str = ""
    classes: list[str] | None = None
    prompts: str | PromptBank = ""
    guidance_scale: float | None = None
    sample_steps: int | None = None
    negative_prompt: str | None = None
    sample_batch_size: int = 4
    shard_size: int = DEFAULT_SHARD_SIZE
    height: int | None = None
    width: int | None = None
    dtype: str | None = None
    compile: bool = False
    device: str | None = None
    caption_model: str | None = None
    license: str | None = None
    lora: str | None = None
    lora_steps: int = 200
    lora_rank: int = 8

    def validate(self) -> Text2ImageOptions:
        """Check what can be checked without loading the model; return ``self``."""
        if not self.model:
            raise ValueError("model: a text2image generator needs a local pipeline path or hub id")
        for name in ("sample_batch_size", "shard_size", "lora_steps", "lora_rank"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a whole number ≥ 1, got {value!r}")
        return self


class Text2ImageKind(GeneratorKind):
    """The ``text2image`` kind: a pretrained pipeline, fine-tuned with LoRA on each generation's data."""

    name = "text2image"
    Options = Text2ImageOptions
    # Any diffusers pipeline folder or Hub id: kinds with their own model files are asked first.
    ownership: ClassVar[Literal["specific", "fallback"]] = "fallback"
    recipe_fields = {name: name for name in ("model", "classes", "prompts", "lora_steps", "lora_rank",
                                             "guidance_scale", "sample_steps", "sample_batch_size", "device")}
    options: Text2ImageOptions

    @classmethod
    def owns(cls, model: str | Path) -> bool:
        """A diffusers pipeline folder (``model_index.json``) or anything that is not a folder (a Hub id)."""
        path = Path(model)
        return not path.is_dir() or (path / "model_index.json").is_file()

    @classmethod
    def options_for_model(cls, model: str | Path) -> dict[str, Any]:
        """Sampling a pipeline folder or Hub id means sampling that model."""
        return {"model": str(model)}

    @property
    def pretrained(self) -> str:
        """What generation 0 samples, untrained: the pretrained pipeline."""
        return self.options.model

    def fit(self, train_set: ImageSet, out: Path, seed: int, progress: bool = True) -> Path:
        """A LoRA of the pretrained pipeline fine-tuned on ``train_set``, saved at ``out``."""
        from imgsynth.pipelines.finetune import LoraConfig, finetune_lora

        o = self.options
        return finetune_lora(o.model, train_set, out, LoraConfig(steps=o.lora_steps, rank=o.lora_rank, seed=seed),
                             device=o.device, progress=progress)

    def job(self, model_dir: Path, per_class: int, seed: int, generation: int | None = None,
            classes: Sequence[str] | None = None) -> Text2ImageSamplingJob:
        """Sampling the pipeline (``model_dir`` is it, or a LoRA fine-tuned from it) with these options."""
        from imgsynth.pipelines.text2image.sampling import Text2ImageSamplingJob

        o = self.options
        lora = o.lora or (None if str(model_dir) == str(o.model) else str(model_dir))
        chosen = list(classes) if classes is not None else o.classes
        return Text2ImageSamplingJob(dataclasses.replace(o, lora=lora, classes=chosen), per_class=per_class,
                                     seed=seed, generation=generation or 0)
