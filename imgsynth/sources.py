"""Real data sources, each turned into labeled samples for an ImageSet.

A source is a function ``(location, size, mode) -> SourceData`` registered by name. ``digits`` is the
embedded offline default (scikit-learn's bundled copy of the UCI handwritten digits, 1,797 8×8 images).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from PIL import Image

from imgsynth.imageset import ImageSet, ImageSetError, ImageSetWriter, Sample, stratified_split_indices

DIGITS_LICENSE = {
    "name": "CC-BY-4.0",
    "source": "UCI Machine Learning Repository, Optical Recognition of Handwritten Digits "
              "(Alpaydin & Kaynak, 1998), as bundled with scikit-learn",
    "url": "https://archive.ics.uci.edu/dataset/80",
}


@dataclass
class SourceData:
    """Labeled images from a source: parallel lists, classes in a fixed (never filesystem) order."""

    name: str
    classes: list[str]
    images: list[Image.Image]
    labels: list[str]
    license: dict[str, Any] = field(default_factory=lambda: {"name": "unknown"})
    captions: list[str] | None = None

    def __post_init__(self) -> None:
        if not self.images:
            raise ImageSetError(f"source {self.name}: no images found")
        if len(self.images) != len(self.labels):
            raise ImageSetError(f"source {self.name}: {len(self.images)} images but {len(self.labels)} labels")


def _resize(image: Image.Image, size: int | None, mode: str) -> Image.Image:
    image = image.convert(mode)
    if size and image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    return image


def load_digits_source(location: str | None = None, size: int = 16, mode: str = "L") -> SourceData:
    """The 1,797 UCI digits, 0–16 intensities scaled to 0–255 and upscaled bicubically to ``size``."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = []
    for pixels in bunch.images:
        array = np.clip(np.round(pixels * (255.0 / 16.0)), 0, 255).astype(np.uint8)
        images.append(_resize(Image.fromarray(array, mode="L"), size, mode))
    classes = [str(c) for c in range(10)]
    labels = [str(int(t)) for t in bunch.target]
    captions = [f"a handwritten digit {label}" for label in labels]
    return SourceData("digits", classes, images, labels, dict(DIGITS_LICENSE), captions)


SOURCES: dict[str, Callable[..., SourceData]] = {
    "digits": load_digits_source,
}


def load_source(spec: str, size: int | None = 16, mode: str = "L") -> SourceData:
    """Load a source by spec: a registered name (``digits``) or ``name:location``."""
    name, _, location = spec.partition(":")
    if name not in SOURCES:
        raise ImageSetError(f"unknown source {spec!r}; known: {sorted(SOURCES)}")
    return SOURCES[name](location or None, size=size, mode=mode)


def _samples(data: SourceData, indices: list[int]) -> Iterator[Sample]:
    for i in indices:
        caption = data.captions[i] if data.captions else f"a photo of {data.labels[i]}"
        yield Sample(data.images[i], data.labels[i], caption, None, f"{data.name}-{i:07d}")


def import_source(spec: str, out: str | os.PathLike, *, size: int | None = 16, mode: str = "L",
                  test_fraction: float = 0.2, seed: int = 0, license: str | None = None) -> tuple[ImageSet, ImageSet]:
    """Import a source into ``out/train`` and ``out/test`` ImageSets with a stratified, seeded split."""
    data = load_source(spec, size=size, mode=mode)
    class_index = {c: i for i, c in enumerate(data.classes)}
    train_idx, test_idx = stratified_split_indices([class_index[l] for l in data.labels], test_fraction, seed)
    record = dict(data.license) if license is None else {"name": license}
    out = Path(out)
    result = []
    for part, indices in (("train", train_idx), ("test", test_idx)):
        config = {"source": spec, "size": size, "mode": mode, "test_fraction": test_fraction,
                  "seed": seed, "part": part}
        writer = ImageSetWriter(out / part, data.classes, kind="real", config=config, license=record,
                                parents=[{"id": f"source:{data.name}", "path": spec, "kind": "source",
                                          "license": record}])
        writer.write_all(_samples(data, indices))
        result.append(writer.finalize())
    return result[0], result[1]
