"""Pretrained text-to-image pipelines (diffusers) → a labeled ImageSet, resumable shard by shard.

- ``loading``: load a pipeline (folder or Hub id; pickle weights refused), what identifies it (weights
  hash, LoRA record), device and dtype choice.
- ``renderer``: a loaded pipeline rendering prompts + seeds into samples (``Text2ImageRenderer``).
- ``sampling``: the work plan and the sampling job every backend drives (``Text2ImageSamplingJob``),
  ``generate_text2image`` (fixed shards, resumable, byte-identical however split).
- ``options``, ``kind``: a job's options and the registry's ``text2image`` kind (light: no torch until used).
"""

from imgsynth.pipelines.text2image.kind import Text2ImageKind
from imgsynth.pipelines.text2image.options import Text2ImageOptions
from imgsynth.pipelines.text2image.loading import (DEFAULT_GUIDANCE, DEFAULT_STEPS, DENOISERS, DTYPES,
                                                   FEW_STEP_MODELS, component_folder, default_sampling,
                                                   denoiser_name, hub_offline, load_text2image_pipeline,
                                                   lora_record, resolve_dtype, weights_hash)
from imgsynth.pipelines.text2image.renderer import SamplingOptions, Text2ImageRenderer, rewrite_items
from imgsynth.pipelines.text2image.sampling import (Text2ImageSamplingJob, check_plan, generate_text2image,
                                                    lora_parents, plan_fingerprint, plan_text2image)

__all__ = [name for name in dir() if not name.startswith("_")]
