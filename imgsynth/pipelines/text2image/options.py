"""The options of a text-to-image job: the one description of it that the recipe's ``[generator.options]``,
``imgsynth generate``'s flags, ``generate_text2image``'s keywords and the sampling job all share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from imgsynth.limits import MAX_BATCH_SIZE, MAX_LORA_RANK, MAX_PIPELINE_SIDE, MAX_STEPS, check_count
from imgsynth.pipelines.work import DEFAULT_SHARD_SIZE

if TYPE_CHECKING:
    from imgsynth.pipelines.prompts import PromptBank


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
        # Upper bounds (imgsynth.limits): past them a count allocates for minutes before failing.
        for name, high in (("sample_batch_size", MAX_BATCH_SIZE), ("shard_size", MAX_BATCH_SIZE),
                           ("lora_steps", MAX_STEPS), ("lora_rank", MAX_LORA_RANK)):
            check_count(name, getattr(self, name), high)
        for name in ("height", "width"):
            if getattr(self, name) is not None:
                check_count(name, getattr(self, name), MAX_PIPELINE_SIDE, low=8)
        return self
