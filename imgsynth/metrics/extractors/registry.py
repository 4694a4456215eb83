"""Feature extractors by name: the registry (imports no torch, so recipe checks can list the names).

A name is ``prefix`` or ``prefix:argument``; ``EXTRACTORS`` maps the prefix to a constructor called as
``cls(argument, device=...)`` (as timm/open_clip do). Built-ins are ``"module:attribute"`` strings, each
extractor in its own module, imported when first built. A new extractor is one file plus one line::

    EXTRACTORS.register("myfeat", "mypkg.myfeat:MyExtractor")     # or @register_extractor("myfeat") on the class
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from imgsynth.registry import Registry

if TYPE_CHECKING:
    from imgsynth.metrics.extractors.base import FeatureExtractor

ExtractorFactory = Callable[..., "FeatureExtractor"]

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
