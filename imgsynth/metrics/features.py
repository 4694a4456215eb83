"""Feature extractors by name, and an on-disk feature cache: the public face of ``imgsynth.metrics.extractors``
(one module per extractor, the name registry, the base class) and ``imgsynth.metrics.feature_cache``.

Names (``EXTRACTORS`` maps the part before the first ``:`` to a constructor, as timm/open_clip do):

* ``inception`` or ``inception:<weights.pth>`` — the FID Inception-v3 (torch-fidelity's
  ``FeatureExtractorInceptionV3``, the TensorFlow FID weights that torchmetrics also uses), 2048-d pool
  features. Without a path the weights are looked for where torch-fidelity/torchmetrics cache them.
* ``clip:<model>:<pretrained tag or checkpoint file>`` or ``clip:<folder>`` — open_clip; a folder holds
  ``open_clip_config.json`` and the weights (open_clip's ``local-dir:`` layout). Unit-norm image
  embeddings; ``encode_text`` gives unit-norm text embeddings.
* ``dinov2:<folder or hub name>`` — transformers ``AutoModel`` (a ``save_pretrained`` folder, or a hub
  name already in the local Hugging Face cache); the CLS token after the final layer norm.
* ``domain:<checkpoint>`` — an imgsynth classifier checkpoint, penultimate layer (``imgsynth.classifier``).
* ``pixels`` — the raw pixels at the set's own size, no model.

A new extractor is one module plus one line in ``imgsynth.metrics.extractors.registry``. What an
extractor supplies to the metrics (``FeatureExtractor.supplies``: features; CLIP adds a text encoder)
decides which metrics ``evaluate`` computes with it.

Nothing is ever downloaded: weights come from a local path or the user's cache, and a missing file is
a ``FileNotFoundError`` naming exactly what to fetch and where to put it. Nothing is ever unpickled with
code-running pickle either (``imgsynth.safe_loading``): Inception weights are read by imgsynth itself with
``torch.load(weights_only=True)`` after their sha256 is checked against the one a hub-style file name
claims, and a refused file is an ``UnsafeFileError`` naming it.

Resize convention (clean-fid, Parmar et al. 2022, showed the choice moves FID a lot): images are
converted to RGB and resized with PIL's bicubic filter, which is properly antialiased, never with an
unfiltered tensor ``interpolate``. Inception gets by default exactly clean-fid's network input (PIL bicubic
of each channel in float, not rounded: resizing the uint8 image instead rounds and clips after each of
PIL's two passes and moves edge pixels by many grey levels); ``resize_mode`` "pytorch-fid" or
"torch-fidelity" gives those tools' own resize instead, to reproduce their numbers. CLIP resizes the shorter side to the model's size and centre-crops, as
open_clip's own eval transform does with PIL input; DINOv2 gets a 224 × 224 resize of the whole image
(no crop, so the border is evaluated too). ``FeatureExtractor.preprocessing`` describes this and is part
of the cache key.

Cache: ``cached_features(image_set, extractor)`` stores features as safetensors files in
``$IMGSYNTH_CACHE/features`` (default ``~/.cache/imgsynth/features``), keyed by the set's id and row
order, the extractor id (which includes a hash of the weights) and its preprocessing; writes are atomic.
"""

from imgsynth.metrics.extractors.base import FeatureExtractor, create_extractor, default_device
from imgsynth.metrics.extractors.clip import ClipExtractor
from imgsynth.metrics.extractors.digests import file_digest, folder_digest
from imgsynth.metrics.extractors.dinov2 import IMAGENET_MEAN, IMAGENET_STD, Dinov2Extractor
from imgsynth.metrics.extractors.domain import DomainExtractor
from imgsynth.metrics.extractors.inception import (INCEPTION_FILE, INCEPTION_URL, InceptionExtractor,
                                                   default_inception_weights, inception_network)
from imgsynth.metrics.extractors.pixels import PixelExtractor
from imgsynth.metrics.extractors.preprocessing import (RESAMPLE, clean_resize, resize_shorter_and_crop,
                                                       to_normalized_tensor, to_uint8_tensor)
from imgsynth.metrics.extractors.registry import EXTRACTORS, register_extractor
from imgsynth.metrics.feature_cache import CACHE_FORMAT, cached_features, feature_cache_dir, feature_cache_key

__all__ = [
    "CACHE_FORMAT", "EXTRACTORS", "ClipExtractor", "Dinov2Extractor", "DomainExtractor", "FeatureExtractor",
    "IMAGENET_MEAN", "IMAGENET_STD", "INCEPTION_FILE", "INCEPTION_URL", "InceptionExtractor", "PixelExtractor",
    "RESAMPLE", "cached_features", "clean_resize", "create_extractor", "default_device", "default_inception_weights",
    "feature_cache_dir", "feature_cache_key", "file_digest", "folder_digest", "inception_network",
    "register_extractor", "resize_shorter_and_crop", "to_normalized_tensor", "to_uint8_tensor",
]
