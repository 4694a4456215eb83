"""Feature extraction of a large ImageSet on a Ray actor pool, one extractor per actor, loaded once.

The set is cut into contiguous chunks of rows whose size is a multiple of the batch size, so every
actor sees exactly the batches a single local ``extractor.extract(image_set)`` call would, and the
stitched matrix equals the local one (same rows, same order). Actors open the set from its path on a
filesystem every node sees; only the chunk bounds travel out and the feature rows travel back.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from imgsynth.distributed.backend import DEFAULT_RETRIES, dataset_of_rows, map_on_actor_pool, ray_session, require_ray
from imgsynth.compute import uses_gpu
from imgsynth.imageset import ImageSet
from imgsynth.atomic_files import atomic_path

DEFAULT_CHUNK_BATCHES = 16


class FeatureActor:
    """The Ray actor: builds the extractor once, then turns row ranges of the set into feature rows."""

    def __init__(self, extractor: Any, set_root: str, device: str | None, batch_size: int) -> None:
        from imgsynth.metrics.features import create_extractor

        self.extractor = create_extractor(extractor, device)
        self.image_set = ImageSet.open(set_root)
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {"start": [], "rows": [], "dims": [], "features": []}
        for start, stop in zip(batch["start"], batch["stop"]):
            images = [self.image_set.load_image(i) for i in range(int(start), int(stop))]
            features = self.extractor.extract(images, batch_size=self.batch_size).float().numpy()
            out["start"].append(int(start))
            out["rows"].append(features.shape[0])
            out["dims"].append(features.shape[1])
            out["features"].append(np.ascontiguousarray(features, dtype=np.float32).tobytes())
        return out


def chunk_bounds(num_rows: int, chunk_size: int) -> list[tuple[int, int]]:
    """Contiguous (start, stop) row ranges of at most ``chunk_size`` rows covering ``num_rows``."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    return [(start, min(start + chunk_size, num_rows)) for start in range(0, num_rows, chunk_size)]


def extract_features_distributed(image_set: ImageSet | str | os.PathLike, extractor: Any, *,
                                 workers: int | None = None, address: str | None = None, batch_size: int = 64,
                                 chunk_size: int | None = None, device: str | None = None,
                                 retries: int = DEFAULT_RETRIES, progress: bool = False) -> Any:
    """Features of every image of ``image_set`` (float32 CPU tensor, set order), computed on Ray.

    ``extractor`` is a registry name (``imgsynth.metrics.features.create_extractor``: ``inception``,
    ``clip:…``, ``dinov2:…``, ``domain:…``) or a picklable extractor instance. ``chunk_size`` (rounded up
    to a multiple of ``batch_size``; default 16 batches) is the unit of scheduling and of retry. The
    result equals ``create_extractor(extractor).extract(image_set, batch_size=batch_size)``.
    """
    import torch

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    image_set = image_set if isinstance(image_set, ImageSet) else ImageSet.open(image_set)
    chunk = chunk_size or DEFAULT_CHUNK_BATCHES * batch_size
    chunk = -(-chunk // batch_size) * batch_size  # whole batches, so batches match a local run's
    bounds = chunk_bounds(len(image_set), chunk)
    rows = [{"start": start, "stop": stop} for start, stop in bounds]
    gpu = uses_gpu(device)
    parts: dict[int, np.ndarray] = {}
    with ray_session(address) as ray:
        if workers is None:
            resources = ray.cluster_resources()
            workers = int(resources.get("GPU" if gpu else "CPU", 1)) or 1
        results = map_on_actor_pool(
            dataset_of_rows(rows), FeatureActor, workers=min(workers, len(rows)),
            constructor_args=(extractor, str(Path(image_set.root).absolute()), device, batch_size),
            num_gpus=1.0 if gpu else 0.0, retries=retries, progress=progress)
        for row in results:
            array = np.frombuffer(row["features"], dtype=np.float32).reshape(int(row["rows"]), int(row["dims"]))
            parts[int(row["start"])] = array
    missing = [start for start, _ in bounds if start not in parts]
    if missing:
        raise RuntimeError(f"{image_set.root}: feature chunks starting at rows {missing[:5]} never came back")
    return torch.from_numpy(np.concatenate([parts[start] for start, _ in bounds]).copy())


def warm_feature_cache(image_set: ImageSet | str | os.PathLike, extractor: Any, *, backend: str = "ray",
                       cache_dir: str | os.PathLike | None = None, workers: int | None = None,
                       address: str | None = None, batch_size: int = 64, chunk_size: int | None = None,
                       device: str | None = None, progress: bool = False) -> Path:
    """Compute a set's features (on Ray, or locally) into the metrics feature cache; returns the cache file.

    The file is the one ``imgsynth.metrics.features.cached_features`` looks up (same key, same metadata),
    so a later ``imgsynth metrics`` or ``evaluate`` run on any machine sharing the cache reads it instead
    of extracting again. A cache entry that is already valid is left as it is.
    """
    from safetensors.torch import save_file

    from imgsynth.metrics.features import cached_features, create_extractor, feature_cache_dir, feature_cache_key

    if backend not in ("local", "ray"):
        raise ValueError(f"unknown backend {backend!r}; choose local or ray")
    if backend == "ray":
        require_ray()  # before loading anything: say how to install it at once
    image_set = image_set if isinstance(image_set, ImageSet) else ImageSet.open(image_set)
    built = create_extractor(extractor, device)
    folder = feature_cache_dir(cache_dir)
    path = folder / f"{feature_cache_key(image_set, built)}.safetensors"
    if backend == "local":
        cached_features(image_set, built, cache_dir=cache_dir, batch_size=batch_size, device=device)
        return path
    if _valid_cache_entry(path, image_set, built):
        return path
    # Workers build their own copy from the name; an instance is shipped as it is.
    features = extract_features_distributed(image_set, extractor, workers=workers, address=address,
                                            batch_size=batch_size, chunk_size=chunk_size, device=device,
                                            progress=progress)
    metadata = {"set_id": image_set.id, "extractor_id": built.id, "preprocessing": built.preprocessing,
                "n": str(len(image_set))}
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file({"features": features.contiguous()}, str(tmp), metadata=metadata)
    return path


def _valid_cache_entry(path: Path, image_set: ImageSet, extractor: Any) -> bool:
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        return False
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError):
        return False
    return metadata.get("set_id") == image_set.id and metadata.get("extractor_id") == extractor.id and \
        metadata.get("n") == str(len(image_set))
