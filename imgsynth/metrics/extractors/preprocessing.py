"""How the extractors resize images to their network's input.

The convention shared by the extractors (clean-fid, Parmar et al. 2022): RGB, then PIL bicubic on the uint8
image (properly antialiased), never an unfiltered tensor ``interpolate`` (``clean_resize``).

The FID Inception offers the three conventions of the tools whose numbers papers report
(``registry.RESIZE_MODES``), one function each, each giving exactly the network input of that tool:
``clean_fid_resize`` (clean-fid's ``clean`` mode: PIL bicubic of each channel in float, not quantized),
``pytorch_fid_resize`` (pytorch-fid: ``F.interpolate`` bilinear of the [0, 1] tensor, no antialiasing) and
``torch_fidelity_resize`` (torch-fidelity: its TensorFlow-1 bilinear resize of the [0, 255] tensor).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
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


def clean_fid_resize(image: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    """clean-fid's ``clean`` resize (``cleanfid.resize.make_resizer("PIL", False, "bicubic", size)``): RGB, each
    uint8 channel as a float32 PIL image resized with bicubic to ``size`` = (width, height), clipped to
    [0, 255]; a (3, H, W) float32 tensor, not rounded. (Resizing the uint8 RGB image instead rounds and clips
    after each of PIL's two passes, which moves edge pixels by many grey levels.)"""
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    channels = [np.asarray(Image.fromarray(array[:, :, c].astype(np.float32)).resize(tuple(size), resample=RESAMPLE))
                for c in range(3)]
    return torch.from_numpy(np.stack(channels).clip(0, 255).astype(np.float32))


def pytorch_fid_resize(image: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    """pytorch-fid's resize: RGB, ``ToTensor`` (uint8 / 255), then ``F.interpolate(..., mode="bilinear",
    align_corners=False)`` to ``size`` = (width, height), as its ``InceptionV3.forward`` does; (3, H, W) float32
    in [0, 1]."""
    x = to_uint8_tensor(image.convert("RGB")).to(torch.float32).div(255)
    return F.interpolate(x[None], size=(size[1], size[0]), mode="bilinear", align_corners=False)[0]


def torch_fidelity_resize(image: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    """torch-fidelity's resize: RGB as a float32 [0, 255] tensor through its own
    ``interpolate_bilinear_2d_like_tensorflow1x`` (TensorFlow 1's bilinear, ``align_corners=False``) to
    ``size`` = (width, height), as its Inception's ``forward`` does; (3, H, W) float32."""
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    x = to_uint8_tensor(image.convert("RGB")).to(torch.float32)
    return interpolate_bilinear_2d_like_tensorflow1x(x[None], size=(size[1], size[0]), align_corners=False)[0]
