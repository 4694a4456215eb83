"""Classifier architectures: a small-input ResNet-18 for 16–64 px images, and any torchvision model by name.

Every model ends in one ``nn.Linear`` classification head; its input is the penultimate representation
that ``LoadedClassifier.features`` exposes (the ``domain`` feature extractor of the metrics engine).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchvision import models
from torchvision.models.resnet import BasicBlock, ResNet

from imgsynth.compute import MAX_MODEL_GB_ENV, max_model_bytes
from imgsynth.limits import MAX_CLASSES, MAX_PARAMETERS, check_count

SMALL_RESNET = "resnet18_small"
# resnet18_small's base width (the last stage is 8× wider): 512 is 32× the default, ~7e8 parameters.
MAX_WIDTH = 512
# Torchvision's own classifiers expect RGB at a fixed size; this one is used when no weights entry says otherwise.
DEFAULT_TORCHVISION_SIZE = 224


class ClassifierError(ValueError):
    """A classifier checkpoint, configuration or data set does not fit; the message names what and where."""


class SmallInputResNet(ResNet):
    """ResNet-18 for small images (CIFAR-style): 3×3 stride-1 stem, no max-pool, configurable width.

    Torchvision's ResNet hard-codes widths 64…512 and a stem that shrinks 224 px inputs by 4; at 16 px that
    would leave a 1×1 map before the last stage. This keeps torchvision's blocks, ``_make_layer`` and
    ``forward`` and only changes the stem and the widths (``width``, 2×, 4×, 8×).
    """

    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 16,
                 layers: tuple[int, int, int, int] = (2, 2, 2, 2)) -> None:
        # ResNet.__init__ would build (and initialise) the 11M-parameter 64-wide network only to throw it
        # away; set the attributes ``_make_layer`` reads and build the narrow one directly.
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.inplanes, self.dilation, self.groups, self.base_width = width, 1, 1, 64
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity()
        self.layer1 = self._make_layer(BasicBlock, width, layers[0])
        self.layer2 = self._make_layer(BasicBlock, 2 * width, layers[1], stride=2)
        self.layer3 = self._make_layer(BasicBlock, 4 * width, layers[2], stride=2)
        self.layer4 = self._make_layer(BasicBlock, 8 * width, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8 * width, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        # Zero-init the last BN of each residual branch: every block starts as identity, which trains
        # faster in the few epochs a per-generation classifier gets (Goyal et al., 2017).
        for module in self.modules():
            if isinstance(module, BasicBlock):
                nn.init.zeros_(module.bn2.weight)


def torchvision_names() -> list[str]:
    """Names of torchvision's image classification models (``torchvision.models.list_models``)."""
    return sorted(models.list_models(module=models))


def is_small_arch(arch: str) -> bool:
    return arch == SMALL_RESNET


def check_arch(arch: str) -> str:
    """Return ``arch`` if it names a known architecture, else raise listing what is available."""
    if is_small_arch(arch) or arch in torchvision_names():
        return arch
    raise ClassifierError(f"unknown classifier architecture {arch!r}; use {SMALL_RESNET!r} or a torchvision "
                          f"classification model such as resnet18, resnet50, convnext_tiny, vit_b_16 "
                          f"(all: {', '.join(torchvision_names())})")


def native_input_size(arch: str) -> int:
    """The square input size a torchvision model is built for (its default weights' crop size).

    Reading the weights enum's transform needs no download; it is the same number the pretrained
    preprocessing uses, and ViT/Swin refuse any other size.
    """
    try:
        crop = models.get_model_weights(arch).DEFAULT.transforms().crop_size
        return int(crop[0])
    except Exception:  # models without a weights entry
        return DEFAULT_TORCHVISION_SIZE


def build_model(arch: str, num_classes: int, in_channels: int, width: int = 16,
                device: torch.device | None = None) -> nn.Module:
    """A freshly initialised classifier with ``num_classes`` outputs (no pretrained weights: runs stay offline).

    The size is checked first (:func:`check_model_size`), so a damaged checkpoint or a slip in ``width`` or
    ``num_classes`` is one error line instead of an allocation that fails minutes later."""
    check_model_size(arch, num_classes, in_channels, width, device)
    return _build(arch, num_classes, in_channels, width)


def check_model_size(arch: str, num_classes: int, in_channels: int, width: int = 16,
                     device: torch.device | None = None) -> int:
    """The parameter count of ``build_model(arch, num_classes, in_channels, width)``, counted on the meta device
    (shapes only, nothing allocated); ``ClassifierError`` naming the fields when the counts are out of range,
    the model has more than ``MAX_PARAMETERS`` parameters, or its float32 weights exceed the memory limit of
    ``device`` (``compute.max_model_bytes``)."""
    fields = f"arch={arch!r}, num_classes={num_classes!r}" + (f", width={width!r}" if is_small_arch(arch) else "")
    try:
        check_count("num_classes", num_classes, MAX_CLASSES)
        check_count("in_channels", in_channels, 4)
        if is_small_arch(arch):
            check_count("width", width, MAX_WIDTH)
    except ValueError as exc:
        raise ClassifierError(f"classifier {fields}: {exc}") from None
    with torch.device("meta"):
        parameters = sum(p.numel() for p in _build(arch, num_classes, in_channels, width).parameters())
    if parameters > MAX_PARAMETERS:
        raise ClassifierError(f"classifier {fields}: ~{parameters:.3g} parameters, more than imgsynth builds "
                              f"({MAX_PARAMETERS:.0e})")
    limit, source = max_model_bytes(device)
    if 4 * parameters > limit:
        raise ClassifierError(f"classifier {fields}: ~{parameters:.3g} parameters need ~{4 * parameters / 1e9:.3g} "
                              f"GB, over the {limit / 1e9:.3g} GB limit ({source}; set {MAX_MODEL_GB_ENV} to change it)")
    return parameters


def _build(arch: str, num_classes: int, in_channels: int, width: int) -> nn.Module:
    check_arch(arch)
    if is_small_arch(arch):
        return SmallInputResNet(num_classes, in_channels=in_channels, width=width)
    if in_channels != 3:
        raise ClassifierError(f"torchvision model {arch!r} takes 3-channel input, got {in_channels}")
    kwargs: dict[str, Any] = {"weights": None, "num_classes": num_classes}
    if arch in ("googlenet", "inception_v3"):
        kwargs.update(aux_logits=False, init_weights=True)
    return models.get_model(arch, **kwargs)


def classification_head(model: nn.Module) -> nn.Linear:
    """The final ``nn.Linear`` of a classifier: its input is the penultimate representation."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ClassifierError(f"{type(model).__name__} has no nn.Linear classification head to take features from")
    return linears[-1]


def logits_of(output: Any) -> torch.Tensor:
    """Logits from a model output (Inception and GoogLeNet return named tuples in training mode)."""
    return output if isinstance(output, torch.Tensor) else output.logits
