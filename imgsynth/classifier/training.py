"""Training a classifier on an ImageSet: seeded, deterministic on CPU, with a progress bar.

Small sets are decoded once into a uint8 tensor at the model's input size and shuffled by index; sets too
large for that are streamed through a ``DataLoader``. Augmentation runs per batch on the training device
with its own seeded generator, so neither worker processes nor the device change the random stream.
With ``use_weights`` each batch carries its images' training weights and the loss is their weighted mean
cross-entropy (``weighted_cross_entropy``); without it a set's weights are ignored.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from imgsynth.classifier.architectures import (
    SMALL_RESNET, ClassifierError, build_model, classification_head, is_small_arch, logits_of, native_input_size,
)
from imgsynth.classifier.checkpoint import FORMAT_VERSION, check_output_folder, save_checkpoint
from imgsynth.compute import resolve_device
from imgsynth.classifier.config import ClassifierConfig
from imgsynth.locking import locks_output
from imgsynth.classifier.preprocessing import Augmentation, Preprocessing, channel_statistics, pil_to_uint8
from imgsynth.imageset import ImageSet, weights_digest
from imgsynth.provenance import software_versions

# Decode the whole training set into memory when it takes at most this much (uint8 at input size).
CACHE_LIMIT_BYTES = 2 * 1024**3
# Images decoded to estimate the normalisation of a set too large to cache.
STATISTICS_SAMPLE = 4096
# The one-cycle schedule warms up over its first ONE_CYCLE_WARMUP of the steps. Below MIN_ONE_CYCLE_STEPS
# that warm-up is shorter than two steps, where torch's OneCycleLR degenerates: at 4 steps its warm-up has
# zero length and it divides by zero, at 1 step its only step uses lr/250000. Such short runs (tiny sets,
# one epoch) train at the constant peak rate instead.
ONE_CYCLE_WARMUP = 0.25
MIN_ONE_CYCLE_STEPS = 8


@locks_output("out_dir")
def train_classifier(train_set: ImageSet | str | os.PathLike, out_dir: str | os.PathLike,
                     config: ClassifierConfig | None = None, progress: bool = True) -> Path:
    """Train a classifier on ``train_set`` and write its checkpoint folder ``out_dir``; returns that folder.

    The class list is the training set's manifest order (never filesystem order), including classes with
    no images, so a classifier trained on a generation that lost a class still scores that class (as
    wrong) on real data. The same config and seed give bit-identical weights on CPU (for a fixed number of
    torch threads, which sets the order of float reductions).
    """
    config = config or ClassifierConfig()
    out_dir = Path(out_dir).absolute()
    check_output_folder(out_dir)
    if not isinstance(train_set, ImageSet):
        train_set = ImageSet.open(train_set)
    if len(train_set) < 2:
        raise ClassifierError(f"{train_set.root}: {len(train_set)} image is too few to train a classifier; it "
                              "needs at least 2 images")
    weights = train_set.weights if config.use_weights else None
    if config.use_weights and weights is None:
        raise ClassifierError(f"classifier use_weights: {train_set.root} has no weight column (training weights); "
                              "train without use_weights, or give the set a 'weight' on every row")
    device = resolve_device(config.device)
    mode, size = input_geometry(train_set, config)
    data = TrainingImages(train_set, mode, size, config, progress)
    mean, std = data.statistics()
    preprocessing = Preprocessing(mode, size, mean, std)

    started = time.perf_counter()
    with seeded(config.seed, device), deterministic_algorithms(device):
        model = build_model(config.arch, len(train_set.classes), preprocessing.channels, config.width)
        history = fit(model, data, preprocessing, config, device, progress)
    seconds = time.perf_counter() - started

    model = model.cpu().to(memory_format=torch.contiguous_format).eval()
    stored_config = asdict(config)
    training_set = {"id": train_set.id, "path": str(train_set.root), "kind": train_set.kind,
                    "num_images": len(train_set), "counts": train_set.counts}
    if weights is None:  # a checkpoint trained without weights keeps exactly the metadata it always had
        stored_config.pop("use_weights")
    else:  # a set's id covers its images and labels, not their weights
        training_set["weights_sha256"] = weights_digest(weights)
    metadata = {
        "format_version": FORMAT_VERSION,
        "classes": train_set.classes,
        "model": {"arch": config.arch, "num_classes": len(train_set.classes), "in_channels": preprocessing.channels,
                  "width": config.width if is_small_arch(config.arch) else None,
                  "feature_dim": classification_head(model).in_features},
        "config": stored_config,
        "preprocessing": preprocessing.to_dict(),
        "training_set": training_set,
        "training": {"epochs": history, "final_loss": history[-1]["loss"],
                     "final_accuracy": history[-1]["accuracy"], "steps": data.steps_per_epoch * config.epochs,
                     "seconds": round(seconds, 3), "device": str(device), "threads": torch.get_num_threads()},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "software": software_versions(),
    }
    return save_checkpoint(model, metadata, out_dir)


def input_geometry(train_set: ImageSet, config: ClassifierConfig) -> tuple[str, tuple[int, int]]:
    """Colour mode and (H, W) of the model input for this set and architecture."""
    if config.image_size is not None:
        size: tuple[int, int] | None = (config.image_size, config.image_size)
    elif is_small_arch(config.arch):
        size = train_set.image_size
        if size is None:
            raise ClassifierError(f"{train_set.root}: images have different sizes; set image_size in the "
                                  f"classifier config (--image-size) to train {SMALL_RESNET} on it")
    else:
        size = (native_input_size(config.arch),) * 2
    if not is_small_arch(config.arch):
        return "RGB", size
    stored_mode = train_set.manifest.get("image_mode") or train_set.load_image(0).mode
    return ("L" if stored_mode == "L" else "RGB"), size


# One batch: uint8 images, labels, and the images' training weights (None when training ignores weights).
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]


class TrainingImages:
    """The training set as uint8 batches at input size, reshuffled each epoch by a seeded generator; with
    ``config.use_weights``, each batch carries its images' training weights."""

    def __init__(self, image_set: ImageSet, mode: str, size: tuple[int, int], config: ClassifierConfig,
                 progress: bool = False) -> None:
        self.image_set = image_set
        self.config = config
        self.to_uint8 = functools.partial(pil_to_uint8, mode=mode, size=size)
        self.labels = torch.tensor(image_set.labels, dtype=torch.long)
        weights = image_set.weights if config.use_weights else None
        self.weights = None if weights is None else torch.from_numpy(weights)
        self.batch_size = min(config.batch_size, len(image_set))
        # Whole batches only: a last batch of one image would break BatchNorm and skew the loss.
        self.steps_per_epoch = len(image_set) // self.batch_size
        channels = 1 if mode == "L" else 3
        self.images: torch.Tensor | None = None
        if len(image_set) * channels * size[0] * size[1] <= CACHE_LIMIT_BYTES:
            # A context manager, so a bad image's error line is not printed on the bar's line.
            with tqdm(range(len(image_set)), desc="decode", unit="image", disable=not progress,
                      leave=False) as decoding:
                self.images = torch.stack([self.to_uint8(image_set.load_image(i)) for i in decoding])

    def statistics(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        if self.images is not None:
            return channel_statistics(self.images)
        rng = np.random.default_rng(self.config.seed)
        sample = rng.choice(len(self.image_set), size=min(STATISTICS_SAMPLE, len(self.image_set)), replace=False)
        return channel_statistics(torch.stack([self.to_uint8(self.image_set.load_image(int(i))) for i in sample]))

    def batches(self, generator: torch.Generator) -> Iterator[Batch]:
        """One epoch of (uint8 images, labels, weights or None) batches; in memory and streamed sets see the
        same order."""
        order = torch.randperm(len(self.labels), generator=generator)
        steps = [order[i * self.batch_size:(i + 1) * self.batch_size] for i in range(self.steps_per_epoch)]
        if self.images is not None:
            for index in steps:
                yield self.images[index], self.labels[index], self._weights_of(index)
            return
        loader = torch.utils.data.DataLoader(
            self.image_set.with_transform(self.to_uint8), batch_sampler=[s.tolist() for s in steps],
            num_workers=self.config.num_workers, pin_memory=torch.cuda.is_available())
        # The loader keeps the batch sampler's order, so its batches pair with ``steps`` one for one.
        for (images, labels, _captions), index in zip(loader, steps):
            yield images, labels, self._weights_of(index)

    def _weights_of(self, index: torch.Tensor) -> torch.Tensor | None:
        return None if self.weights is None else self.weights[index]


def weighted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor,
                           label_smoothing: float = 0.0) -> torch.Tensor:
    """Σ w_i · ce_i / Σ w_i over a batch: its images' cross-entropies weighted by their training weights.

    The caller skips a batch whose weights sum to 0 (it has nothing to learn from), so no 0/0 arises here.
    """
    losses = F.cross_entropy(logits, labels, reduction="none", label_smoothing=label_smoothing)
    weights = weights.to(losses.device, losses.dtype)
    return (weights * losses).sum() / weights.sum()


