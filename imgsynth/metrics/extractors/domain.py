"""``domain:<checkpoint>``: an imgsynth classifier checkpoint's penultimate layer (``imgsynth.classifier``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image

from imgsynth.imageset import ImageSet
from imgsynth.metrics.extractors.base import FeatureExtractor, default_device
from imgsynth.metrics.extractors.digests import folder_digest

class DomainExtractor(FeatureExtractor):
    """Penultimate-layer features of an imgsynth classifier checkpoint (the offline default).

    Preprocessing is the classifier's own, stored in its checkpoint (mode, size, mean/std; PIL bicubic
    resize on the uint8 image, the same convention as the other extractors), because features are only
    meaningful for input prepared the way the classifier was trained.
    """

    def __init__(self, checkpoint: str, device: torch.device | None = None) -> None:
        from imgsynth.classifier import load_classifier

        if not checkpoint:
            raise ValueError("domain needs a classifier checkpoint: 'domain:<folder written by train_classifier>'")
        self.device = device or default_device()
        self.loaded = load_classifier(Path(checkpoint).expanduser(), device=self.device)
        self.name = f"domain:{checkpoint}"
        weights = folder_digest(self.loaded.path, ("*.json", "*.safetensors"))
        self.id = f"domain:{self.loaded.arch}:{weights[:16]}"
        self.preprocessing = "classifier:" + json.dumps(self.loaded.preprocessing.to_dict(), sort_keys=True)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self.loaded.preprocess(image)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.loaded.features(batch)

    def extract(self, images: ImageSet | Sequence[Image.Image], batch_size: int = 64,
                num_workers: int = 0) -> torch.Tensor:
        from imgsynth.classifier import penultimate_features

        if len(images) == 0:
            raise ValueError(f"{self.name}: no images to extract features from")
        return penultimate_features(self.loaded, images, batch_size=batch_size).float().cpu()
