"""``pixels``: the raw pixels, no model."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from imgsynth.metrics.extractors.base import FeatureExtractor

class PixelExtractor(FeatureExtractor):
    """The raw pixels (C·H·W values in [0, 1]) at the set's own size: no model, no resize.

    Meaningful for tiny images and for the exact-theory generators, whose model *is* a distribution over
    these vectors (FID in this space is the Fréchet distance between the fitted Gaussians).
    """

    def __init__(self, argument: str = "", device: torch.device | None = None) -> None:
        if argument:
            raise ValueError(f"pixels takes no argument, got 'pixels:{argument}'")
        self.device = torch.device("cpu")
        self.name, self.id, self.preprocessing = "pixels", "pixels:v1", "as-stored|uint8/255|flatten"

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return torch.from_numpy(np.asarray(image, dtype=np.float32).reshape(-1) / 255.0)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return batch
