"""The training configuration of the class-conditional model: ``TrainConfig``, its presets and its checks.

Plain data (``dataclasses.asdict`` is JSON-ready); the model folder stores it, and every field can be
set from a recipe's ``[generator.options]`` table or ``imgsynth train``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

from imgsynth.field_types import is_int, json_kind, type_problem
from imgsynth.limits import MAX_BATCH_SIZE, MAX_PARAMETERS, MAX_STEPS

DEFAULT_GUIDANCE_SCALE = 2.0
DEFAULT_SAMPLE_STEPS = 20
SAMPLERS = ("dpm++", "ddim")
# Fields that do not change what a training run computes; a resumed run may differ in them.
RUNTIME_FIELDS = ("device", "checkpoint_every", "keep_checkpoints", "compile")
# The forward-process schedules both samplers (DPM-Solver++, DDIM) accept.
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "v_prediction")
# Bounds past any model `imgsynth train` makes sensibly. They keep a hand-edited or damaged config from
# asking for unbounded memory or time before any message; the size estimate (``estimate_size``, below)
# covers what they leave open, such as very wide levels.
MAX_IMAGE_SIZE = 1024
MAX_LAYERS_PER_BLOCK = 16
MAX_TRAIN_TIMESTEPS = 100_000


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
            problem = type_problem(str(spec.type), value)
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
        need(self.steps <= MAX_STEPS, f"steps must be at most {MAX_STEPS}, got {self.steps}")
        need(self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}")
        need(self.batch_size <= MAX_BATCH_SIZE, f"batch_size must be at most {MAX_BATCH_SIZE}, got {self.batch_size}")
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
        # The parameters without the class embedding (the class count is the data's): a bound that needs no
        # torch, so a recipe or --option asking for very wide levels is refused before anything is built.
        size = estimate_size(self, 0)
        need(size.parameters <= MAX_PARAMETERS, f"{size.fields} give a UNet of ~{size.parameters:.3g} parameters, "
             f"more than imgsynth loads ({MAX_PARAMETERS:.0e})")
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
    # RGB on a laptop: 16 px images folded 2×2 into 8×8×12, a wider two-level UNet than digits16-cpu (colour
    # triples the input); about 30 s of training on two idle cores (benchmarks/README.md).
    "rgb16-cpu": TrainConfig(
        preset="rgb16-cpu", image_size=16, channels=3, patch_size=2, block_out_channels=(32, 64),
        layers_per_block=1, mid_block=False, norm_num_groups=8, steps=600, batch_size=64, lr=2e-3,
        warmup_steps=30, ema_decay=0.995, ema_power=0.75, label_dropout=0.1, prediction_type="v_prediction",
        snr_gamma=5.0, sampler="dpm++", sample_steps=12, guidance_scale=2.0, checkpoint_every=100),
    # 32 px RGB on a laptop: folded 2×2 into 16×16×12, three levels (16 → 8 → 4), no attention; about 80 s
    # of training on two idle cores (800 steps: twice that for 0.996 instead of 0.984 recognised).
    "rgb32-cpu": TrainConfig(
        preset="rgb32-cpu", image_size=32, channels=3, patch_size=2, block_out_channels=(32, 64, 64),
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


AUTO = "auto"


def auto_preset(image_size: int | None, channels: int | None, on_gpu: bool) -> str:
    """The preset ``auto`` stands for: by the data's size and channels, then by device.

    Up to 16 px, on any device: ``digits16-cpu`` for grayscale, ``rgb16-cpu`` for colour (the sizes their
    benchmarks measured; a GPU preset's tens of thousands of steps buy nothing measured at 16 px, and the
    default recipe's ``auto`` must stay the ``digits16-cpu`` it always ran on the embedded digits, GPU or
    not). Larger: ``cifar32-gpu`` up to 32 px and ``64-gpu`` beyond on a GPU, ``rgb32-cpu`` on a CPU. The
    data's own size and channels then override the preset's, as for every preset.
    """
    size = image_size or 16
    if size <= 16:
        return "digits16-cpu" if (channels or 1) == 1 else "rgb16-cpu"
    if on_gpu:
        return "cifar32-gpu" if size <= 32 else "64-gpu"
    return "rgb32-cpu"


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
        raise ValueError(f"{where} must be a JSON object, got {json_kind(values)}")
    specs = {f.name: f for f in dataclasses.fields(TrainConfig)}
    known = {k: v for k, v in values.items() if k in specs}
    for name, value in known.items():
        problem = type_problem(str(specs[name].type), value)
        if problem is not None:
            raise ValueError(f"{where}: {name} = {_short(value)} {problem}")
    try:
        return TrainConfig(**known).validate()
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from exc


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value




def _short(value: Any) -> str:
    """``repr`` cut to one short line: a damaged file may hold a list of a million entries."""
    import reprlib

    shortener = reprlib.Repr()
    shortener.maxlist, shortener.maxstring, shortener.maxother = 6, 60, 60
    return shortener.repr(value)




def check_sampling(guidance_scale: float | None, steps: int | None, sampler: str | None, noise_temperature: float,
                   shard_size: int) -> None:
    """Refuse sampling settings no sampler takes (None: the model's own default), naming the setting."""
    if steps is not None and (not is_int(steps) or steps < 1):
        raise ValueError(f"steps must be at least 1, got {steps!r}")
    if guidance_scale is not None and not (isinstance(guidance_scale, (int, float)) and 0 <= guidance_scale < math.inf):
        raise ValueError(f"guidance_scale must be a finite number ≥ 0, got {guidance_scale!r}")
    if not (isinstance(noise_temperature, (int, float)) and 0 < noise_temperature < math.inf):
        raise ValueError(f"noise_temperature must be positive, got {noise_temperature!r}")
    if sampler is not None and sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; known: {SAMPLERS}")
    if not is_int(shard_size) or shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {shard_size!r}")


# --------------------------------------------------------------------------------------------- size

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
