"""The on-disk feature cache: ``cached_features(image_set, extractor)`` stores features as safetensors files
in ``$IMGSYNTH_CACHE/features`` (default ``~/.cache/imgsynth/features``), keyed by the set's id and row
order, the extractor id (which includes a hash of the weights) and its preprocessing; writes are atomic.

A plain image folder or a Hugging Face dataset (``imgsynth.metrics.metric_sources``) is cached the same way:
its ``id`` is a hash of its images' content (every file's sha256 and label, in order), so renaming or
moving the folder keeps its entry and changing one byte of one image makes a new one.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from imgsynth.imageset import ImageSet
from imgsynth.metrics.extractors.base import FeatureExtractor, create_extractor
from imgsynth.atomic_files import atomic_path

if TYPE_CHECKING:
    from imgsynth.metrics.metric_sources import Images

CACHE_FORMAT = 1


def feature_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The features folder: ``cache_dir`` if given, else ``$IMGSYNTH_CACHE/features``, else ~/.cache/imgsynth/features."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    root = os.environ.get("IMGSYNTH_CACHE")
    return (Path(root).expanduser() if root else Path("~/.cache/imgsynth").expanduser()) / "features"


def feature_cache_key(image_set: ImageSet | Images, extractor: FeatureExtractor) -> str:
    """Hash of (set id, row order, extractor id, preprocessing): equal keys mean equal feature matrices."""
    order = hashlib.sha256("".join(f"{r.sha256}\t{r.label}\n" for r in image_set.records).encode()).hexdigest()
    payload = json.dumps({"format": CACHE_FORMAT, "set": image_set.id, "order": order, "extractor": extractor.id,
                          "preprocessing": extractor.preprocessing}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def cached_features(image_set: ImageSet | Images, extractor: FeatureExtractor | str, cache_dir: str | os.PathLike | None = None,
                    batch_size: int = 64, device: str | torch.device | None = None) -> torch.Tensor:
    """Features of ``image_set`` (float32 CPU, one row per image in set order), computed once and cached.

    A cached file is used only if its recorded set id, extractor id, preprocessing and row count all
    match; anything else (a stale or truncated file) is recomputed and replaced atomically.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open, save_file

    extractor = create_extractor(extractor, device)
    folder = feature_cache_dir(cache_dir)
    key = feature_cache_key(image_set, extractor)
    path = folder / f"{key}.safetensors"
    expected = {"set_id": image_set.id, "extractor_id": extractor.id, "preprocessing": extractor.preprocessing,
                "n": str(len(image_set))}
    if path.is_file():
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
            if all(metadata.get(k) == v for k, v in expected.items()):
                features = load_file(str(path))["features"]
                if features.shape[0] == len(image_set):
                    check_cached(path, features, extractor, image_set)
                    # The key is the recorded hashes: the files must still be those bytes to use it.
                    image_set.check_files()
                    return features
        except (SafetensorError, OSError, KeyError):
            pass  # unreadable cache entry: recompute below
    features = extractor.extract(image_set, batch_size=batch_size).contiguous()
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file({"features": features}, str(tmp), metadata=expected)
    return features


def check_cached(path: Path, features: torch.Tensor, extractor: FeatureExtractor, image_set: ImageSet | Images) -> None:
    """Refuse, naming the cache file, an entry whose metadata matches but whose features cannot be the
    extractor's: not a float32 matrix, not finite, or of another width than the extractor gives (checked
    on the set's first image, so a tampered entry never reaches a metric as a number)."""
    def refuse(problem: str) -> ValueError:
        return ValueError(f"{path}: feature cache entry {problem}; it is not what {extractor.id} computes — "
                          "delete it and it is recomputed")

    if features.dim() != 2 or features.dtype != torch.float32:
        raise refuse(f"holds a {features.dtype} tensor of shape {list(features.shape)}, not a float32 matrix")
    if not bool(torch.isfinite(features).all()):
        raise refuse("holds NaN or infinite values")
    with torch.inference_mode():  # one image through the network: the width, without extracting the set
        width = extractor.forward(extractor.preprocess(image_set.load_image(0))[None].to(extractor.device)).shape[1]
    if features.shape[1] != width:
        raise refuse(f"holds {features.shape[1]}-dimensional features, the extractor gives {width}")
