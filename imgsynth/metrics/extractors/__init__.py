"""Feature extractors, one module each (``inception``, ``clip``, ``dinov2``, ``domain``, ``pixels``), the
base class (``base``), the shared image preprocessing (``preprocessing``), weight digests (``digests``)
and the name registry (``registry``). Importing this package imports no torch; ``imgsynth.metrics.features``
is the public face that gathers the names.
"""

from imgsynth.metrics.extractors.registry import EXTRACTORS, register_extractor

__all__ = ["EXTRACTORS", "register_extractor"]
