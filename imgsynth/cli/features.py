"""`imgsynth features SET --features NAME [--backend local|ray]`: fill the feature cache, on a Ray cluster if asked."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from imgsynth.cli.flags import resize_mode_option
from imgsynth.compute import check_device


def features_command(
    image_set: str = typer.Argument(..., help="ImageSet whose features to compute (with --backend local also a "
                                    "folder of images or hf:<dataset>)."),
    features: str = typer.Option(..., "--features", help="Feature extractor name, as for `imgsynth metrics`."),
    backend: str = typer.Option("local", "--backend", help="local, or ray (needs `pip install 'imgsynth\\[ray]'`)."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster: auto, ray://host:port "
                                          "(default: the running session, else a local one)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Ray actors, one extractor each "
                                          "(default: one per CPU, or per GPU on CUDA)."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Feature cache folder (default "
                                             "$IMGSYNTH_CACHE/features or ~/.cache/imgsynth/features)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda … (default: cuda if available)."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Images per batch."),
    resize_mode: Optional[str] = resize_mode_option(),
) -> None:
    """Compute a set's features into the cache that `imgsynth metrics` reads, so it need not extract them."""
    check_device(device)  # before the set or the extractor loads
    from imgsynth.distributed.features import warm_feature_cache
    from imgsynth.outputs import FEATURE_CACHE, IMAGESET, claim_output, folder_kind

    inputs = [] if image_set.startswith("hf:") else [image_set]
    if cache_dir is not None:
        claim_output(cache_dir, FEATURE_CACHE, inputs)
    extractor: object = features
    if resize_mode is not None:  # built here (a Ray backend ships the instance); a name is built by each worker
        from imgsynth.metrics.features import create_extractor

        extractor = create_extractor(features, device, resize_mode=resize_mode)
    if image_set.startswith("hf:") or folder_kind(image_set) != IMAGESET:
        path = _cache_other_source(image_set, extractor, backend, cache_dir, batch_size, device)
        typer.echo(f"features of {image_set} [{features}] cached in {path}")
        return
    path = warm_feature_cache(image_set, extractor, backend=backend, cache_dir=cache_dir, workers=workers,
                              address=address, batch_size=batch_size, device=device, progress=True)
    typer.echo(f"features of {image_set} [{features}] cached in {path}")


def _cache_other_source(source: str, features: Any, backend: str, cache_dir: Path | None, batch_size: int,
                        device: str | None) -> Path:
    """A plain image folder or an hf: dataset, cached by content in this process (what `imgsynth metrics` reads)."""
    from imgsynth.metrics.features import cached_features, create_extractor, feature_cache_dir, feature_cache_key
    from imgsynth.metrics.metric_sources import open_metric_source
    from imgsynth.metrics.statistics_files import FeatureStatistics

    if backend != "local":
        raise ValueError(f"{source}: --backend {backend} takes ImageSets; a folder of images or an hf: dataset is "
                         "cached with --backend local")
    side = open_metric_source(source)
    if isinstance(side, FeatureStatistics):
        raise ValueError(f"{source}: a statistics file, not images")
    extractor = create_extractor(features, device)
    cached_features(side, extractor, cache_dir, batch_size)
    return feature_cache_dir(cache_dir) / f"{feature_cache_key(side, extractor)}.safetensors"


def register(app: typer.Typer) -> None:
    app.command("features")(features_command)
