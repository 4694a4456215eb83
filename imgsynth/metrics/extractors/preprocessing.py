"""The resize convention shared by the extractors (clean-fid, Parmar et al. 2022): RGB, then PIL bicubic on
the uint8 image (properly antialiased), never an unfiltered tensor ``interpolate``."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image

RESAMPLE = Image.Resampling.BICUBIC


def clean_resize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """RGB, then PIL bicubic resize of the uint8 image to ``size`` = (width, height)."""
    image = image.convert("RGB")
    if image.size == tuple(size):
        return image
    return image.resize(tuple(size), resample=RESAMPLE)


def resize_shorter_and_crop(image: Image.Image, size: int) -> Image.Image:
    """RGB, shorter side to ``size`` with PIL bicubic, centre crop to size × size (open_clip's eval rule)."""
    image = image.convert("RGB")
    width, height = image.size
    if width <= height:
        new = (size, int(size * height / width))
    else:
        new = (int(size * width / height), size)
    if new != image.size:
        image = image.resize(new, resample=RESAMPLE)
    left = int(round((new[0] - size) / 2.0))
    top = int(round((new[1] - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def to_uint8_tensor(image: Image.Image) -> torch.Tensor:
    """(3, H, W) uint8 tensor of an RGB PIL image."""
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy())


def to_normalized_tensor(image: Image.Image, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(3, H, W) float tensor: pixels / 255, then (x − mean) / std per channel."""
    x = to_uint8_tensor(image).float().div_(255.0)
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
