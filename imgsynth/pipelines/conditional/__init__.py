"""A small class-conditional diffusion model trained from scratch on a labeled ImageSet, and its sampler.

Built from diffusers parts (``model``): a ``UNet2DModel`` whose class embedding has one extra row, the
*null* class, used for classifier-free guidance (labels are dropped to it during training); a
``DDPMScheduler`` for the training noise; DPM-Solver++ (or DDIM, eta 0) for sampling; ``EMAModel`` for
the averaged weights that are saved. Images may be folded into channels before the UNet (``patch_size``,
a pixel-unshuffle), which makes the 16-pixel CPU preset about five times cheaper to train for a point or
two of class accuracy.

- ``config``: ``TrainConfig``, presets and their checks.
- ``model``: the UNet, schedulers and samplers a config builds; their size, estimated without building.
- ``training``: ``train`` (resumable, checkpointed, optionally data-parallel) and the loss.
- ``folder``: the model folder on disk (a diffusers pipeline folder plus ``imgsynth_model.json``) and
  its checked loading; folders of the older flat layout still load.
- ``pipeline``: ``ClassConditionalPipeline``, a ``DiffusionPipeline`` (``from_pretrained`` /
  ``save_pretrained`` / ``__call__``), and the denoising loop both it and ``sample`` use.
- ``sampling``: the kind's sampling job (``ConditionalSamplingJob``) and ``sample`` into a labeled
  ImageSet, shard by shard, byte-identical however the work is split, resumed or spread over backends.
- ``kind``: the registry's ``conditional`` kind and its options (light: no torch until used).

Names are loaded from their modules on first use, so ``import imgsynth.pipelines.conditional`` costs no
torch import; ``DiffusionPipeline.from_pretrained(model_dir)`` needs ``ClassConditionalPipeline`` loaded
(``from imgsynth.pipelines.conditional import ClassConditionalPipeline``).
"""

from __future__ import annotations

import importlib
from typing import Any

# Public name -> the module of this package that defines it.
_HOMES: dict[str, str] = {
    'BETA_SCHEDULES': 'config',
    'BatchOrder': 'training',
    'CHECKPOINTS': 'folder',
    'Checkpoints': 'training',
    'ClassConditionalPipeline': 'pipeline',
    'ConditionalKind': 'kind',
    'ConditionalOptions': 'kind',
    'ConditionalSamplingJob': 'sampling',
    'DEFAULT_GUIDANCE_SCALE': 'config',
    'DEFAULT_SAMPLE_STEPS': 'config',
    'DataParallel': 'training',
    'FALLBACK_MAX_MODEL_GB': 'model',
    'LoadedModel': 'folder',
    'MAX_IMAGE_SIZE': 'config',
    'MAX_LAYERS_PER_BLOCK': 'config',
    'MAX_MODEL_GB_ENV': 'model',
    'MAX_PARAMETERS': 'model',
    'MAX_TRAIN_TIMESTEPS': 'config',
    'MODEL_FILE': 'folder',
    'MODEL_FILES': 'folder',
    'MODEL_FORMAT_VERSION': 'folder',
    'ModelLayout': 'folder',
    'ModelSize': 'model',
    'PIPELINE_FILE': 'folder',
    'PIPELINE_NAME': 'folder',
    'PREDICTION_TYPES': 'config',
    'PRESETS': 'config',
    'RUNTIME_FIELDS': 'config',
    'SAMPLERS': 'config',
    'SCHEDULER_CONFIG_FILE': 'folder',
    'SamplingPlan': 'sampling',
    'StepCallback': 'training',
    'TrainConfig': 'config',
    'TrainingData': 'training',
    'UNET_CONFIG_FILE': 'folder',
    'WEIGHTS_FILE': 'folder',
    'build_noise_scheduler': 'model',
    'build_sampler': 'model',
    'build_unet': 'model',
    'check_model_dir': 'folder',
    'check_model_size': 'model',
    'denoise': 'pipeline',
    'diffusion_loss': 'training',
    'estimate_size': 'model',
    'initial_noise': 'pipeline',
    'is_model_dir': 'folder',
    'load_model': 'folder',
    'load_training_data': 'training',
    'max_model_bytes': 'model',
    'noise_scheduler_config': 'model',
    'preset': 'config',
    'read_model_info': 'folder',
    'sample': 'sampling',
    'sample_shards': 'sampling',
    'to_pil': 'pipeline',
    'train': 'training',
    'train_config_from_dict': 'config',
    'unet_config': 'model',
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
