"""`imgsynth curate` (filters → curated ImageSet) and `imgsynth audit` (which images came from a generator)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

# Heavy modules (torch, open_clip) are imported inside the commands so `imgsynth --help` stays quick.


def curate_command(
    image_set: Path = typer.Argument(..., help="The ImageSet to curate (e.g. a generation's samples)."),
    out: Path = typer.Argument(..., help="Folder for the curated ImageSet."),
    dedup: Optional[float] = typer.Option(None, help="Drop near-duplicates: cosine similarity ≥ this, within a "
                                                     "class (keeps the first of each group)."),
    min_confidence: Optional[float] = typer.Option(None, help="Keep images the classifier gives their own label "
                                                              "at least this probability."),
    min_clip_score: Optional[float] = typer.Option(None, help="Keep images whose caption CLIP score (0–100) is at "
                                                              "least this."),
    clip_top_fraction: Optional[float] = typer.Option(None, help="Keep this top fraction of each class by CLIP "
                                                                 "score."),
    classifier: Optional[Path] = typer.Option(None, help="Classifier checkpoint trained on real data "
                                                         "(for --min-confidence)."),
    clip: Optional[str] = typer.Option(None, help="open_clip model for the CLIP filter (weights on disk)."),
    embedding: Optional[str] = typer.Option(None, help="Dedup space: pixels:<size>, domain:<ckpt>, clip:<name> "
                                                       "(default pixels:16)."),
    rebalance: bool = typer.Option(True, "--rebalance/--no-rebalance", help="Downsample every class to the "
                                                                             "smallest kept class."),
    seed: int = typer.Option(0, help="Seed of the rebalancing draw."),
    batch_size: int = typer.Option(256, help="Images per batch for the classifier and extractors."),
    best_of: int = typer.Option(1, "--best-of", help="Keep the best of every K candidates of a class under "
                                                     "--reward (candidates of kept image i: class positions i, "
                                                     "i + m, …, m = images per class / K); 1: no selection."),
    reward: str = typer.Option("confidence", "--reward", help="Registered reward for --best-of: confidence "
                                                              "(needs --classifier), clip (needs --clip), "
                                                              "brightness, or a plugin's."),
) -> None:
    """Filter an ImageSet into a curated one; the manifest records every drop and its reason."""
    from imgsynth.curation import curate, curation_record
    from imgsynth.outputs import IMAGESET, claim_output

    claim_output(out, IMAGESET, [image_set, classifier])
    curated = curate(image_set, out, dedup=dedup, min_confidence=min_confidence, min_clip_score=min_clip_score,
                     clip_top_fraction=clip_top_fraction, classifier=classifier, clip=clip, rebalance=rebalance,
                     seed=seed, embedding=embedding, batch_size=batch_size, best_of=best_of, reward=reward)
    record = curation_record(curated)
    typer.echo(f"{curated.root}: kept {record['kept']['total']} of {record['input']['num_images']} images "
               f"(id {curated.id[:12]})")
    for name, count in record["dropped"]["by_filter"].items():
        per_class = record["dropped"]["by_filter_and_class"][name]
        detail = ", ".join(f"{c}: {n}" for c, n in per_class.items())
        typer.echo(f"  {name:>10}  dropped {count:>5}" + (f"  ({detail})" if detail else ""))


def audit_command(
    image_set: Path = typer.Argument(..., metavar="PATH", help="What to audit: an ImageSet, or any folder of image "
                                     "files (classes are its first-level sub-folders)."),
    against: List[Path] = typer.Option([], "--against", help="Run folder or ImageSet whose generated images "
                                                             "(and lineage) are known; repeatable; optional (markers "
                                                             "need no reference)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write one CSV row per image here."),
    threshold: float = typer.Option(0.995, help="Cosine similarity from which a near-duplicate counts as a copy."),
    embedding: str = typer.Option("pixels:8", help="Space for approximate matching: pixels:<size> (perceptual "
                                                   "thumbnail), or an extractor name such as domain:<ckpt>."),
    batch_size: int = typer.Option(256, help="Images per batch when embedding."),
    strict: bool = typer.Option(False, "--strict", help="Exit with status 1 when any image is synthetic (a marker "
                                                        "or a match)."),
) -> None:
    """Report which images are synthetic, per class: by the markers they carry (C2PA, IPTC/XMP digital source
    type, invisible watermark) and, with --against, by descent from a known generator, exactly or approximately."""
    from imgsynth.audit import CSV_COLUMNS, audit
    from imgsynth.limits import check_count
    from imgsynth.outputs import FILE, claim_output

    check_count("--batch-size", batch_size, 1 << 16)
    if out is not None:
        claim_output(out, FILE, [image_set, *against], header=",".join(CSV_COLUMNS))
    report = audit(image_set, against, threshold=threshold, embedding=embedding, batch_size=batch_size)
    typer.echo(report.summary())
    if out is not None:
        typer.echo(f"\nper-image CSV: {report.write_csv(out)}")
    if strict and any(row.synthetic for row in report.rows):
        typer.echo(f"error: {sum(r.synthetic for r in report.rows)} synthetic image(s) found (--strict)", err=True)
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("curate")(curate_command)
    app.command("audit")(audit_command)
