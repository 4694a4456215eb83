"""A small class-conditional diffusion model trained from scratch on a labeled ImageSet, and its sampler.

Built from diffusers parts: a ``UNet2DModel`` whose class embedding has one extra row, the *null* class,
used for classifier-free guidance (labels are dropped to it during training); a ``DDPMScheduler`` for the
training noise; DPM-Solver++ (or DDIM, eta 0) for sampling; ``EMAModel`` for the averaged weights that
are saved. Images may be folded into channels before the UNet (``patch_size``, a pixel-unshuffle), which
makes the 16-pixel CPU preset about five times cheaper to train for a point or two of class accuracy.

``train`` writes a *model dir*: the EMA UNet (``save_pretrained``, safetensors only), the training
scheduler's config and ``imgsynth_model.json`` (classes, training config, the training set as parent,
the weights' hash). Training checkpoints land in ``<model dir>/checkpoints`` and a killed run resumes
from the latest; every step's batch, noise and timesteps derive from (seed, step), so a resumed run
ends where an uninterrupted one would.

``sample`` writes a balanced, labeled ImageSet. Each image's starting noise comes from its own seed
(``work.image_seed``), the sampler is deterministic, and work is computed in the fixed shards of the
manifest, so the same seed gives byte-identical images however the work is split or resumed.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import shutil
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Collection, Mapping, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from imgsynth.imageset import ImageSet, ImageSetError, ImageSetWriter, Sample
from imgsynth.locking import folder_lock
from imgsynth.pipelines import device as devices
from imgsynth.pipelines.work import DEFAULT_SHARD_SIZE, WorkItem, balanced_work, batches, shards
from imgsynth.provenance import sha256_file, software_versions
from imgsynth.safe_loading import load_torch_file

PIPELINE_NAME = "ClassConditionalDiffusion"
MODEL_FILE = "imgsynth_model.json"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
CHECKPOINTS = "checkpoints"
MODEL_FORMAT_VERSION = 1
DEFAULT_GUIDANCE_SCALE = 2.0
DEFAULT_SAMPLE_STEPS = 20
SAMPLERS = ("dpm++", "ddim")
# Pickle-based weight files: loading them can run code, so imgsynth refuses them.
UNSAFE_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# Fields that do not change what a training run computes; a resumed run may differ in them.
RUNTIME_FIELDS = ("device", "checkpoint_every", "keep_checkpoints", "compile")
# The forward-process schedules both samplers (DPM-Solver++, DDIM) accept.
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "v_prediction")
# Bounds past any model `imgsynth train` makes sensibly. They keep a hand-edited or damaged config from
# asking for unbounded memory or time before any message; the size estimate (``estimate_size``) covers
# what they leave open, such as very wide levels.
MAX_IMAGE_SIZE = 1024
MAX_LAYERS_PER_BLOCK = 16
MAX_TRAIN_TIMESTEPS = 100_000
MAX_PARAMETERS = 2_000_000_000
# Loading or sampling a model whose estimated float32 weights plus activations exceed the memory of the
# device it runs on (a CUDA device's memory, or the machine's RAM) is refused; this environment variable
# sets another limit, in GB (10^9 bytes). Where the memory cannot be read the limit is 16 GB.
MAX_MODEL_GB_ENV = "IMGSYNTH_MAX_MODEL_GB"
FALLBACK_MAX_MODEL_GB = 16.0
UNET_CONFIG_FILE = "config.json"
SCHEDULER_CONFIG_FILE = "scheduler_config.json"
MODEL_FILES = (MODEL_FILE, UNET_CONFIG_FILE, SCHEDULER_CONFIG_FILE, WEIGHTS_FILE)


# --------------------------------------------------------------------------------------------- config

@dataclass
class TrainConfig:
    """Everything that decides a training run; plain data, so ``dataclasses.asdict`` is JSON-ready.

    Architecture: ``block_out_channels`` per UNet level (each level halves the resolution),
    ``attention_levels`` the level indices with self-attention, ``patch_size`` the pixel-unshuffle factor
    applied before the UNet. Diffusion: ``label_dropout`` is the fraction of labels replaced by the null
    class (classifier-free guidance); ``snr_gamma`` enables Min-SNR loss weighting. ``sampler``,
    ``sample_steps`` and ``guidance_scale`` are the defaults ``sample`` uses for this model.
    ``mixed_precision`` (bf16 autocast) and ``compile`` apply on CUDA only.
    """

    preset: str = "custom"
    # data and architecture
    image_size: int = 16
    channels: int = 1
    patch_size: int = 1
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    attention_levels: tuple[int, ...] = ()
    mid_block: bool = True
    norm_num_groups: int = 8
    dropout: float = 0.0
    hflip: bool = False
    # optimisation
    steps: int = 1000
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    lr_schedule: str = "cosine"
    warmup_steps: int = 50
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    ema_power: float = 0.75
    # diffusion
    label_dropout: float = 0.1
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    # v-prediction: the cosine schedule's last timestep has almost no signal, where an epsilon model's
    # image estimate is ill-conditioned; v keeps it well-posed (and trained better here: benchmarks/README.md).
    prediction_type: str = "v_prediction"
    snr_gamma: float | None = 5.0
    sampler: str = "dpm++"
    sample_steps: int = DEFAULT_SAMPLE_STEPS
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE
    # run
    seed: int = 0
    device: str | None = None
    checkpoint_every: int = 500
    keep_checkpoints: bool = False
    mixed_precision: bool = True
    compile: bool = False

    def __post_init__(self) -> None:
        # JSON round trips turn tuples into lists; keep the declared types.
        self.block_out_channels = tuple(int(c) for c in self.block_out_channels)
        self.attention_levels = tuple(int(c) for c in self.attention_levels)

    def validate(self) -> TrainConfig:
        """Raise ``ValueError`` naming the first invalid field; return ``self`` when all are valid."""
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(f"TrainConfig ({self.preset}): {message}")

        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            problem = _type_problem(str(spec.type), value)
            need(problem is None, f"{spec.name} = {value!r} {problem}")
        levels = len(self.block_out_channels)
        need(4 <= self.image_size <= MAX_IMAGE_SIZE,
             f"image_size must lie in [4, {MAX_IMAGE_SIZE}], got {self.image_size}")
        need(self.channels in (1, 3), f"channels must be 1 (grayscale) or 3 (RGB), got {self.channels}")
        need(self.patch_size >= 1, f"patch_size must be at least 1, got {self.patch_size}")
        need(levels >= 1 and all(c > 0 for c in self.block_out_channels),
             f"block_out_channels must be positive, got {self.block_out_channels}")
        factor = self.patch_size * 2 ** (levels - 1)
        need(self.image_size % factor == 0,
             f"image_size {self.image_size} must be divisible by patch_size × 2^(levels-1) = {factor}")
        need(self.norm_num_groups >= 1, f"norm_num_groups must be at least 1, got {self.norm_num_groups}")
        need(all(c % self.norm_num_groups == 0 for c in self.block_out_channels),
             f"every block_out_channels entry must be divisible by norm_num_groups={self.norm_num_groups}")
        need(all(0 <= i < levels for i in self.attention_levels),
             f"attention_levels must index block_out_channels (0..{levels - 1}), got {self.attention_levels}")
        need(1 <= self.layers_per_block <= MAX_LAYERS_PER_BLOCK,
             f"layers_per_block must lie in [1, {MAX_LAYERS_PER_BLOCK}], got {self.layers_per_block}")
        need(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")
        need(self.steps >= 1, f"steps must be at least 1, got {self.steps}")
        need(self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}")
        need(0 < self.lr < math.inf, f"lr must be positive, got {self.lr}")
        need(self.weight_decay >= 0, f"weight_decay must be ≥ 0, got {self.weight_decay}")
        need(self.lr_schedule in ("cosine", "constant"),
             f"lr_schedule must be 'cosine' or 'constant', got {self.lr_schedule!r}")
        need(self.warmup_steps >= 0, f"warmup_steps must be ≥ 0, got {self.warmup_steps}")
        need(self.grad_clip >= 0, f"grad_clip must be ≥ 0 (0 disables), got {self.grad_clip}")
        need(0.0 <= self.ema_decay < 1.0, f"ema_decay must be in [0, 1), got {self.ema_decay}")
        need(0 < self.ema_power < math.inf, f"ema_power must be positive, got {self.ema_power}")
        need(0.0 <= self.label_dropout < 1.0, f"label_dropout must be in [0, 1), got {self.label_dropout}")
        need(2 <= self.num_train_timesteps <= MAX_TRAIN_TIMESTEPS,
             f"num_train_timesteps must lie in [2, {MAX_TRAIN_TIMESTEPS}], got {self.num_train_timesteps}")
        need(self.beta_schedule in BETA_SCHEDULES,
             f"beta_schedule must be one of {BETA_SCHEDULES}, got {self.beta_schedule!r}")
        need(self.prediction_type in PREDICTION_TYPES,
             f"prediction_type must be 'epsilon' or 'v_prediction', got {self.prediction_type!r}")
        need(self.snr_gamma is None or self.snr_gamma > 0, f"snr_gamma must be positive or None, got {self.snr_gamma}")
        need(self.sampler in SAMPLERS, f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        # A sampler takes distinct timesteps of the training schedule; it has num_train_timesteps of them.
        need(1 <= self.sample_steps <= self.num_train_timesteps, f"sample_steps must lie in "
             f"[1, num_train_timesteps = {self.num_train_timesteps}], got {self.sample_steps}")
        need(0 <= self.guidance_scale < math.inf,
             f"guidance_scale must be a finite number ≥ 0, got {self.guidance_scale}")
        need(self.checkpoint_every >= 0, f"checkpoint_every must be ≥ 0 (0 disables), got {self.checkpoint_every}")
        return self

    def fingerprint(self) -> dict[str, Any]:
        """The fields that decide the trained weights (runtime-only fields left out)."""
        return {k: v for k, v in _jsonable(dataclasses.asdict(self)).items() if k not in RUNTIME_FIELDS}


PRESETS: dict[str, TrainConfig] = {
    # The embedded CPU default: 16 px grayscale digits folded 2×2 into 8×8×4 before a small two-level UNet.
    # ~13 s of training on two idle cores; samples ≥ 97% recognisable (benchmarks/README.md).
    "digits16-cpu": TrainConfig(
        preset="digits16-cpu", image_size=16, channels=1, patch_size=2, block_out_channels=(16, 32),
        layers_per_block=1, mid_block=False, norm_num_groups=8, steps=400, batch_size=64, lr=2e-3,
        warmup_steps=30, ema_decay=0.995, ema_power=0.75, label_dropout=0.1, prediction_type="v_prediction",
        snr_gamma=5.0, sampler="dpm++", sample_steps=12, guidance_scale=2.0, checkpoint_every=100),
    # For tests: a tiny UNet and a handful of steps; exercises every code path in about a second.
    "smoke": TrainConfig(
        preset="smoke", image_size=16, channels=1, patch_size=2, block_out_channels=(8, 16),
        layers_per_block=1, mid_block=False, norm_num_groups=4, steps=6, batch_size=16, lr=1e-3,
        warmup_steps=2, ema_decay=0.9, prediction_type="v_prediction", sample_steps=4, checkpoint_every=2),
    # CIFAR-like 32 px RGB on a GPU: the DDPM CIFAR-10 layout, shortened.
    "cifar32-gpu": TrainConfig(
        preset="cifar32-gpu", image_size=32, channels=3, patch_size=1, block_out_channels=(128, 256, 256),
        layers_per_block=2, attention_levels=(1,), mid_block=True, norm_num_groups=32, dropout=0.1,
        hflip=True, steps=30_000, batch_size=128, lr=2e-4, warmup_steps=1000, ema_decay=0.9999,
        ema_power=2 / 3, prediction_type="v_prediction", snr_gamma=5.0, sample_steps=25, guidance_scale=2.0,
        checkpoint_every=2000, compile=True),
    # 64 px RGB on a GPU: one more level, attention at 16 and 8 px.
    "64-gpu": TrainConfig(
        preset="64-gpu", image_size=64, channels=3, patch_size=1, block_out_channels=(128, 256, 256, 512),
        layers_per_block=2, attention_levels=(2, 3), mid_block=True, norm_num_groups=32, dropout=0.1,
        hflip=True, steps=50_000, batch_size=64, lr=1e-4, warmup_steps=1000, ema_decay=0.9999,
        ema_power=2 / 3, prediction_type="v_prediction", snr_gamma=5.0, sample_steps=25, guidance_scale=2.0,
        checkpoint_every=2000, compile=True),
}


def preset(name: str, **overrides: Any) -> TrainConfig:
    """A copy of ``PRESETS[name]`` with ``overrides`` applied (unknown names and fields are errors)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown TrainConfig field(s) {unknown}; known: {sorted(known)}")
    return dataclasses.replace(PRESETS[name], **overrides).validate()


