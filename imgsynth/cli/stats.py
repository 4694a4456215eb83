"""`imgsynth stats SOURCE OUT.npz --features NAME [--with-features]`: reference statistics others can use.

Writes ``mu`` and ``sigma`` (float64, the covariance with divisor n − 1) of SOURCE's features, optionally the
features themselves (for KID and precision/recall), and a JSON header saying what made them
(``imgsynth.metrics.statistics_files``). pytorch-fid and clean-fid read ``mu`` and ``sigma`` of it as they
read their own files; ``imgsynth metrics`` reads it on either side.
"""

from __future__ import annotations

from pathlib import Path

import typer

from imgsynth.cli.flags import resize_mode_option
from imgsynth.compute import check_device


def stats_command(
    source: str = typer.Argument(..., help="An ImageSet, a folder of images or hf:<dataset folder or parquet>."),
    out: Path = typer.Argument(..., help="The statistics file to write (name ending in npz)."),
    features: str = typer.Option(..., "--features", help="Feature extractor name, as for `imgsynth metrics`."),
    with_features: bool = typer.Option(False, "--with-features", help="Also store the features (float32), so "
                                       "KID and precision/recall can be computed against the file."),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Feature cache folder (default "
                                             "$IMGSYNTH_CACHE/features or ~/.cache/imgsynth/features)."),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda … (default: cuda if available)."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Images per feature-extraction batch."),
    resize_mode: str | None = resize_mode_option(),
) -> None:
    """Write the feature statistics (mu, sigma) of SOURCE to OUT.npz, with a header naming the extractor."""
    check_device(device)  # before the source or the extractor loads
    from imgsynth.metrics.distances import feature_statistics
    from imgsynth.metrics.features import cached_features, create_extractor
    from imgsynth.metrics.metric_sources import open_metric_source, source_name
    from imgsynth.metrics.statistics_files import (
        FeatureStatistics,
        statistics_header,
        write_statistics,
        written_by_stats,
    )
    from imgsynth.outputs import FEATURE_CACHE, FILE, claim_output

    if out.suffix.lower() != ".npz":
        raise ValueError(f"{out}: a statistics file is named *.npz (pytorch-fid and clean-fid read it by that suffix)")
    inputs = [] if source.startswith("hf:") else [source]
    claim_output(out, FILE, [*inputs, cache_dir], recognise=written_by_stats)  # a rerun replaces its own file
    if cache_dir is not None:
        claim_output(cache_dir, FEATURE_CACHE, inputs)
    side = open_metric_source(source)
    if isinstance(side, FeatureStatistics):
        raise ValueError(f"{source}: already a statistics file; give the images it should describe")
    extractor = create_extractor(features, device, resize_mode=resize_mode)
    matrix = cached_features(side, extractor, str(cache_dir) if cache_dir else None, batch_size)
    mu, sigma = feature_statistics(matrix, source_name(side))
    size = side.image_size
    mode = side.manifest.get("image_mode") if hasattr(side, "manifest") else side.image_mode
    header = statistics_header(extractor, n=matrix.shape[0], dims=matrix.shape[1], source=side.id,
                               image_size=tuple(size) if size else None, image_mode=mode)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_statistics(out, mu.cpu().numpy(), sigma.cpu().numpy(), header,
                     matrix.numpy() if with_features else None)
    typer.echo(f"{source_name(side)}: {matrix.shape[0]} images, {matrix.shape[1]}-d [{extractor.name}, resize "
               f"{header['resize_convention']}]")
    typer.echo(f"wrote {out}")


def register(app: typer.Typer) -> None:
    app.command("stats")(stats_command)
