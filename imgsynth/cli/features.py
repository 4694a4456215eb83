"""`imgsynth features SET --features NAME [--backend local|ray]`: fill the feature cache, on a Ray cluster if asked."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from imgsynth.cli.flags import resize_mode_option
from imgsynth.compute import check_device


def features_command(
    image_set: Path = typer.Argument(..., help="ImageSet whose features to compute."),
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
    from imgsynth.outputs import FEATURE_CACHE, claim_output

    if cache_dir is not None:
        claim_output(cache_dir, FEATURE_CACHE, [image_set])
    extractor: object = features
    if resize_mode is not None:  # built here (a Ray backend ships the instance); a name is built by each worker
        from imgsynth.metrics.features import create_extractor

        extractor = create_extractor(features, device, resize_mode=resize_mode)
    path = warm_feature_cache(image_set, extractor, backend=backend, cache_dir=cache_dir, workers=workers,
                              address=address, batch_size=batch_size, device=device, progress=True)
    typer.echo(f"features of {image_set} [{features}] cached in {path}")


def register(app: typer.Typer) -> None:
    app.command("features")(features_command)