def train_config_from_dict(values: Any, where: str) -> TrainConfig:
    """A validated ``TrainConfig`` from plain data (a model's stored ``training_config``).

    Every known field is type-checked before the dataclass converts it, so a damaged file gets a
    ``ValueError`` naming ``where`` and the field, never a ``TypeError``; fields this version does not
    know are ignored (a newer imgsynth may have written them), missing ones take their defaults.
    """
    if not isinstance(values, Mapping):
        raise ValueError(f"{where} must be a JSON object, got {_json_kind(values)}")
    specs = {f.name: f for f in dataclasses.fields(TrainConfig)}
    known = {k: v for k, v in values.items() if k in specs}
    for name, value in known.items():
        problem = _type_problem(str(specs[name].type), value)
        if problem is not None:
            raise ValueError(f"{where}: {name} = {_short(value)} {problem}")
    try:
        return TrainConfig(**known).validate()
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from exc


_SCALAR_TYPES: dict[str, tuple[type, ...]] = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}


def _type_problem(annotation: str, value: Any) -> str | None:
    """Why ``value`` does not fit a ``TrainConfig`` field annotated ``annotation`` (as written), else None."""
    base = annotation.removesuffix(" | None")
    if value is None:
        return None if base != annotation else f"should be {annotation}, not null"
    if base == "tuple[int, ...]":
        ok = isinstance(value, (list, tuple)) and all(_is_int(v) for v in value)
        return None if ok else "should be a list of integers"
    kinds = _SCALAR_TYPES.get(base)
    if kinds is None:
        return None  # an annotation this check does not know: validate's own rules cover the field
    # bool is an int subclass; a flag where a number belongs is a mistake, not a 0 or 1.
    ok = isinstance(value, kinds) and (base == "bool" or not isinstance(value, bool))
    return None if ok else f"should be {annotation}"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# --------------------------------------------------------------------------------------------- model parts

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


