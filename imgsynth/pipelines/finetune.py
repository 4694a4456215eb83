"""LoRA fine-tuning of a text-to-image pipeline's UNet on an ImageSet's images and captions.

The standard Stable Diffusion recipe (as in diffusers' ``train_text_to_image_lora.py``): images are
encoded by the frozen VAE and scaled, noised with the training scheduler at a random timestep, and
the UNet, with peft LoRA adapters on its attention projections, learns to predict the noise (or the
velocity, when the scheduler is configured for v-prediction) given the frozen text encoder's reading
of the caption. Only the adapters train. The result is saved with ``save_lora_weights`` as
safetensors, so ``pipe.load_lora_weights(out)`` and ``imgsynth generate --lora OUT`` load it, plus
``imgsynth_lora.json`` recording the base model, its weights hash and the training set, so generated
sets can trace their lineage through the LoRA.

A set with training weights (its ``weight`` column) has each step's batch drawn with probabilities
w / Σw (:class:`~imgsynth.pipelines.batches.WeightedBatchOrder`, seeded by (seed, step), so resuming is
exact), and the weights' digest joins the LoRA's identity; an unweighted set trains exactly as before.

Supported: pipelines with one UNet and one CLIP-style text encoder (Stable Diffusion 1.x/2.x and
their fine-tunes, SD-Turbo). SDXL (two text encoders, size conditioning) and transformer pipelines are
refused with a clear error.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from imgsynth.imageset import ImageSet, weights_digest
from imgsynth.limits import MAX_BATCH_SIZE, MAX_LORA_RANK, MAX_PIPELINE_SIDE, MAX_STEPS, check_count
from imgsynth.locking import locks_output
from imgsynth.compute import resolve_device
from imgsynth.pipelines.base import read_info_file
from imgsynth.pipelines.batches import WeightedBatchOrder
from imgsynth.pipelines.text2image.loading import (component_folder, load_text2image_pipeline, resolve_dtype,
                                                  weights_hash)
from imgsynth.provenance import software_versions
from imgsynth.safe_loading import load_torch_file
from imgsynth.atomic_files import atomic_path
from imgsynth.safe_paths import LinkedPathError, refuse_links_below

INFO_FILE = "imgsynth_lora.json"
CHECKPOINT_FILE = "checkpoint.pt"
WEIGHTS_FILE = "pytorch_lora_weights.safetensors"
CAPTION_COLUMNS = ("caption", "prompt", "label")
SEED_NAMESPACE = "imgsynth-lora"  # part of a weighted LoRA's batch seeds: changing it changes every such LoRA


@dataclass(frozen=True)
class LoraConfig:
    """LoRA training settings. ``alpha`` defaults to ``rank`` (scale 1); ``resolution`` to the model's own."""

    steps: int = 200
    rank: int = 8
    alpha: float | None = None
    lr: float = 1e-4
    batch_size: int = 4
    resolution: int | None = None
    seed: int = 0
    target_modules: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    caption_column: str = "caption"
    random_flip: bool = False
    max_grad_norm: float = 1.0
    weight_decay: float = 1e-2

    def __post_init__(self) -> None:
        for name in ("steps", "rank", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"LoRA {name} must be at least 1, got {getattr(self, name)}")
        for name, high in (("steps", MAX_STEPS), ("rank", MAX_LORA_RANK), ("batch_size", MAX_BATCH_SIZE)):
            check_count(f"LoRA {name}", getattr(self, name), high)
        if self.resolution is not None:
            check_count("resolution", self.resolution, MAX_PIPELINE_SIDE, low=8)
        if not self.lr > 0:
            raise ValueError(f"LoRA learning rate must be positive, got {self.lr}")
        if self.caption_column not in CAPTION_COLUMNS:
            raise ValueError(f"caption_column must be one of {CAPTION_COLUMNS}, got {self.caption_column!r}")
        if self.resolution is not None and self.resolution < 8:
            raise ValueError(f"resolution must be at least 8 pixels, got {self.resolution}")

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["target_modules"] = list(self.target_modules)
        return values


