"""The classifier training configuration: plain data, stored in every checkpoint."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

from imgsynth.classifier.architectures import MAX_WIDTH, SMALL_RESNET, ClassifierError, check_arch
from imgsynth.compute import DEVICE_PATTERN
from imgsynth.limits import MAX_BATCH_SIZE, MAX_EPOCHS, MAX_IMAGE_SIZE


@dataclass
class ClassifierConfig:
    """How a classifier is trained; plain data, stored in the checkpoint via ``dataclasses.asdict``.

    The defaults train ``resnet18_small`` (width 16, 0.7M parameters) to ≥95% on the 16 px digits in well
    under a minute on two CPU cores: AdamW with a one-cycle schedule peaking at ``lr``, light per-image
    affine augmentation. Torchvision models trained from scratch usually want a lower ``lr`` (1e-3).
    ``width`` applies to ``resnet18_small`` only; ``image_size`` (square) overrides the input size, which is
    otherwise the training set's for ``resnet18_small`` and the model's native one for torchvision models.
    ``use_weights`` trains on the weighted mean of each batch's cross-entropy by the set's training weights
    (its ``weight`` column; a set without one is refused); off, the weights are ignored.
    """

    arch: str = SMALL_RESNET
    epochs: int = 6
    batch_size: int = 64
    lr: float = 1e-2
    weight_decay: float = 0.05
    seed: int = 0
    augment: bool = True
    device: str | None = None
    width: int = 16
    image_size: int | None = None
    hflip: bool = False
    label_smoothing: float = 0.0
    num_workers: int = 0
    use_weights: bool = False

    def __post_init__(self) -> None:
        check_arch(self.arch)
        # Upper bounds too: counts past them are slips that would allocate for minutes (imgsynth.limits).
        checks = [("epochs", 1 <= self.epochs <= MAX_EPOCHS), ("batch_size", 1 <= self.batch_size <= MAX_BATCH_SIZE),
                  ("lr", self.lr > 0), ("weight_decay", self.weight_decay >= 0), ("width", 1 <= self.width <= MAX_WIDTH),
                  ("image_size", self.image_size is None or 8 <= self.image_size <= MAX_IMAGE_SIZE),
                  ("device", self.device is None or bool(DEVICE_PATTERN.match(str(self.device)))),
                  ("label_smoothing", 0 <= self.label_smoothing < 1), ("num_workers", self.num_workers >= 0)]
        for name, ok in checks:
            if not ok:
                raise ClassifierError(f"classifier config: invalid {name}={getattr(self, name)!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClassifierConfig:
        """Rebuild from ``asdict`` output, ignoring keys this version does not know."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