# --------------------------------------------------------------------------------------------- training data

@dataclass
class TrainingData:
    """A labeled ImageSet held in memory as uint8 (N, C, H, W): small sets fit, and batches are free."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    class_captions: dict[str, str]
    mode: str


def load_training_data(image_set: ImageSet, config: TrainConfig) -> TrainingData:
    """Read and check the training set: two or more classes, one image size, the config's size and mode."""
    where = str(image_set.root)
    counts = image_set.counts
    present = [c for c, n in counts.items() if n > 0]
    if len(present) < 2:
        raise ImageSetError(f"{where}: a class-conditional model needs images of at least two classes; "
                            f"this set has {len(present)} ({', '.join(present) or 'none'})")
    empty = [c for c, n in counts.items() if n == 0]
    if empty:
        warnings.warn(f"{where}: classes {empty} have no images; their samples will not resemble anything",
                      stacklevel=3)
    size = image_set.image_size
    if size is None:
        raise ImageSetError(f"{where}: images have mixed sizes (manifest image_size is null); resize them "
                            "to one size before training")
    if tuple(size) != (config.image_size, config.image_size):
        raise ImageSetError(f"{where}: images are {size[0]}×{size[1]} px but the '{config.preset}' config "
                            f"expects {config.image_size}×{config.image_size}; pick a preset for this size or "
                            f"set image_size={size[0]} (square images only)")
    mode = image_set.manifest.get("image_mode") or "L"
    channels = 1 if mode == "L" else 3
    if channels != config.channels:
        raise ImageSetError(f"{where}: images are {mode} ({channels} channel(s)) but the '{config.preset}' "
                            f"config has channels={config.channels}")
    array = np.stack([np.asarray(image_set.load_image(i).convert(mode)) for i in range(len(image_set))])
    if array.shape[1:3] != (config.image_size, config.image_size):
        raise ImageSetError(f"{where}: found images of {array.shape[1]}×{array.shape[2]} px although the "
                            f"manifest says {size}")
    images = torch.from_numpy(array[:, None] if array.ndim == 3 else array.transpose(0, 3, 1, 2)).contiguous()
    captions: dict[str, Counter[str]] = {c: Counter() for c in image_set.classes}
    for record in image_set.records:
        captions[record.label][record.caption] += 1
    class_captions = {c: (next(iter(n)) if len(n) == 1 and next(iter(n)) else f"a {c}") for c, n in captions.items()}
    return TrainingData(images, torch.tensor(image_set.labels, dtype=torch.long), image_set.classes,
                        class_captions, mode)


