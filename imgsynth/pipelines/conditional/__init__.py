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
- ``generator``: ``sample`` into a labeled ImageSet, shard by shard, byte-identical however the work is
  split or resumed; the registry's ``conditional`` kind.
"""

from imgsynth.pipelines.conditional.config import (BETA_SCHEDULES, DEFAULT_GUIDANCE_SCALE, DEFAULT_SAMPLE_STEPS,
                                                   MAX_IMAGE_SIZE, MAX_LAYERS_PER_BLOCK, MAX_TRAIN_TIMESTEPS,
                                                   PREDICTION_TYPES, PRESETS, RUNTIME_FIELDS, SAMPLERS, TrainConfig,
                                                   preset, train_config_from_dict)
from imgsynth.pipelines.conditional.folder import (CHECKPOINTS, MODEL_FILE, MODEL_FILES, MODEL_FORMAT_VERSION,
                                                   PIPELINE_FILE, PIPELINE_NAME, SCHEDULER_CONFIG_FILE,
                                                   UNET_CONFIG_FILE, WEIGHTS_FILE, LoadedModel, ModelLayout,
                                                   check_model_dir, is_model_dir, load_model, read_model_info)
from imgsynth.pipelines.conditional.generator import (SamplingJob, SamplingPlan, sample, sample_shards,
                                                      write_shards)
from imgsynth.pipelines.conditional.model import (FALLBACK_MAX_MODEL_GB, MAX_MODEL_GB_ENV, MAX_PARAMETERS,
                                                  ModelSize, build_noise_scheduler, build_sampler, build_unet,
                                                  check_model_size, estimate_size, max_model_bytes,
                                                  noise_scheduler_config, unet_config)
from imgsynth.pipelines.conditional.pipeline import ClassConditionalPipeline, denoise, initial_noise, to_pil
from imgsynth.pipelines.conditional.training import (BatchOrder, Checkpoints, DataParallel, StepCallback,
                                                     TrainingData, diffusion_loss, load_training_data, train)

__all__ = [name for name in dir() if not name.startswith("_")]
