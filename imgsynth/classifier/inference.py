"""Running a classifier over images: predictions and penultimate features.

``penultimate_features`` is the ``domain:<checkpoint>`` feature extractor of the metrics engine: the
representation a classifier trained on the run's real data gives every image, as MNIST studies use LeNet
features for FID.
"""

from __future__ import annotations

import os
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from imgsynth.classifier.checkpoint import LoadedClassifier, load_classifier
from imgsynth.imageset import ImageSet

Images = ImageSet | Sequence[Image.Image]
Checkpoint = str | os.PathLike | LoadedClassifier


def preprocessed_batches(images: Images, preprocess: Callable[[Image.Image], torch.Tensor],
                         batch_size: int) -> Iterator[torch.Tensor]:
    """Stacked, preprocessed batches of an ImageSet (in record order) or a sequence of PIL images."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    load = images.load_image if isinstance(images, ImageSet) else images.__getitem__
    for start in range(0, len(images), batch_size):
        stop = min(start + batch_size, len(images))
        yield torch.stack([preprocess(load(i)) for i in range(start, stop)])


def penultimate_features(checkpoint_or_loaded: Checkpoint, images: Images, batch_size: int = 256) -> torch.Tensor:
    """Penultimate-layer features of every image, float32 (N, D) on the CPU, in input order.

    Images are brought to the classifier's mode and size first, so generated sets of another size work.
    """
    classifier = load_classifier(checkpoint_or_loaded)
    chunks = [classifier.features(batch) for batch in preprocessed_batches(images, classifier.preprocess, batch_size)]
    return torch.cat(chunks) if chunks else torch.empty(0, classifier.feature_dim)


def predict(checkpoint_or_loaded: Checkpoint, images: Images, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Predicted class indices (N,) int64 and probabilities (N, K) float32; columns follow ``classes``."""
    classifier = load_classifier(checkpoint_or_loaded)
    chunks = [classifier.predict_proba(batch) for batch in preprocessed_batches(images, classifier.preprocess,
                                                                                batch_size)]
    probs = torch.cat(chunks).numpy() if chunks else np.zeros((0, len(classifier.classes)), dtype=np.float32)
    return probs.argmax(axis=1).astype(np.int64), probs.astype(np.float32)