def _derived_seed(*parts: Any) -> int:
    digest = hashlib.sha256("/".join(str(p) for p in ("imgsynth-conditional", *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


class BatchOrder:
    """Which images make up step ``s``'s batch: a fresh seeded permutation every epoch, read as a stream.

    A function of (seed, step) alone, so a resumed run draws exactly the batches the killed one would have.
    """

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self._cache: dict[int, torch.Tensor] = {}

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch not in self._cache:
            if len(self._cache) > 2:
                self._cache.clear()
            generator = torch.Generator().manual_seed(_derived_seed(self.seed, "epoch", epoch))
            self._cache[epoch] = torch.randperm(self.n, generator=generator)
        return self._cache[epoch]

    def indices(self, step: int) -> torch.Tensor:
        epoch, offset = divmod(step * self.batch_size, self.n)
        parts, need = [], self.batch_size
        while need:
            chunk = self._permutation(epoch)[offset:offset + need]
            parts.append(chunk)
            need -= len(chunk)
            epoch, offset = epoch + 1, 0
        return torch.cat(parts)


# --------------------------------------------------------------------------------------------- checkpoints

def _check_safetensors_only(folder: Path, what: str) -> None:
    unsafe = sorted(p.name for p in folder.iterdir() if p.suffix in UNSAFE_WEIGHT_SUFFIXES) if folder.is_dir() else []
    if unsafe:
        raise ValueError(f"{folder}: {what} holds pickle-based weights ({', '.join(unsafe)}) and no safetensors "
                         "file; imgsynth loads weights from safetensors only (pickle files can run code). "
                         "Convert them with safetensors.torch.save_file first")


class Checkpoints:
    """Training checkpoints in ``<model dir>/checkpoints/step-NNNNNNNN``, each written to a temporary folder
    and renamed into place, so a checkpoint on disk is always whole.

    Weights (model and EMA) are a safetensors file; optimizer, LR schedule, EMA counters and RNG states are
    plain tensors and numbers in ``training_state.pt``, read back with ``torch.load(weights_only=True)``.
    """

    def __init__(self, root: Path, identity: Mapping[str, Any]) -> None:
        self.root = root
        self.identity = dict(identity)

    def latest(self) -> Path | None:
        if not self.root.is_dir():
            return None
        found = sorted(p for p in self.root.iterdir() if p.is_dir() and p.name.startswith("step-"))
        return found[-1] if found else None

    def save(self, step: int, unet: torch.nn.Module, ema: Any, optimizer: torch.optim.Optimizer,
             lr_scheduler: Any) -> Path:
        from safetensors.torch import save_file

        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / f"step-{step:08d}"
        tmp = self.root / f".step-{step:08d}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        tensors = {f"model.{k}": v.detach().to("cpu").contiguous() for k, v in unet.state_dict().items()}
        tensors.update({f"ema.{i:05d}": p.detach().to("cpu").contiguous() for i, p in enumerate(ema.shadow_params)})
        save_file(tensors, str(tmp / "weights.safetensors"))
        ema_state = {k: v for k, v in ema.state_dict().items() if k != "shadow_params"}
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save({"step": step, "optimizer": optimizer.state_dict(), "lr_scheduler": lr_scheduler.state_dict(),
                    "ema": ema_state, "rng": rng}, tmp / "training_state.pt")
        (tmp / "checkpoint.json").write_text(json.dumps({**self.identity, "step": step}, indent=2), encoding="utf-8")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in self.root.iterdir():
            if old.is_dir() and old.name.startswith("step-") and old.name < final.name:
                shutil.rmtree(old, ignore_errors=True)
        return final

    def load(self, path: Path, unet: torch.nn.Module, ema: Any, optimizer: torch.optim.Optimizer,
             lr_scheduler: Any, device: torch.device) -> int:
        """Restore everything from ``path``; returns the number of steps already done."""
        from safetensors.torch import load_file

        weights = path / "weights.safetensors"
        if not weights.is_file():
            _check_safetensors_only(path, "the training checkpoint")
            raise ValueError(f"{path}: training checkpoint has no weights.safetensors; delete {path} to restart "
                             "from the previous checkpoint or from scratch")
        meta_path = path / "checkpoint.json"
        meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
        for key, value in self.identity.items():
            if meta.get(key) != value:
                raise ValueError(f"{path}: checkpoint was made by a different run ({key} differs); resume with "
                                 f"the same training set and config, or delete {self.root} to start over")
        tensors = load_file(str(weights), device=str(device))
        unet.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        shadow = [tensors[k] for k in sorted(k for k in tensors if k.startswith("ema."))]
        state = load_torch_file(path / "training_state.pt", "training state of a checkpoint")
        ema.load_state_dict({**state["ema"], "shadow_params": shadow})
        optimizer.load_state_dict(state["optimizer"])
        lr_scheduler.load_state_dict(state["lr_scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        return int(state["step"])


# --------------------------------------------------------------------------------------------- training

StepCallback = Callable[[int, float], None]


class DataParallel(Protocol):
    """The processes of one data-parallel training run (see :mod:`imgsynth.distributed.accelerate_train`).

    Every process computes the loss of its part of each global batch; ``wrap`` makes the backward pass
    average the gradients over processes (DistributedDataParallel), so the global batch, the optimizer
    and the result are those of a single-process run with ``batch_size``, up to float summation order.
    """

    rank: int
    world_size: int

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """The module whose forward/backward synchronises gradients across processes."""

    def barrier(self) -> None:
        """Wait until every process gets here."""

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of ``value`` over all processes (every process gets it)."""


def train(image_set: ImageSet | str | os.PathLike, out_dir: str | os.PathLike, config: TrainConfig,
          progress: bool = True, *, callback: StepCallback | None = None,
          parallel: DataParallel | None = None) -> Path:
    """Train a class-conditional diffusion model on ``image_set``; returns the model dir (``out_dir``).

    Resumes from the latest checkpoint in ``out_dir/checkpoints`` when one from the same set and config
    is there; returns at once when ``out_dir`` already holds the finished model of this set and config.
    ``callback(step, loss)`` runs after every optimizer step (``step`` counts from 1), e.g. for logging.
    The caller's global RNG state is left as it was. With ``parallel``, every process of the run calls
    this with the same arguments (its own ``config.device``); each computes ``batch_size / world_size``
    images of every batch, and process 0 alone writes checkpoints and the model. A run may resume with
    another number of processes.
    """
    if parallel is not None and parallel.rank != 0:  # process 0 alone writes, and holds the folder lock
        return _train(image_set, out_dir, config, progress, callback, parallel)
    with folder_lock(out_dir):
        return _train(image_set, out_dir, config, progress, callback, parallel)


def _train(image_set: ImageSet | str | os.PathLike, out_dir: str | os.PathLike, config: TrainConfig,
           progress: bool, callback: StepCallback | None, parallel: DataParallel | None) -> Path:
    config.validate()
    if parallel is not None and config.batch_size % parallel.world_size:
        raise ValueError(f"batch_size {config.batch_size} does not split evenly over {parallel.world_size} "
                         "processes; choose a batch size divisible by the process count")
    if not isinstance(image_set, ImageSet):
        image_set = ImageSet.open(image_set)
    out = Path(out_dir).absolute()
    identity = {"training_set": image_set.id, "config": config.fingerprint()}
    if (out / MODEL_FILE).is_file():
        done = read_model_info(out)
        if done.get("parent", {}).get("id") == image_set.id and done.get("config_fingerprint") == identity["config"]:
            return out
        raise ValueError(f"{out}: already holds a model trained on another set or with another config; "
                         "remove it or choose another folder")
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: exists and is not a folder")
    data = load_training_data(image_set, config)
    device = devices.resolve_device(config.device)
    cuda_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(config.seed)  # weight initialisation (and dropout, in the GPU presets)
        stats = _fit(data, out, config, identity, device, progress, callback, parallel)
    if parallel is None or parallel.rank == 0:
        _write_model_info(out, config, data, image_set, identity, stats)
        if not config.keep_checkpoints:
            shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)
    if parallel is not None:
        parallel.barrier()  # no process returns before the model is on disk
    return out


def _fit(data: TrainingData, out: Path, config: TrainConfig, identity: Mapping[str, Any], device: torch.device,
         progress: bool, callback: StepCallback | None, parallel: DataParallel | None = None) -> dict[str, Any]:
    """The training loop: build or restore, optimise, checkpoint, then save the EMA weights to ``out``.

    Returns training statistics for the model info.
    """
    from diffusers.optimization import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    rank, world = (0, 1) if parallel is None else (parallel.rank, parallel.world_size)
    main = rank == 0

    unet = devices.prepare_module(build_unet(config, len(data.classes)), device)
    unet.train()
    # Gradients flow through the wrapper (their all-reduce); optimizer, EMA and saving use the module itself.
    forward = devices.maybe_compile(unet if parallel is None else parallel.wrap(unet), device, config.compile)
    noise_scheduler = build_noise_scheduler(config)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                  **({"fused": True} if device.type == "cuda" else {"foreach": True}))
    if config.lr_schedule == "cosine":
        lr_scheduler = get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, config.steps)
    else:
        lr_scheduler = get_constant_schedule_with_warmup(optimizer, config.warmup_steps)
    ema = EMAModel(unet.parameters(), decay=config.ema_decay, use_ema_warmup=True, power=config.ema_power,
                   foreach=True)
    checkpoints = Checkpoints(out / CHECKPOINTS, identity)
    latest = checkpoints.latest()
    start = 0 if latest is None else checkpoints.load(latest, unet, ema, optimizer, lr_scheduler, device)

    on_gpu = device.type == "cuda"
    images = data.images.to(device) if on_gpu and data.images.numel() < 2**31 else data.images
    labels = data.labels.to(images.device)
    order = BatchOrder(len(images), config.batch_size, config.seed)
    bar = tqdm(total=config.steps, initial=start, disable=not (progress and main), desc=f"train {config.preset}",
               unit="step", dynamic_ncols=True)
    smoothed = None
    t0 = time.perf_counter()
    for step in range(start, config.steps):
        generator = torch.Generator(device).manual_seed(_derived_seed(config.seed, "step", step))
        if config.dropout > 0:
            # Dropout draws from the global RNG: seed it per (step, process), so a resumed run draws the
            # masks an uninterrupted one would, and the processes of a parallel run draw different ones.
            torch.manual_seed(_derived_seed(config.seed, "dropout", step, rank))
        index = order.indices(step)[rank::world].to(images.device)  # this process's rows of the batch
        x0 = devices.prepare_input(images[index], device).float().div_(127.5).sub_(1.0)
        loss = diffusion_loss(forward, noise_scheduler, x0, labels[index].to(device), generator, config,
                              null_class=len(data.classes), part=(rank, world))
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(unet.parameters(), config.grad_clip)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        ema.step(unet.parameters())

        done = step + 1
        # The global batch's loss on every process, so a non-finite loss stops all of them together.
        value = float(loss.detach() if parallel is None else parallel.mean(loss.detach()))
        if not math.isfinite(value):
            raise FloatingPointError(f"training loss became {value} at step {done}; lower lr "
                                     f"(now {config.lr}) or enable grad_clip")
        smoothed = value if smoothed is None else 0.95 * smoothed + 0.05 * value
        bar.update(1)
        if done % 10 == 0 or done == config.steps:
            bar.set_postfix(loss=f"{smoothed:.4f}", lr=f"{lr_scheduler.get_last_lr()[0]:.2e}")
        if config.checkpoint_every and done % config.checkpoint_every == 0 and done < config.steps:
            if main:
                checkpoints.save(done, unet, ema, optimizer, lr_scheduler)
            if parallel is not None:
                parallel.barrier()
        if callback is not None:
            callback(done, value)
    bar.close()

    seconds = time.perf_counter() - t0
    ema.copy_to(unet.parameters())
    if main:
        _write_model_weights(out, unet, noise_scheduler)
    return {"final_loss": smoothed, "train_seconds": round(seconds, 3), "resumed_from_step": start,
            "device": str(device), "threads": torch.get_num_threads(), "processes": world}


def diffusion_loss(forward: Callable[..., Any], noise_scheduler: Any, x0: torch.Tensor, labels: torch.Tensor,
                   generator: torch.Generator, config: TrainConfig, null_class: int,
                   part: tuple[int, int] = (0, 1)) -> torch.Tensor:
    """The denoising loss of one batch (images in [-1, 1]); every random draw comes from ``generator``.

    Labels are dropped to ``null_class`` at rate ``label_dropout`` (classifier-free guidance); the target
    is the noise or the velocity; Min-SNR-γ weighting keeps the easy low-noise steps from dominating.
    With ``part=(rank, world)``, ``x0`` and ``labels`` are rows ``rank::world`` of a batch ``world`` times
    larger: the random draws are made for that whole batch and this part's rows kept, so the parts of
    ``world`` processes are exactly the rows of the one-process batch.
    """
    from diffusers.training_utils import compute_snr

    rank, world = part
    n, device = x0.shape[0] * world, x0.device
    flip = torch.rand(n, generator=generator, device=device) < 0.5 if config.hflip else None
    noise = torch.randn((n, *x0.shape[1:]), generator=generator, device=device)
    timesteps = torch.randint(0, config.num_train_timesteps, (n,), generator=generator, device=device)
    drop = torch.rand(n, generator=generator, device=device) < config.label_dropout
    if world > 1:
        rows = slice(rank, None, world)
        noise, timesteps, drop = noise[rows], timesteps[rows], drop[rows]
        flip = None if flip is None else flip[rows]
    if flip is not None:
        x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
    labels = torch.where(drop, torch.full_like(labels, null_class), labels)
    if config.patch_size > 1:
        x0, noise = F.pixel_unshuffle(x0, config.patch_size), F.pixel_unshuffle(noise, config.patch_size)
    noisy = noise_scheduler.add_noise(x0, noise, timesteps)
    target = noise if config.prediction_type == "epsilon" else noise_scheduler.get_velocity(x0, noise, timesteps)
    with devices.autocast(device, config.mixed_precision):
        prediction = forward(noisy, timesteps, class_labels=labels).sample
    per_image = F.mse_loss(prediction.float(), target, reduction="none").mean(dim=(1, 2, 3))
    if config.snr_gamma is None:
        return per_image.mean()
    snr = compute_snr(noise_scheduler, timesteps)
    clipped = torch.clamp(snr, max=config.snr_gamma)
    weight = clipped / snr if config.prediction_type == "epsilon" else clipped / (snr + 1)
    return (per_image * weight).mean()


def _write_model_weights(out: Path, unet: Any, noise_scheduler: Any) -> None:
    """Save the (EMA) UNet with ``save_pretrained`` (safetensors) and the training scheduler's config."""
    out.mkdir(parents=True, exist_ok=True)
    unet.to("cpu").to(memory_format=torch.contiguous_format)
    unet.save_pretrained(out, safe_serialization=True)
    noise_scheduler.save_pretrained(out)


def _write_model_info(out: Path, config: TrainConfig, data: TrainingData, image_set: ImageSet,
                      identity: Mapping[str, Any], stats: Mapping[str, Any]) -> None:
    """Write ``imgsynth_model.json`` after the weights: its presence marks a finished model."""
    info = {
        "format_version": MODEL_FORMAT_VERSION,
        "pipeline": PIPELINE_NAME,
        "classes": data.classes,
        "null_class_index": len(data.classes),
        "class_captions": data.class_captions,
        "image_size": [config.image_size, config.image_size],
        "image_mode": data.mode,
        "channels": config.channels,
        "patch_size": config.patch_size,
        "sampler": config.sampler,
        "sample_steps": config.sample_steps,
        "guidance_scale": config.guidance_scale,
        "training_config": _jsonable(dataclasses.asdict(config)),
        "config_fingerprint": identity["config"],
        "parent": {"id": image_set.id, "path": os.path.relpath(image_set.root, out), "kind": image_set.kind,
                   "num_images": len(image_set)},
        "weights": WEIGHTS_FILE,
        "weights_sha256": sha256_file(out / WEIGHTS_FILE),
        "stats": dict(stats),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "software": software_versions(),
    }
    tmp = out / (MODEL_FILE + ".tmp")
    tmp.write_text(json.dumps(info, indent=2), encoding="utf-8")
    os.replace(tmp, out / MODEL_FILE)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------- loading

def is_model_dir(path: str | os.PathLike) -> bool:
    """True when ``path`` is a folder written by ``train`` (it holds ``imgsynth_model.json``)."""
    return (Path(path) / MODEL_FILE).is_file()


def read_model_info(model_dir: str | os.PathLike) -> dict[str, Any]:
    """The model dir's ``imgsynth_model.json``, checked: the fields sampling needs, their types, and the
    training config (``TrainConfig.validate``), which the other fields must agree with."""
    return _read_model_info(Path(model_dir))[0]


def _read_model_info(folder: Path) -> tuple[dict[str, Any], TrainConfig]:
    """(the info as stored, its validated training config); ``ValueError`` naming the file and field."""
    path = folder / MODEL_FILE
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such model folder")
    if not path.is_file():
        raise ValueError(f"{folder}: not a class-conditional model folder ({MODEL_FILE} is missing)")
    info = _read_json_object(path)
    for key in ("classes", "image_size", "image_mode", "patch_size", "training_config", "weights_sha256"):
        if key not in info:
            raise ValueError(f"{path}: missing field {key!r}")
    config = train_config_from_dict(info["training_config"], f"{path}: training_config")
    _check_info_fields(info, config, path)
    return info, config


def _check_info_fields(info: Mapping[str, Any], config: TrainConfig, path: Path) -> None:
    """The fields sampling reads directly: right types, and in agreement with the training config."""
    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise ValueError(f"{path}: {key} = {_short(info.get(key))} {what}")

    classes = info["classes"]
    need(isinstance(classes, list) and len(classes) >= 2 and all(isinstance(c, str) and c for c in classes)
         and len(set(classes)) == len(classes), "classes", "should be a list of two or more distinct class names")
    side = config.image_size
    need(info["image_size"] == [side, side] and all(_is_int(v) for v in info["image_size"]), "image_size",
         f"should be [{side}, {side}], the training config's image_size")
    need(info["image_mode"] == ("L" if config.channels == 1 else "RGB"), "image_mode",
         f"should be {'L' if config.channels == 1 else 'RGB'!r} for the training config's channels={config.channels}")
    need(_is_int(info["patch_size"]) and info["patch_size"] == config.patch_size, "patch_size",
         f"should be {config.patch_size}, the training config's patch_size")
    need(_is_int(info.get("channels", config.channels)) and info.get("channels", config.channels) == config.channels,
         "channels", f"should be {config.channels}, the training config's channels")
    null_class = info.get("null_class_index", len(classes))
    need(_is_int(null_class) and null_class == len(classes), "null_class_index",
         f"should be {len(classes)}, the number of classes")
    digest = info["weights_sha256"]
    need(isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest),
         "weights_sha256", "should be a sha256 hex digest")
    captions = info.get("class_captions") or {}  # sampling reads a null as no captions
    need(isinstance(captions, dict) and all(isinstance(v, str) for v in captions.values()), "class_captions",
         "should map class names to caption strings")
    parent = info.get("parent") or {}
    need(isinstance(parent, dict) and all(isinstance(parent.get(k, ""), str) for k in ("id", "path")), "parent",
         "should be an object whose id and path are strings")
    version = info.get("format_version", MODEL_FORMAT_VERSION)
    need(_is_int(version) and version <= MODEL_FORMAT_VERSION, "format_version",
         f"should be an integer ≤ {MODEL_FORMAT_VERSION} (a newer format needs a newer imgsynth)")


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: malformed JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from exc
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a UTF-8 text file ({exc.reason})") from exc
    if not isinstance(value, dict):
        raise ValueError(f"{path}: should hold a JSON object, found {_json_kind(value)}")
    return value


def _json_kind(value: Any) -> str:
    kinds = ((bool, "true/false"), (int, "an integer"), (float, "a number"), (str, "a string"),
             (list, "a list"), (dict, "an object"), (type(None), "null"))
    return next((name for kind, name in kinds if isinstance(value, kind)), type(value).__name__)


def _short(value: Any) -> str:
    """``repr`` cut to one short line: a damaged file may hold a list of a million entries."""
    import reprlib

    shortener = reprlib.Repr()
    shortener.maxlist, shortener.maxstring, shortener.maxother = 6, 60, 60
    return shortener.repr(value)


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


def check_model_dir(model_dir: str | os.PathLike,
                    device: torch.device | None = None) -> tuple[dict[str, Any], TrainConfig, ModelSize]:
    """Check a model folder without allocating the model: (info, training config, size estimate).

    Reads ``imgsynth_model.json``, ``config.json`` and ``scheduler_config.json``; both configs must be the
    ones ``imgsynth train`` writes for the training config (``unet_config``, ``noise_scheduler_config``,
    diffusers' defaults for the rest), and the model must fit ``check_model_size`` for one image on
    ``device``. Every problem is a ``ValueError`` naming the file and the field; this takes milliseconds.
    """
    folder = Path(model_dir).absolute()
    info, config = _read_model_info(folder)
    from diffusers import DDPMScheduler, UNet2DModel

    unet = _read_model_file(folder, UNET_CONFIG_FILE)
    _check_config_file(folder / UNET_CONFIG_FILE, _square_sample(unet), UNet2DModel,
                       _square_sample(unet_config(config, len(info["classes"]))))
    _check_config_file(folder / SCHEDULER_CONFIG_FILE, _read_model_file(folder, SCHEDULER_CONFIG_FILE),
                       DDPMScheduler, noise_scheduler_config(config))
    size = estimate_size(config, len(info["classes"]))
    check_model_size(size, 1, folder / UNET_CONFIG_FILE, device)
    return info, config, size


def _read_model_file(folder: Path, name: str) -> dict[str, Any]:
    if not (folder / name).is_file():
        raise ValueError(f"{folder}: missing {name} (a model folder from `imgsynth train` holds "
                         f"{', '.join(MODEL_FILES)})")
    return _read_json_object(folder / name)


def _square_sample(values: Mapping[str, Any]) -> dict[str, Any]:
    # diffusers takes sample_size as one side or [height, width]; compare both spellings as the pair.
    side = values.get("sample_size")
    return {**values, "sample_size": [side, side]} if _is_int(side) else dict(values)


def _check_config_file(path: Path, found: Mapping[str, Any], cls: type, expected: Mapping[str, Any]) -> None:
    """``found`` holds what ``imgsynth train`` writes for ``cls``: ``expected`` for the fields the training
    config decides, ``cls``'s defaults for the rest; keys ``cls`` does not know are ignored, as diffusers
    ignores them."""
    defaults = _init_defaults(cls)
    name = found.get("_class_name", cls.__name__)
    if name != cls.__name__:
        raise ValueError(f"{path}: _class_name = {_short(name)} should be {cls.__name__!r}")
    for key in sorted(set(found) | set(expected)):
        if key.startswith("_") or (key not in expected and key not in defaults):
            continue
        want = _jsonable(expected[key] if key in expected else defaults[key])
        source = f"the training config in {MODEL_FILE}" if key in expected else "`imgsynth train`"
        if key not in found:
            if key in defaults and _same(_jsonable(defaults[key]), want):
                continue  # an older diffusers left it out; the default is what training used
            raise ValueError(f"{path}: missing field {key!r} ({source} gives {_short(want)})")
        value = found[key]
        if _same(value, want):
            continue
        kinds = {_json_kind(value), _json_kind(want)}
        if len(kinds) > 1 and not kinds <= {"an integer", "a number"}:
            example = "" if want is None else f" ({_short(want)})"
            raise ValueError(f"{path}: {key} = {_short(value)} should be {_json_kind(want)}{example}")
        raise ValueError(f"{path}: {key} = {_short(value)} does not match {source}, which gives {_short(want)}")


@functools.lru_cache(maxsize=None)
def _init_defaults(cls: type) -> Mapping[str, Any]:
    import inspect

    parameters = inspect.signature(cls.__init__).parameters.values()
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


def _same(a: Any, b: Any) -> bool:
    """JSON equality that keeps true apart from 1 (Python's ``True == 1``) and NaN apart from itself."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return type(a) is type(b) and a == b


@dataclass
class LoadedModel:
    """A trained model ready to sample: the UNet on its device, its info and the training scheduler config."""

    unet: Any
    info: dict[str, Any]
    scheduler_config: dict[str, Any]
    weights_hash: str
    device: torch.device
    path: Path = field(default_factory=Path)
    size: ModelSize | None = None


def load_model(model_dir: str | os.PathLike, device: str | None = None) -> LoadedModel:
    """Load a model dir (safetensors weights only), verifying the weights against the recorded hash.

    The folder is checked first (``check_model_dir``), so a damaged or hand-edited one is refused in one
    line before anything is allocated.
    """
    from diffusers import DDPMScheduler

    folder = Path(model_dir).absolute()
    resolved = devices.resolve_device(device)
    info, _, size = check_model_dir(folder, resolved)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        _check_safetensors_only(folder, "the model folder")
        raise ValueError(f"{folder}: no weights ({WEIGHTS_FILE} is missing); the training run did not finish "
                         "or the file was removed")
    weights_hash = sha256_file(weights)
    if weights_hash != info["weights_sha256"]:
        raise ValueError(f"{weights}: content does not match the sha256 recorded in {MODEL_FILE}; "
                         "the weights were changed or damaged after training")
    unet = devices.prepare_module(_load_unet(folder), resolved).eval()
    scheduler_config = dict(DDPMScheduler.load_config(folder))
    return LoadedModel(unet, info, scheduler_config, weights_hash, resolved, folder, size)


def _load_unet(folder: Path) -> Any:
    from diffusers import UNet2DModel

    try:
        return UNet2DModel.from_pretrained(folder, use_safetensors=True)
    except (ValueError, RuntimeError, KeyError) as exc:
        # Both configs were edited alike, so they agree, but the weights (whose hash matched) are the trained ones.
        text = " ".join(str(exc).split()) or type(exc).__name__
        reason = text.split(". ")[0].replace("Cannot load because ", "")[:300]
        raise ValueError(f"{folder / WEIGHTS_FILE}: does not fit {UNET_CONFIG_FILE} and the training config in "
                         f"{MODEL_FILE} ({reason}); were they edited after training?") from exc


# --------------------------------------------------------------------------------------------- sampling

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


@dataclass(frozen=True)
class SamplingPlan:
    """What to sample and how; one plan, one set of bytes (up to the batch size's rounding)."""

    classes: list[str]
    per_class: int
    seed: int
    guidance_scale: float
    steps: int
    sampler: str
    noise_temperature: float
    shard_size: int
    generation: int | None


def sample(model_dir: str | os.PathLike, out: str | os.PathLike, per_class: int, *,
           guidance_scale: float | None = None, steps: int | None = None, seed: int = 0, batch_size: int = 64,
           device: str | None = None, noise_temperature: float = 1.0, classes: Sequence[str] | None = None,
           generation: int | None = None, progress: bool = True, shard_size: int = DEFAULT_SHARD_SIZE,
           sampler: str | None = None) -> ImageSet:
    """Sample ``per_class`` images of every class (or of ``classes``) into a generated ImageSet at ``out``.

    ``guidance_scale`` (classifier-free guidance; default: the model's) and ``noise_temperature`` (scale
    of the starting noise) are the sampling-bias knobs, recorded per image and in the manifest. Work is
    done in fixed shards of ``shard_size`` items; an interrupted call resumes from the last whole shard,
    and a finished set with the same settings is returned as it is.
    """
    job = SamplingJob(model_dir, out, per_class, guidance_scale=guidance_scale, steps=steps, seed=seed,
                      device=device, noise_temperature=noise_temperature, classes=classes,
                      generation=generation, shard_size=shard_size, sampler=sampler)
    if job.finished is not None:
        return job.finished
    job.run(job.pending(), batch_size, progress)
    return job.writer.finalize()


def sample_shards(model_dir: str | os.PathLike, out: str | os.PathLike, per_class: int,
                  shard_indices: Collection[int], *, batch_size: int = 64, progress: bool = True,
                  **settings: Any) -> list[int]:
    """Compute only ``shard_indices`` of a ``sample`` job (one worker's share); returns those written.

    Takes ``sample``'s settings; a later ``sample`` call with the same settings computes the shards still
    missing and finalizes the set, byte-identical to a set made in one call.
    """
    job = SamplingJob(model_dir, out, per_class, **settings)
    if job.finished is not None:
        return []
    wanted = set(shard_indices)
    bad = sorted(wanted - set(range(len(job.work))))
    if bad:
        raise ValueError(f"shards {bad} do not exist; this job has shards 0..{len(job.work) - 1}")
    todo = [i for i in job.pending() if i in wanted]
    job.run(todo, batch_size, progress)
    return todo


class SamplingJob:
    """One sampling job: the loaded model, the plan, the writer on ``out`` and the fixed work shards."""

    def __init__(self, model_dir: str | os.PathLike, out: str | os.PathLike, per_class: int, *,
                 guidance_scale: float | None = None, steps: int | None = None, seed: int = 0,
                 device: str | None = None, noise_temperature: float = 1.0, classes: Sequence[str] | None = None,
                 generation: int | None = None, shard_size: int = DEFAULT_SHARD_SIZE,
                 sampler: str | None = None) -> None:
        self.model = model = load_model(model_dir, device)
        info = model.info
        self.plan = plan = _make_plan(info, per_class, classes, seed, guidance_scale, steps, sampler,
                                      noise_temperature, shard_size, generation)
        self.out = Path(out).absolute()
        self.work = shards(balanced_work(plan.classes, plan.per_class, plan.seed), plan.shard_size)
        generator_record = {
            "pipeline": PIPELINE_NAME, "model_path": str(model.path), "weights_hash": model.weights_hash,
            "scheduler": type(build_sampler(plan.sampler, model.scheduler_config)).__name__,
            "sampler": plan.sampler, "steps": plan.steps, "guidance_scale": plan.guidance_scale,
            "seed": plan.seed, "noise_temperature": plan.noise_temperature,
            "prediction_type": model.scheduler_config.get("prediction_type"), "shard_size": plan.shard_size,
        }
        self.finished = _finished_set(self.out, generator_record, {c: plan.per_class for c in plan.classes})
        if self.finished is not None:
            return
        parent = info.get("parent") or {}
        parents = []
        if parent.get("id"):
            parent_root = (model.path / parent.get("path", "")).resolve()
            parents.append({"id": parent["id"], "path": os.path.relpath(parent_root, self.out),
                            "kind": parent.get("kind")})
        # What the writer is opened with; a backend's driver may open it elsewhere (it holds the lock).
        self.writer_arguments: dict[str, Any] = dict(
            classes=list(plan.classes), kind="generated", parents=parents, generator=generator_record,
            config={"per_class": plan.per_class, "generation": plan.generation, "classes": plan.classes,
                    "training_config": info["training_config"]},
            license={"name": "generated", "note": "sampled from a model trained on the parent set; "
                     "the parent's license terms apply"})

    @functools.cached_property
    def writer(self) -> ImageSetWriter:
        """The writer on ``out`` (opened, and the folder locked, on first use)."""
        return ImageSetWriter(self.out, **self.writer_arguments)

    def pending(self) -> list[int]:
        done = self.writer.done_shards
        return [i for i in range(len(self.work)) if i not in done]

    def run(self, todo: Sequence[int], batch_size: int, progress: bool = True) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        write_shards(self.model, self.writer, self.work, todo, self.plan, batch_size, progress)


def _make_plan(info: Mapping[str, Any], per_class: int, classes: Sequence[str] | None, seed: int,
               guidance_scale: float | None, steps: int | None, sampler: str | None, noise_temperature: float,
               shard_size: int, generation: int | None) -> SamplingPlan:
    known = list(info["classes"])
    if classes is None:
        chosen = known
    else:
        chosen = list(dict.fromkeys(classes))
        unknown = [c for c in chosen if c not in known]
        if unknown or not chosen:
            raise ValueError(f"classes {unknown or chosen} are not classes of this model; it knows {known}")
    config = info["training_config"]
    guidance = float(config.get("guidance_scale", DEFAULT_GUIDANCE_SCALE) if guidance_scale is None else guidance_scale)
    n_steps = int(config.get("sample_steps", DEFAULT_SAMPLE_STEPS) if steps is None else steps)
    name = sampler or config.get("sampler", "dpm++")
    if per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}")
    if n_steps < 1:
        raise ValueError(f"steps must be at least 1, got {n_steps}")
    if guidance < 0 or not math.isfinite(guidance):
        raise ValueError(f"guidance_scale must be a finite number ≥ 0, got {guidance}")
    if not (noise_temperature > 0 and math.isfinite(noise_temperature)):
        raise ValueError(f"noise_temperature must be positive, got {noise_temperature}")
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; known: {SAMPLERS}")
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {shard_size}")
    return SamplingPlan(chosen, int(per_class), int(seed), guidance, n_steps, name, float(noise_temperature),
                        int(shard_size), generation)


def _finished_set(out: Path, generator_record: Mapping[str, Any], counts: Mapping[str, int]) -> ImageSet | None:
    """The set already at ``out`` when it came from the same model, settings and counts; else an error."""
    if not (out / "imageset.json").is_file():
        return None
    existing = ImageSet.open(out)
    previous = existing.manifest.get("generator") or {}
    keys = ("weights_hash", "sampler", "steps", "guidance_scale", "seed", "noise_temperature")
    if all(previous.get(k) == generator_record[k] for k in keys) and existing.counts == dict(counts):
        return existing
    raise ImageSetError(f"{out}: already holds an ImageSet made with other settings; remove it or choose "
                        "another folder")


def write_shards(model: LoadedModel, writer: ImageSetWriter, work: Sequence[Sequence[WorkItem]],
                 todo: Sequence[int], plan: SamplingPlan, batch_size: int, progress: bool = True) -> None:
    """Compute and write the shards ``todo`` of ``work``, batch by batch."""
    from tqdm.auto import tqdm

    info = model.info
    height, width = info["image_size"]
    channels = 1 if info["image_mode"] == "L" else 3
    class_index = {c: i for i, c in enumerate(info["classes"])}
    captions = info.get("class_captions") or {}
    tag = f"{PIPELINE_NAME}:{model.weights_hash[:12]}"
    total = sum(len(work[i]) for i in todo)
    if model.size is not None:  # a LoadedModel assembled by hand may carry no estimate
        check_model_size(model.size, batch_size, model.path / UNET_CONFIG_FILE, model.device,
                         hint=", or lower the batch size")
    scheduler = build_sampler(plan.sampler, model.scheduler_config)
    with tqdm(total=total, disable=not progress, desc="sample", unit="img", dynamic_ncols=True) as bar:
        for index in todo:
            samples: list[Sample] = []
            for batch in batches(work[index], batch_size):
                noise = initial_noise(batch, (channels, height, width), plan.noise_temperature)
                labels = torch.tensor([class_index[item.label] for item in batch], dtype=torch.long)
                images = denoise(model, noise, labels, guidance_scale=plan.guidance_scale, steps=plan.steps,
                                 sampler=scheduler)
                for item, image in zip(batch, to_pil(images, info["image_mode"])):
                    caption = captions.get(item.label) or f"a {item.label}"
                    samples.append(Sample(image, item.label, caption, item.seed, item.image_id, {
                        "generator": tag, "generation": plan.generation, "prompt": caption,
                        "guidance_scale": plan.guidance_scale, "steps": plan.steps,
                        "noise_temperature": plan.noise_temperature}))
                bar.update(len(batch))
            writer.write_shard(index, samples)
