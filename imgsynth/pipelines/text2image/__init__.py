"""Pretrained text-to-image pipelines (diffusers) → a labeled ImageSet, resumable shard by shard.

- ``loading``: load a pipeline (folder or Hub id; pickle weights refused), what identifies it (weights
  hash, LoRA record), device and dtype choice.
- ``generator``: render prompts + seeds into samples (``Text2ImageGenerator``), ``generate_text2image``
  (fixed shards, resumable, byte-identical however split), the registry's ``text2image`` kind and its
  adapter for backends.
"""

from imgsynth.pipelines.text2image.generator import (SamplingOptions, Text2ImageGenerator, Text2ImageKind,
                                                     Text2ImageOptions, Text2ImageShardGenerator, check_plan,
                                                     finished_set, generate_text2image, lora_parents,
                                                     plan_fingerprint, plan_text2image, rewrite_items,
                                                     write_text2image_shards)
from imgsynth.pipelines.text2image.loading import (DEFAULT_GUIDANCE, DEFAULT_STEPS, DENOISERS, DTYPES,
                                                   FEW_STEP_MODELS, component_folder, default_sampling,
                                                   denoiser_name, hub_offline, load_text2image_pipeline,
                                                   lora_record, resolve_device, resolve_dtype, weights_hash)

__all__ = [name for name in dir() if not name.startswith("_")]
