"""Training the class-conditional model on a labeled ImageSet: data, batches, checkpoints, the loop, the loss.

Every step's batch, noise and timesteps derive from (seed, step), so a resumed run ends where an
uninterrupted one would; checkpoints land in ``<model dir>/checkpoints`` and a killed run resumes from
the latest. ``EMAModel`` keeps the averaged weights that are saved.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from imgsynth.compute import fast_matmul, resolve_device
from imgsynth.imageset import ImageSet, ImageSetError, weights_digest
from imgsynth.locking import folder_lock
from imgsynth.notes import Note
from imgsynth.pipelines import device as devices
from imgsynth.pipelines.batches import WeightedBatchOrder, derived_seed
from imgsynth.pipelines.conditional.config import TrainConfig
from imgsynth.pipelines.base import read_info_file
from imgsynth.pipelines.conditional.folder import (CHECKPOINTS, MODEL_FILE, ModelLayout, _check_safetensors_only,
                                                   _write_model_info, check_weights, read_model_info)
from imgsynth.pipelines.conditional.model import build_noise_scheduler, build_unet, check_model_size, estimate_size
from imgsynth.pipelines.conditional.pipeline import ClassConditionalPipeline
from imgsynth.safe_loading import first_line, load_safetensors, load_torch_file
from imgsynth.safe_paths import make_dirs_inside, refuse_links_below

SEED_NAMESPACE = "imgsynth-conditional"  # part of every derived seed: changing it changes every trained model


@dataclass
class TrainingData:
    """A labeled ImageSet held in memory as uint8 (N, C, H, W): small sets fit, and batches are free."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    class_captions: dict[str, str]
    mode: str
    weights: torch.Tensor | None = None  # training weights (the set's ``weight`` column), None: unweighted


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
                      Note, stacklevel=3)
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
    weights = image_set.weights
    return TrainingData(images, torch.tensor(image_set.labels, dtype=torch.long), image_set.classes,
                        class_captions, mode, None if weights is None else torch.from_numpy(weights))


def _derived_seed(*parts: Any) -> int:
    return derived_seed(SEED_NAMESPACE, *parts)


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

        make_dirs_inside(self.root.parent, self.root.name)  # the model folder's checkpoints/, not a link
        refuse_links_below(self.root)
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
        weights = path / "weights.safetensors"
        if not weights.is_file():
            _check_safetensors_only(path, "the training checkpoint")
            raise ValueError(f"{path}: training checkpoint has no weights.safetensors; delete {path} to restart "
                             "from the previous checkpoint or from scratch")
        meta_path = path / "checkpoint.json"
        meta = read_info_file(meta_path) if meta_path.is_file() else {}
        for key, value in self.identity.items():
            if meta.get(key) != value:
                raise ValueError(f"{path}: checkpoint was made by a different run ({key} differs); resume with "
                                 f"the same training set and config, or delete {self.root} to start over")
        tensors = load_safetensors(weights, "weights of a training checkpoint", device=str(device))
        model = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        shadow = [tensors[k] for k in sorted(k for k in tensors if k.startswith("ema."))]
        state = load_torch_file(path / "training_state.pt", "training state of a checkpoint")
        _check_training_state(path, state, len(shadow), len(list(unet.parameters())))
        try:
            unet.load_state_dict(model)
        except RuntimeError as exc:
            raise ValueError(f"{weights}: does not fit the model of this config ({first_line(exc)}); delete "
                             f"{path} to restart from the previous checkpoint or from scratch") from None
        ema.load_state_dict({**state["ema"], "shadow_params": shadow})
        optimizer.load_state_dict(state["optimizer"])
        lr_scheduler.load_state_dict(state["lr_scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        return int(state["step"])



def _check_training_state(path: Path, state: Mapping[str, Any], shadows: int, parameters: int) -> None:
    """A checkpoint's ``training_state.pt`` holds what resuming restores, of the types ``save`` writes, and
    its weights hold one EMA copy per model parameter; else a ``ValueError`` naming the file."""
    file = path / "training_state.pt"
    kinds = {"step": int, "optimizer": dict, "lr_scheduler": dict, "ema": dict, "rng": dict}
    for key, kind in kinds.items():
        if key not in state:
            raise ValueError(f"{file}: training checkpoint lacks {key!r}; delete {path} to restart from the "
                             "previous checkpoint or from scratch")
        if not isinstance(state[key], kind) or isinstance(state[key], bool):
            raise ValueError(f"{file}: {key!r} should be {'an integer' if kind is int else 'a dict'}, found "
                             f"{type(state[key]).__name__}; delete {path} to restart")
    if "torch" not in state["rng"] or not isinstance(state["rng"]["torch"], torch.Tensor):
        raise ValueError(f"{file}: 'rng' lacks the torch RNG state; delete {path} to restart")
    if shadows != parameters:
        raise ValueError(f"{path / 'weights.safetensors'}: {shadows} EMA tensors for a model of {parameters} "
                         f"parameters; delete {path} to restart")


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
    device = resolve_device(config.device)  # before any data loads: a wrong device is refused at once
    if parallel is not None and config.batch_size % parallel.world_size:
        raise ValueError(f"batch_size {config.batch_size} does not split evenly over {parallel.world_size} "
                         "processes; choose a batch size divisible by the process count")
    if not isinstance(image_set, ImageSet):
        image_set = ImageSet.open(image_set)
    out = Path(out_dir).absolute()
    identity = {"training_set": image_set.id, "config": config.fingerprint()}
    weights = image_set.weights
    if weights is not None:  # a set's id covers images and labels, not their weights
        identity["weights"] = weights_digest(weights)
    if (out / MODEL_FILE).is_file():
        done = read_model_info(out)
        parent = done.get("parent", {})
        if parent.get("id") == image_set.id and done.get("config_fingerprint") == identity["config"] \
                and parent.get("training_weights_sha256") == identity.get("weights"):
            check_weights(ModelLayout.of(out), done)  # damaged weights are not a finished model
            return out
        raise ValueError(f"{out}: already holds a model trained on another set or with another config; "
                         "remove it or choose another folder")
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: exists and is not a folder")
    refuse_links_below(out)  # an unfinished model folder is resumed: no write may follow a link out of it
    # The model must fit the device (weights and one image's activations, as for sampling) before it is built.
    check_model_size(estimate_size(config, len(image_set.classes)), 1, out, device)
    data = load_training_data(image_set, config)
    cuda_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices), fast_matmul(device):
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
    # A weighted set draws its batches with the weights' probabilities; an unweighted one as it always has.
    order = (BatchOrder(len(images), config.batch_size, config.seed) if data.weights is None
             else WeightedBatchOrder(data.weights, config.batch_size, config.seed, SEED_NAMESPACE))
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
        _write_model_weights(out, unet, noise_scheduler, config, data)
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



def _write_model_weights(out: Path, unet: Any, noise_scheduler: Any, config: TrainConfig, data: TrainingData) -> None:
    """Save the (EMA) UNet and the training scheduler as a ``ClassConditionalPipeline`` (safetensors only)."""
    make_dirs_inside(out)
    refuse_links_below(out)  # save_pretrained opens its files by name: checked again just before it does
    unet.to("cpu").to(memory_format=torch.contiguous_format)
    pipeline = ClassConditionalPipeline(unet, noise_scheduler, class_names=data.classes, image_mode=data.mode,
                                        patch_size=config.patch_size, sampler=config.sampler,
                                        sample_steps=config.sample_steps, guidance_scale=config.guidance_scale,
                                        mixed_precision=config.mixed_precision)
    pipeline.save_pretrained(out, safe_serialization=True)
