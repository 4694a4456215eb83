"""`imgsynth metrics REFERENCE CANDIDATE --features NAME`: evaluate a set against a reference, print and save."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

import typer
from imgsynth.atomic_files import atomic_path
from imgsynth.cli.flags import resize_mode_option
from imgsynth.compute import check_device

# torch and the metrics engine are imported inside the command so `imgsynth --help` stays quick.


def metrics_command(
    reference: Path = typer.Argument(..., help="Reference ImageSet (e.g. the real test set)."),
    candidate: Path = typer.Argument(..., help="ImageSet to evaluate (e.g. generated samples)."),
    features: str = typer.Option(..., "--features", help="Feature extractor: inception, clip:<model>:<weights>, "
                                 "clip:<folder>, dinov2:<folder or cached hub name>, domain:<classifier checkpoint>."),
    out: Path = typer.Option(..., "--out", help="CSV file to write (columns metric, class, value, ci_low, "
                             "ci_high, n, extractor)."),
    per_class: bool = typer.Option(False, "--per-class", help="Also compute every metric per class."),
    bootstrap: int = typer.Option(0, "--bootstrap", min=0, help="Bootstrap replicates for confidence intervals "
                                  "(0: none)."),
    seed: int = typer.Option(0, "--seed", help="Seed of KID subsets and bootstrap resampling."),
    metrics: Optional[str] = typer.Option(None, "--metrics", help="Comma-separated subset, e.g. fid,kid,precision "
                                          "(default: all that apply to the extractor)."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Feature cache folder (default "
                                             "$IMGSYNTH_CACHE/features or ~/.cache/imgsynth/features)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 … (default: cuda if available)."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Images per feature-extraction batch."),
    resize: bool = typer.Option(False, "--resize", help="When the sets' image size or mode differ, convert "
                                "each candidate image to the reference's mode and size (PIL convert, then PIL "
                                "bicubic resize) instead of refusing."),
    resize_mode: Optional[str] = resize_mode_option(),
    train: Optional[Path] = typer.Option(None, "--train", help="The ImageSet CANDIDATE's generator was trained "
                                         "on: adds memorisation_rate, authenticity, knn_entropy and "
                                         "train_knn_entropy."),
) -> None:
    """Compare CANDIDATE with REFERENCE in a feature space: FID/KID/PRDC/diversity/Vendi (+ CLIP score, CMMD)."""
    from imgsynth.imageset import ImageSet
    from imgsynth.metrics.evaluate import FRAME_COLUMNS, EvaluationNote, evaluate, rows_to_frame
    from imgsynth.metrics.features import create_extractor
    from imgsynth.metrics.registry import TRAIN_FEATURES
    from imgsynth.outputs import FEATURE_CACHE, FILE, claim_output

    check_device(device)  # before the sets, features or models load
    claim_output(out, FILE, [reference, candidate, cache_dir, train], header=",".join(FRAME_COLUMNS))
    if cache_dir is not None:
        claim_output(cache_dir, FEATURE_CACHE, [reference, candidate, train])
    reference_set, candidate_set = ImageSet.open(reference), ImageSet.open(candidate)
    extractor = create_extractor(features, device, resize_mode=resize_mode) if resize_mode else features
    train_set = ImageSet.open(train) if train is not None else None
    chosen = [m.strip() for m in metrics.split(",") if m.strip()] if metrics else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", EvaluationNote)
        rows = evaluate(candidate_set, reference_set, extractor, per_class=per_class, bootstrap=bootstrap, seed=seed,
                        metrics=chosen, cache_dir=str(cache_dir) if cache_dir else None, batch_size=batch_size,
                        device=device, resize=resize, train_set=train_set)
    frame = rows_to_frame(rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.10g")
    shown = frame.drop(columns=["extractor"] + ([] if bootstrap else ["ci_low", "ci_high"]))
    typer.echo(f"{candidate_set.root} vs {reference_set.root}  [{features}]")
    typer.echo(shown.to_string(index=False, float_format=lambda v: f"{v:.6g}"))
    if train_set is not None:  # what the training-set metrics mean, with the memorisation test's threshold
        from imgsynth.metrics.registry import METRICS

        for name in dict.fromkeys(frame["metric"]):
            if name in METRICS and TRAIN_FEATURES in METRICS[name].requires:
                typer.echo(f"  {name}: {METRICS[name].description}")
    for warning in caught:
        typer.echo(f"note: {warning.message}", err=True)
    typer.echo(f"wrote {out}")


def register(app: typer.Typer) -> None:
    app.command("metrics")(metrics_command)
