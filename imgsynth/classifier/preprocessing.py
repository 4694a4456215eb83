"""Turning PIL images into classifier input, and the batch augmentation used in training.

The same ``Preprocessing`` (colour mode, size, per-channel mean/std) is stored in the checkpoint and used
for training, evaluation and feature extraction, so a generated set at another size or mode is brought to
exactly what the classifier was trained on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


@dataclass(frozen=True)
class Preprocessing:
    """Mode ('L' or 'RGB'), size (H, W) and normalisation of classifier input."""

    mode: str
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def channels(self) -> int:
        return 1 if self.mode == "L" else 3

    def to_uint8(self, image: Image.Image) -> torch.Tensor:
        """Convert mode and resize (bicubic) as needed; returns a uint8 tensor (C, H, W)."""
        return pil_to_uint8(image, self.mode, self.image_size)

    def standardize(self, batch: torch.Tensor) -> torch.Tensor:
        """Float images in [0, 1] (N, C, H, W) → normalised with the stored mean and std."""
        mean = torch.tensor(self.mean, dtype=batch.dtype, device=batch.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=batch.dtype, device=batch.device).view(1, -1, 1, 1)
        return (batch - mean) / std

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """A PIL image as a normalised float tensor (C, H, W), ready to stack into a batch."""
        return self.standardize(self.to_uint8(image)[None].float().div_(255.0))[0]

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "image_size": list(self.image_size), "mean": list(self.mean),
                "std": list(self.std), "resample": "bicubic"}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocessing:
        return cls(mode=str(data["mode"]), image_size=tuple(int(s) for s in data["image_size"]),
                   mean=tuple(float(m) for m in data["mean"]), std=tuple(float(s) for s in data["std"]))


def pil_to_uint8(image: Image.Image, mode: str, size: tuple[int, int]) -> torch.Tensor:
    """``image`` in PIL ``mode`` at ``size`` (H, W), resized bicubically if needed, as uint8 (C, H, W)."""
    if image.mode != mode:
        image = image.convert(mode)
    height, width = size
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BICUBIC)
    array = np.asarray(image, dtype=np.uint8)
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return torch.from_numpy(array.copy())


def channel_statistics(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images (N, C, H, W), in [0, 1] units (std floored to avoid /0)."""
    values = images.transpose(0, 1).reshape(images.shape[1], -1).double().div_(255.0)
    mean = values.mean(dim=1)
    std = values.std(dim=1).clamp_min(1e-3)
    return tuple(round(float(m), 6) for m in mean), tuple(round(float(s), 6) for s in std)


@dataclass(frozen=True)
class Augmentation:
    """Light geometric augmentation with parameters drawn per image: rotation, scale, shift, optional flip.

    A shift of ``translate`` × size with zero fill plays the role of random-crop-with-padding. Flips are
    off by default because they change the class of digits and text.
    """

    degrees: float = 10.0
    translate: float = 0.125
    scale: float = 0.1
    hflip: bool = False

    def __call__(self, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment float images in [0, 1] (N, C, H, W); parameters come from ``generator`` (on CPU).

        torchvision's transforms draw one set of parameters per call; per-image parameters on a whole
        batch (on the training device) need one affine grid per image, which ``affine_grid`` gives.
        """
        n = batch.shape[0]
        uniform = torch.rand(n, 5, generator=generator, dtype=torch.float64) * 2 - 1
        angle = uniform[:, 0] * math.radians(self.degrees)
        zoom = 1.0 + uniform[:, 1] * self.scale
        shift = uniform[:, 2:4] * (2 * self.translate)  # affine_grid coordinates span [-1, 1]
        flip = torch.where(uniform[:, 4] < 0, -1.0, 1.0) if self.hflip else torch.ones(n, dtype=torch.float64)
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        # affine_grid maps output coordinates to input ones: rotate/zoom, then flip x of the source.
        theta = torch.stack([torch.stack([cos * flip, -sin * flip, shift[:, 0]], dim=1),
                             torch.stack([sin, cos, shift[:, 1]], dim=1)], dim=1)
        theta = theta.to(device=batch.device, dtype=batch.dtype)
        grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
        return F.grid_sample(batch, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
