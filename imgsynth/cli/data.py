"""`imgsynth data ...`: import real data, inspect and check ImageSets."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from imgsynth.imageset import ImageSet
from imgsynth.sources import import_source

app = typer.Typer(no_args_is_help=True)


@app.command("import")
def import_command(
    source: str = typer.Argument(..., help="Source spec: 'digits' (embedded) or NAME:LOCATION."),
    out: Path = typer.Argument(..., help="Folder that receives train/ and test/ ImageSets."),
    size: int = typer.Option(16, help="Square image size in pixels."),
    mode: str = typer.Option("L", help="PIL mode: L (grayscale) or RGB."),
    test_fraction: float = typer.Option(0.2, help="Fraction of each class held out as the test set."),
    seed: int = typer.Option(0, help="Seed of the stratified split."),
    license: str = typer.Option(None, help="License of the source, when it does not record one."),
) -> None:
    """Import a real source as OUT/train and OUT/test ImageSets."""
    train, test = import_source(source, out, size=size, mode=mode, test_fraction=test_fraction,
                                seed=seed, license=license)
    typer.echo(f"train: {train.root}  ({len(train)} images, id {train.id[:12]})")
    typer.echo(f"test:  {test.root}  ({len(test)} images, id {test.id[:12]})")


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
    typer.echo(f"{image_set.root}\n  id        {image_set.id}\n  kind      {image_set.kind}\n"
               f"  images    {len(image_set)}\n  size      {m.get('image_size')} {m.get('image_mode', '')}\n"
               f"  license   {m.get('license', {}).get('name')}")
    for name, count in image_set.counts.items():
        typer.echo(f"  {name:>20}  {count}")
    for parent in image_set.parents:
        typer.echo(f"  parent    {parent.get('id', '')[:16]}  {parent.get('path', '')}")


def register(root: typer.Typer) -> None:
    """Top-level commands that belong to this module (none yet besides the `data` group)."""