@locks_output("out")
def finetune_lora(model: str | os.PathLike, train_set: ImageSet | str | os.PathLike, out: str | os.PathLike,
                  config: LoraConfig = LoraConfig(), *, device: str | None = None, dtype: Any = None,
                  checkpoint_every: int = 100, on_step: Callable[[int, float], None] | None = None,
                  progress: bool = True) -> Path:
    """Train a LoRA on ``train_set`` for ``model``'s UNet and save it to ``out``; returns ``out``.

    If ``out`` already holds a LoRA trained with the same model, set and config it is returned as it
    is (a resumed experiment does not retrain); a different one there is an error. The folder appears
    only when training has finished. Every ``checkpoint_every`` steps the adapters, optimizer, data
    order and random state are saved next to it, so a killed run continues where it stopped and ends
    with the same weights. ``on_step(step, loss)`` is called after each step (1-based). A set with
    training weights draws each batch from :func:`weighted_batches` (see the module docstring).
    """
    import torch

    image_set = train_set if isinstance(train_set, ImageSet) else ImageSet.open(train_set)
    out = Path(out)
    device = str(resolve_device(device))
    weight_dtype = resolve_dtype(dtype, device)
    pipe = load_text2image_pipeline(model, device=device, dtype=weight_dtype)
    _check_trainable(pipe, str(model))
    base_hash = weights_hash(_unet_folder(pipe))
    info = {"base_model": str(model), "base_pipeline_class": type(pipe).__name__, "base_weights_sha256": base_hash,
            "train_set": {"id": image_set.id, "path": str(image_set.root.resolve()), "kind": image_set.kind,
                          "num_images": len(image_set)},
            "config": config.to_dict(), "dtype": str(weight_dtype).replace("torch.", "")}
    weighted = weighted_batches(image_set, config)
    if weighted is not None:  # only then, so an unweighted LoRA's identity (and json) is what it always was
        info["train_set"]["weights_sha256"] = weights_digest(weighted.weights.numpy())
    existing = _existing(out, info)
    if existing is not None:
        return existing

    from diffusers import DDPMScheduler
    from diffusers.training_utils import cast_training_params
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig as PeftLoraConfig
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
    from tqdm.auto import tqdm

    unet, vae, text_encoder, tokenizer = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer
    for module in (unet, vae, text_encoder):
        module.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):  # peft's gaussian init draws from the global generator
        torch.manual_seed(config.seed)
        unet.add_adapter(PeftLoraConfig(r=config.rank, lora_alpha=config.alpha or config.rank,
                                        init_lora_weights="gaussian", target_modules=list(config.target_modules)))
    if weight_dtype != torch.float32:
        cast_training_params(unet, dtype=torch.float32)  # adapters train in fp32 over half-precision weights
    unet.to(device).train()
    vae.to(device)
    text_encoder.to(device)
    trainable = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    resolution = config.resolution or unet.config.sample_size * pipe.vae_scale_factor
    data = _TrainImages(image_set, resolution, config.caption_column, config.random_flip)
    generator = torch.Generator("cpu").manual_seed(config.seed)
    autocast = torch.autocast(device_type=device.split(":")[0], dtype=weight_dtype,
                              enabled=weight_dtype != torch.float32 and device.startswith("cuda"))

    partial = out.parent / f".{out.name}.partial"
    checkpoint = partial / CHECKPOINT_FILE
    losses: list[float] = []
    order: list[int] = []
    if partial.is_symlink():
        raise LinkedPathError(f"{partial}: a symbolic link (to {os.readlink(partial)}) where imgsynth writes {out}; "
                              "imgsynth never writes through links — remove it")
    refuse_links_below(partial)  # resumed: nothing left in it may lead a write (or the checkpoint read) out
    state = _load_checkpoint(checkpoint, info)
    if state is not None:
        set_peft_model_state_dict(unet, state["lora"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["rng"])
        losses, order = list(state["losses"]), list(state["order"])
    else:
        shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True, exist_ok=True)

    with tqdm(total=config.steps, initial=len(losses), desc="finetune", unit="step", disable=not progress) as bar:
        for step in range(len(losses), config.steps):
            if weighted is not None:  # a function of (seed, step): ``order`` stays empty, ``generator`` untouched
                indices = weighted.indices(step).tolist()
            else:
                if len(order) < config.batch_size:  # a fresh seeded permutation each epoch
                    order += torch.randperm(len(data), generator=generator).tolist()
                indices, order = order[:config.batch_size], order[config.batch_size:]
            pixels, captions = data.batch(indices, generator)
            pixels = pixels.to(device, dtype=weight_dtype)
            ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length,
                            truncation=True, return_tensors="pt").input_ids.to(device)
            with torch.no_grad():
                latents = vae.encode(pixels).latent_dist.sample(generator=generator) * vae.config.scaling_factor
                text = text_encoder(ids, return_dict=False)[0]
            noise = torch.randn(latents.shape, generator=generator).to(device, latents.dtype)
            timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],),
                                      generator=generator).to(device)
            noisy = noise_scheduler.add_noise(latents, noise, timesteps)
            if noise_scheduler.config.prediction_type == "v_prediction":
                target = noise_scheduler.get_velocity(latents, noise, timesteps)
            else:
                target = noise
            with autocast:
                prediction = unet(noisy, timesteps, text, return_dict=False)[0]
            loss = torch.nn.functional.mse_loss(prediction.float(), target.float())
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"LoRA training diverged at step {step + 1} (loss {loss.item()}); "
                                         "lower the learning rate")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(round(loss.item(), 6))
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            if checkpoint_every and len(losses) % checkpoint_every == 0 and len(losses) < config.steps:
                _save_checkpoint(checkpoint, {
                    "info": json.dumps(info, sort_keys=True), "lora": get_peft_model_state_dict(unet),
                    "optimizer": optimizer.state_dict(), "rng": generator.get_state(), "losses": losses,
                    "order": order})
            if on_step is not None:
                on_step(len(losses), losses[-1])

    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    type(pipe).save_lora_weights(save_directory=str(partial), unet_lora_layers=layers, safe_serialization=True)
    info.update(losses=losses, resolution=resolution, software=software_versions())
    (partial / INFO_FILE).write_text(json.dumps(info, indent=2), encoding="utf-8")
    checkpoint.unlink(missing_ok=True)
    if out.exists():
        shutil.rmtree(out)  # only reached when _existing found no LoRA there (an empty folder)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.rename(partial, out)
    return out


