"""`imgsynth metrics REFERENCE CANDIDATE --features NAME`: evaluate anything against a reference, print (and save)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from imgsynth.atomic_files import atomic_path
from imgsynth.cli.flags import resize_mode_option
from imgsynth.compute import check_device

if TYPE_CHECKING:
    import pandas as pd

# torch and the metrics engine are imported inside the command so `imgsynth --help` stays quick.


FORMATS = ("table", "csv", "json")
# The first line of a JSON results file: what lets a rerun replace a file this command wrote (and no other).
JSON_FIRST_LINE = '{"format": "imgsynth-metrics",'


def frame_text(frame: "pd.DataFrame", form: str) -> str:
    """The rows as CSV (the ``--out`` file's columns) or JSON (``{"format": ..., "rows": [{column: value}]}``,
    missing intervals as null)."""
    if form == "csv":
        return frame.to_csv(index=False, float_format="%.10g")
    import json
    import math

    records = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
               for row in frame.astype(object).to_dict(orient="records")]
    return JSON_FIRST_LINE + "\n" + f' "rows": {json.dumps(records, ensure_ascii=False)}}}\n'


def metrics_command(
    reference: str = typer.Argument(..., help="Reference: an ImageSet, a folder of images (class sub-folders are "
                                    "labels), hf:<dataset folder or parquet> or a statistics file "
                                    "(npz: `imgsynth stats`, pytorch-fid, clean-fid)."),
    candidate: str = typer.Argument(..., help="What to evaluate (e.g. generated samples): any of the same."),
    features: str = typer.Option(..., "--features", help="Feature extractor: inception, clip:<model>:<weights>, "
                                 "clip:<folder>, dinov2:<folder or cached hub name>, domain:<classifier checkpoint>."),
    out: Optional[Path] = typer.Option(None, "--out", help="File to write as well as printing the table: CSV "
                                       "(columns metric, class, value, ci_low, ci_high, n, extractor), or JSON "
                                       "with --format json."),
    output_format: str = typer.Option("table", "--format", help="What is printed: table, csv or json (--out is "
                                      "CSV unless json)."),
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
    """Compare CANDIDATE with REFERENCE in a feature space: FID/KID/PRDC/diversity/Vendi (+ CLIP score, CMMD).

    Either side may be an ImageSet, a plain folder of images, an hf: dataset or a statistics file; a metric
    that what was given cannot serve is skipped with a note saying what is missing.
    """
    from imgsynth.imageset import ImageSet
    from imgsynth.metrics.evaluate import FRAME_COLUMNS, EvaluationNote, evaluate_sources, rows_to_frame
    from imgsynth.metrics.features import create_extractor
    from imgsynth.metrics.metric_sources import open_metric_source, source_name
    from imgsynth.metrics.registry import METRICS, TRAIN_FEATURES
    from imgsynth.outputs import FEATURE_CACHE, FILE, claim_output

    if output_format not in FORMATS:
        raise ValueError(f"--format {output_format!r}: choose one of {', '.join(FORMATS)}")
    check_device(device)  # before the sets, features or models load
    inputs = [side for side in (reference, candidate) if not side.startswith("hf:")] + [train]
    file_format = "json" if output_format == "json" else "csv"
    if out is not None:
        claim_output(out, FILE, [*inputs, cache_dir],
                     header=JSON_FIRST_LINE if file_format == "json" else ",".join(FRAME_COLUMNS))
    if cache_dir is not None:
        claim_output(cache_dir, FEATURE_CACHE, inputs)
    reference_side, candidate_side = open_metric_source(reference), open_metric_source(candidate)
    extractor = create_extractor(features, device, resize_mode=resize_mode) if resize_mode else features
    train_set = ImageSet.open(train) if train is not None else None
    chosen = [m.strip() for m in metrics.split(",") if m.strip()] if metrics else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", EvaluationNote)
        rows = evaluate_sources(candidate_side, reference_side, extractor, per_class=per_class, bootstrap=bootstrap,
                                seed=seed, metrics=chosen, cache_dir=str(cache_dir) if cache_dir else None,
                                batch_size=batch_size, device=device, resize=resize, train_set=train_set)
    frame = rows_to_frame(rows)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out) as tmp:
            if file_format == "csv":
                frame.to_csv(tmp, index=False, float_format="%.10g")
            else:
                tmp.write_text(frame_text(frame, "json"), encoding="utf-8")
    title = f"{source_name(candidate_side)} vs {source_name(reference_side)}  [{features}]"
    if output_format == "table":
        shown = frame.drop(columns=["extractor"] + ([] if bootstrap else ["ci_low", "ci_high"]))
        typer.echo(title)
        typer.echo(shown.to_string(index=False, float_format=lambda v: f"{v:.6g}"))
        if train_set is not None:  # what the training-set metrics mean, with the memorisation test's threshold
            for name in dict.fromkeys(frame["metric"]):
                if name in METRICS and TRAIN_FEATURES in METRICS[name].requires:
                    typer.echo(f"  {name}: {METRICS[name].description}")
    else:
        typer.echo(title, err=True)
        typer.echo(frame_text(frame, output_format), nl=False)
    for warning in caught:
        typer.echo(f"note: {warning.message}", err=True)
    if out is not None:
        typer.echo(f"wrote {out}", err=output_format != "table")


def register(app: typer.Typer) -> None:
    app.command("metrics")(metrics_command)