def fit(model: nn.Module, data: TrainingImages, preprocessing: Preprocessing, config: ClassifierConfig,
        device: torch.device, progress: bool) -> list[dict[str, Any]]:
    """The training loop: AdamW + LR schedule, optional augmentation; returns per-epoch loss and accuracy.

    The schedule is one-cycle peaking at ``config.lr`` (``learning_rate_schedule``), or constant at
    ``config.lr`` for runs of fewer than ``MIN_ONE_CYCLE_STEPS`` optimizer steps. With training weights the
    loss is ``weighted_cross_entropy``, the history's loss and accuracy are weighted means, and a batch of
    weight 0 is skipped (no optimizer or schedule step).
    """
    cuda = device.type == "cuda"
    model.to(device)
    if cuda:
        model.to(memory_format=torch.channels_last)
    # No weight decay on biases and norm scales: decaying them only fights the normalisation.
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=config.lr)
    total_steps = data.steps_per_epoch * config.epochs
    schedule = learning_rate_schedule(optimizer, config.lr, total_steps)
    augment = Augmentation(hflip=config.hflip) if config.augment else None
    shuffle_generator = torch.Generator().manual_seed(config.seed)
    augment_generator = torch.Generator().manual_seed(config.seed + 1_000_003)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
    history = []
    bar = tqdm(total=total_steps, desc=f"train {config.arch}", unit="step", disable=not progress, leave=False)
    model.train()
    for epoch in range(1, config.epochs + 1):
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        for images, labels, weights in data.batches(shuffle_generator):
            if weights is not None and not weights.sum() > 0:
                bar.update(1)
                continue  # only zero-weight images: nothing to learn from, so no step either
            x = images.to(device, non_blocking=True).float().div_(255.0)
            y = labels.to(device, non_blocking=True)
            if augment is not None:
                x = augment(x, augment_generator)
            x = preprocessing.standardize(x)
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast:
                logits = logits_of(_forward(model, x, config))
            if weights is None:
                loss = F.cross_entropy(logits.float(), y, label_smoothing=config.label_smoothing)
            else:
                loss = weighted_cross_entropy(logits.float(), y, weights, config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            if weights is None:
                loss_sum += loss.detach() * len(y)
                correct += (logits.detach().argmax(dim=1) == y).sum()
                seen += len(y)
            else:  # the history describes the loss that was optimised: weighted means over the epoch
                w = weights.to(device, torch.float32)
                loss_sum += loss.detach() * w.sum()
                correct = correct + ((logits.detach().argmax(dim=1) == y) * w).sum()
                seen += float(weights.sum())
            bar.update(1)
            if bar.n % 10 == 0 or bar.n == total_steps:  # .item() syncs the GPU; not every step
                bar.set_postfix(epoch=epoch, loss=f"{loss_sum.item() / seen:.4f}")
        seen = seen or 1  # an epoch whose every batch weighed 0 trained on nothing: loss and accuracy 0
        history.append({"epoch": epoch, "loss": round(loss_sum.item() / seen, 6),
                        "accuracy": round(correct.item() / seen, 6)})
    bar.close()
    return history


def _forward(model: nn.Module, x: torch.Tensor, config: ClassifierConfig) -> torch.Tensor:
    """``model(x)``, with torch's error for a batch of one image reaching a 1×1 BatchNorm said in the user's terms."""
    try:
        return model(x)
    except ValueError as exc:
        if "Expected more than 1 value per channel" not in str(exc):
            raise
        raise ClassifierError(f"batch size {x.shape[0]} is too small for {config.arch} on {x.shape[-2]}x{x.shape[-1]} "
                              "px input: a BatchNorm layer sees one value per channel; use a batch size of 2 or "
                              "more (--batch-size, [classifier] batch_size)") from None


def learning_rate_schedule(optimizer: torch.optim.Optimizer, peak_lr: float,
                           total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """One-cycle LR to ``peak_lr`` over ``total_steps`` (warm-up ``ONE_CYCLE_WARMUP``), or constant at
    ``peak_lr`` when ``total_steps < MIN_ONE_CYCLE_STEPS``, too few for one-cycle's warm-up (see there)."""
    if total_steps < 1:
        raise ClassifierError(f"a training run needs at least one optimizer step, got {total_steps}")
    if total_steps < MIN_ONE_CYCLE_STEPS:
        for group in optimizer.param_groups:
            group["lr"] = peak_lr
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peak_lr, total_steps=total_steps,
                                               pct_start=ONE_CYCLE_WARMUP)


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's global RNG (weight init, dropout) for the block, restoring the caller's state after."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def deterministic_algorithms(device: torch.device) -> Iterator[None]:
    """Deterministic kernels for the block (bit-identical on CPU; CUDA warns where it cannot promise it)."""
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                torch.backends.cudnn.benchmark)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.benchmark = previous[2]
