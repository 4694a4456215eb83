"""Feature extractors by name: the registry (imports no torch, so recipe checks can list the names).

A name is ``prefix`` or ``prefix:argument``; ``EXTRACTORS`` maps the prefix to a constructor called as
``cls(argument, device=...)`` (as timm/open_clip do). Built-ins are ``"module:attribute"`` strings, each
extractor in its own module, imported when first built. A new extractor is one file plus one line::

    EXTRACTORS.register("myfeat", "mypkg.myfeat:MyExtractor")     # or @register_extractor("myfeat") on the class

It also names the resize conventions an extractor may be asked for (``RESIZE_MODES``), so the CLI and the
recipe check can list and check them without torch. How each resizes is ``preprocessing.py``; which ones an
extractor offers is its class's ``resize_modes``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from imgsynth.registry import Registry

if TYPE_CHECKING:
    from imgsynth.metrics.extractors.base import FeatureExtractor

ExtractorFactory = Callable[..., "FeatureExtractor"]

# How images are resized to a network's input size, by the tool whose FID numbers each reproduces:
# clean-fid's PIL bicubic in float (the default), pytorch-fid's bilinear tensor resize, torch-fidelity's
# TensorFlow-1 bilinear resize (imgsynth.metrics.extractors.preprocessing, one function each).
RESIZE_MODES = ("clean", "pytorch-fid", "torch-fidelity")
DEFAULT_RESIZE_MODE = "clean"

EXTRACTORS: Registry[ExtractorFactory] = Registry("feature extractor")
# The order recipe messages list them in.
EXTRACTORS.register("domain", "imgsynth.metrics.extractors.domain:DomainExtractor")
EXTRACTORS.register("inception", "imgsynth.metrics.extractors.inception:InceptionExtractor")
EXTRACTORS.register("clip", "imgsynth.metrics.extractors.clip:ClipExtractor")
EXTRACTORS.register("dinov2", "imgsynth.metrics.extractors.dinov2:Dinov2Extractor")
EXTRACTORS.register("pixels", "imgsynth.metrics.extractors.pixels:PixelExtractor")


def register_extractor(prefix: str) -> Callable[[ExtractorFactory], ExtractorFactory]:
    """Class decorator: make ``prefix[:argument]`` names build this extractor as ``cls(argument, device=...)``.

    A prefix that is taken is refused, naming both (``EXTRACTORS.register(..., replace=True)`` means it).
    """
    return EXTRACTORS.register(prefix)


def check_resize_mode(mode: str, where: str = "resize mode") -> str:
    """``mode`` when it is one of ``RESIZE_MODES``, else a ``ValueError`` naming ``where`` and the choices."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"{where}: unknown resize mode {mode!r}; choose one of {', '.join(RESIZE_MODES)}")
    return mode


def offered_resize_modes(prefix: str) -> tuple[str, ...]:
    """The resize modes the extractor registered as ``prefix`` can be built with (its ``resize_modes``; none
    for an extractor with a preprocessing of its own). Imports the extractor's module (and so torch)."""
    return tuple(getattr(EXTRACTORS[prefix], "resize_modes", ()))
