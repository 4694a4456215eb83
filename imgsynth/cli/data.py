"""`imgsynth data ...` and `imgsynth lineage`: import real data, inspect, verify, export and trace ImageSets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from imgsynth.exports import EXPORT_FORMATS, export
from imgsynth.imageset import ImageSet, verify
from imgsynth.outputs import EXPORT, IMPORTED, claim_output
from imgsynth.provenance import lineage
from imgsynth.sources import import_source

app = typer.Typer(no_args_is_help=True)


@app.command("import")
def import_command(
    source: str = typer.Argument(..., help="Source spec: 'digits' (embedded), folder:PATH, hf:PATH or "
                                           "torchvision:NAME:ROOT."),
    out: Path = typer.Argument(..., help="Folder that receives train/ and test/ ImageSets."),
    size: int = typer.Option(16, help="Square image size in pixels."),
    mode: str = typer.Option("L", help="PIL mode: L (grayscale) or RGB."),
    test_fraction: float = typer.Option(0.2, help="Fraction of each class held out as the test set."),
    seed: int = typer.Option(0, help="Seed of the stratified split."),
    license: str = typer.Option(None, help="License of the source, when it does not record one."),
) -> None:
    """Import a real source as OUT/train and OUT/test ImageSets."""
    name, _, location = source.partition(":")
    claim_output(out, IMPORTED, [location.rpartition(":")[2] if name == "torchvision" else location or None])
    annotations = _marked_images(Path(location)) if name == "folder" and location else None
    train, test = import_source(source, out, size=size, mode=mode, test_fraction=test_fraction,
                                seed=seed, license=license, annotations=annotations)
    typer.echo(f"train: {train.root}  ({len(train)} images, id {train.id[:12]})")
    typer.echo(f"test:  {test.root}  ({len(test)} images, id {test.id[:12]})")


def _marked_images(folder: Path) -> dict[str, object] | None:
    """How many images of a source folder carry synthetic-content markers (``imgsynth audit``'s, no reference
    sets): a note when any does, and the counts the imported sets' manifests record."""
    import warnings

    from imgsynth.audit import audit
    from imgsynth.notes import Note

    if not folder.is_dir():
        return None  # the source reader names the problem
    rows = [r for r in audit(folder).rows if r.class_name]  # files in class folders: what a folder import reads
    marked = [r for r in rows if r.synthetic]
    record = {"images": len(rows), "marked": len(marked),
              "c2pa": sum(bool(r.c2pa) for r in marked), "iptc": sum(bool(r.iptc_source_type) for r in marked),
              "watermark": sum(bool(r.watermark) for r in marked)}
    if marked:
        warnings.warn(f"{folder}: {len(marked)} of {len(rows)} images carry synthetic-content markers (C2PA "
                      f"{record['c2pa']}, IPTC/XMP {record['iptc']}, watermark {record['watermark']}) and are "
                      "imported as real data; `imgsynth audit` lists them", Note, stacklevel=2)
    return {"source_markers": record}


@app.command("info")
def info_command(
    path: Path = typer.Argument(..., help="An ImageSet folder."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
) -> None:
    """Show an ImageSet's manifest summary: id, kind, classes and counts, size, parents."""
    image_set = ImageSet.open(path)
    if as_json:
        typer.echo(json.dumps(image_set.manifest, indent=2))
        return
    m = image_set.manifest
    license = m.get("license")  # the schema allows an object with a name, a bare name, or nothing
    license_name = license.get("name") if isinstance(license, dict) else license
    typer.echo(f"{image_set.root}\n  id        {image_set.id}\n  kind      {image_set.kind}\n"
               f"  images    {len(image_set)}\n  size      {m.get('image_size')} {m.get('image_mode', '')}\n"
               f"  license   {license_name}")
    typer.echo(f"  classes   {len(image_set.classes)}, label index order {image_set.class_order}")
    if image_set.display_order != image_set.classes:
        typer.echo(f"  display   {', '.join(image_set.display_order)}")
    difference = image_set.imagefolder_difference()
    if difference:
        typer.echo(f"note: torchvision ImageFolder numbers this set's classes differently: {difference}", err=True)
    for index, (name, count) in enumerate(image_set.counts.items()):
        typer.echo(f"  {index:>4}  {name:>20}  {count}")
    for parent in image_set.parents:
        typer.echo(f"  parent    {parent.get('id', '')[:16]}  {parent.get('path', '')}")


@app.command("verify")
def verify_command(path: Path = typer.Argument(..., help="An ImageSet folder.")) -> None:
    """Check every image, metadata line and manifest field; list all problems, exit 1 if any."""
    report = verify(path)
    for problem in report.problems:
        typer.echo(str(problem))
    if not report.ok:
        typer.secho(f"error: {report.summary()}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    typer.echo(report.summary())


@app.command("export")
def export_command(
    path: Path = typer.Argument(..., help="An ImageSet folder."),
    out: Optional[Path] = typer.Argument(None, help="Output folder (parquet, webdataset) or file (croissant: "
                                                    "in SET or a folder above it; default SET/croissant.json)."),
    fmt: str = typer.Option(..., "--format", help=f"A registered export format: {', '.join(EXPORT_FORMATS.names())}."),
) -> None:
    """Export a set as parquet, WebDataset tar shards, a Croissant 1.1 JSON-LD description, or any other
    registered export format (imgsynth.exports.EXPORT_FORMATS)."""
    if out is not None and fmt != "croissant":  # croissant.json belongs in the set (or above): its own rule
        claim_output(out, EXPORT, [path])
    image_set = ImageSet.open(path)
    for written in export(image_set, fmt, out):
        typer.echo(str(written))


def lineage_command(
    path: Path = typer.Argument(..., help="An ImageSet folder."),
    as_json: bool = typer.Option(False, "--json", help="Print nodes, sources, warnings and problems as JSON."),
    strict: bool = typer.Option(False, help="Exit 1 when there are license warnings or unreadable parents."),
) -> None:
    """Print the chain of sets, generators and models a set came from, back to the real data."""
    graph = lineage(path)
    if as_json:
        typer.echo(json.dumps(graph.to_dict(), indent=2, default=str))
    else:
        typer.echo(graph.render())
    for problem in graph.problems:
        typer.secho(f"problem: {problem}", fg=typer.colors.RED, err=True)
    for warning in graph.warnings:
        typer.secho(f"warning: {warning}", fg=typer.colors.YELLOW, err=True)
    if strict and (graph.problems or graph.warnings):
        raise typer.Exit(1)


def register(root: typer.Typer) -> None:
    """Top-level commands that belong to this module: `imgsynth lineage`."""
    root.command("lineage")(lineage_command)
