"""The registry's ``text2image`` kind: a pretrained pipeline, fine-tuned with LoRA on each generation's data.

Light to import (no torch, no diffusers until a pipeline is loaded), so checking a recipe stays fast.
Its options are :class:`~imgsynth.pipelines.text2image.options.Text2ImageOptions`, which the sampling job
(:class:`~imgsynth.pipelines.text2image.sampling.Text2ImageSamplingJob`) holds as they are.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Sequence

from imgsynth.pipelines.base import GeneratorKind
from imgsynth.pipelines.text2image.options import Text2ImageOptions

if TYPE_CHECKING:
    from imgsynth.imageset import ImageSet
    from imgsynth.pipelines.text2image.sampling import Text2ImageSamplingJob


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