def weighted_batches(image_set: ImageSet, config: LoraConfig) -> WeightedBatchOrder | None:
    """The batch draws :func:`finetune_lora` uses for ``image_set``: ``batch_size`` indices per (0-based)
    step, with replacement, each with probability w / Σw of the set's training weights; None when the set
    has no weights (it then trains on seeded permutations, as it always has)."""
    import torch

    weights = image_set.weights
    if weights is None:
        return None
    return WeightedBatchOrder(torch.from_numpy(weights), config.batch_size, config.seed, SEED_NAMESPACE)


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    import torch

    with atomic_path(path) as tmp:  # a kill mid-save leaves the previous checkpoint whole
        torch.save(state, tmp)


def _load_checkpoint(path: Path, info: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint of an unfinished run of the same training, or None (a different one is discarded)."""
    if not path.is_file():
        return None
    state = load_torch_file(path, "LoRA fine-tuning checkpoint (delete it to train from the start)")
    return state if state.get("info") == json.dumps(info, sort_keys=True) else None


def _check_trainable(pipe: Any, model: str) -> None:
    missing = [name for name in ("unet", "vae", "text_encoder", "tokenizer") if getattr(pipe, name, None) is None]
    if missing or getattr(pipe, "text_encoder_2", None) is not None:
        reason = f"it has no {', '.join(missing)}" if missing else "it has a second text encoder (SDXL-style)"
        raise ValueError(f"model {model!r} ({type(pipe).__name__}): LoRA fine-tuning supports pipelines with one "
                         f"UNet, one VAE and one text encoder (Stable Diffusion 1.x/2.x); {reason}")


def _unet_folder(pipe: Any) -> Path:
    folder = component_folder(pipe, "unet")
    if folder is None:
        raise ValueError(f"cannot locate the UNet weights of {type(pipe).__name__} to record their hash")
    return folder


def _existing(out: Path, info: dict[str, Any]) -> Path | None:
    """``out`` when it holds a finished LoRA of the same training; None when there is nothing there."""
    if not out.exists():
        return None
    info_path = out / INFO_FILE
    if not info_path.is_file() or not (out / WEIGHTS_FILE).is_file():
        if any(out.iterdir()):
            raise ValueError(f"{out}: folder exists and is not an imgsynth LoRA; refusing to overwrite it")
        return None
    previous = read_info_file(info_path)
    # A set's id covers images and labels, not training weights: those are told apart by their digest
    # (absent on both sides for an unweighted set, so LoRAs trained before weights existed still match).
    same = all(previous.get(key) == info[key] for key in ("base_weights_sha256", "config", "dtype")) and \
        all(previous.get("train_set", {}).get(key) == info["train_set"].get(key) for key in ("id", "weights_sha256"))
    if not same:
        raise ValueError(f"{out}: already holds a LoRA trained with other settings or data; "
                         "remove it or choose another folder")
    return out


class _TrainImages:
    """An ImageSet's images as [-1, 1] tensors at ``resolution`` (resize + centre crop) with their captions."""

    def __init__(self, image_set: ImageSet, resolution: int, caption_column: str, random_flip: bool) -> None:
        from torchvision import transforms

        if len(image_set) == 0:
            raise ValueError(f"{image_set.root}: no images to train on")
        self.image_set = image_set
        self.caption_column = caption_column
        self.random_flip = random_flip
        self.transform = transforms.Compose([
            transforms.Resize(resolution, interpolation=transforms.InterpolationMode.BILINEAR),
            transforms.CenterCrop(resolution),
            transforms.ToTensor(),
            transforms.Normalize([0.5], [0.5]),
        ])

    def __len__(self) -> int:
        return len(self.image_set)

    def caption(self, index: int) -> str:
        record = self.image_set.records[index]
        if self.caption_column == "prompt" and record.extra.get("prompt"):
            return str(record.extra["prompt"])
        if self.caption_column in ("caption", "prompt") and record.caption:
            return record.caption
        return record.label

    def batch(self, indices: list[int], generator: Any) -> tuple[Any, list[str]]:
        import torch

        images = []
        for i in indices:
            pixels = self.transform(self.image_set.load_image(i).convert("RGB"))
            if self.random_flip and torch.rand((), generator=generator).item() < 0.5:
                pixels = pixels.flip(-1)
            images.append(pixels)
        return torch.stack(images), [self.caption(i) for i in indices]
