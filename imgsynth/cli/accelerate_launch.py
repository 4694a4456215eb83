"""Multi-GPU generation on one machine: ``accelerate launch -m imgsynth.cli.accelerate_launch``.

    accelerate launch --num_processes 4 -m imgsynth.cli.accelerate_launch MODEL OUT --per-class 1000

Each process loads MODEL (a class-conditional model dir or a text-to-image pipeline) on its own device,
writes its share of the job's shards (see :mod:`imgsynth.distributed.ranks`), and the main process
finalizes the set after all are done. The set is byte-identical to ``imgsynth generate MODEL OUT`` with
the same settings (same id); an interrupted launch resumes when started again, with any process count.
On a machine without GPUs, ``torchrun --nproc_per_node N -m imgsynth.cli.accelerate_launch …``
(or ``accelerate launch --multi_gpu``) runs N CPU processes over gloo; ``accelerate launch --cpu`` alone
starts a single process. Training under a launcher is ``imgsynth train`` itself (``accelerate launch -m
imgsynth train SET OUT``), see :mod:`imgsynth.distributed.accelerate_train`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from imgsynth.cli.flags import (
    C2PA_CERT_OPTION,
    C2PA_KEY_OPTION,
    C2PA_TSA_OPTION,
    WATERMARK_OPTION,
    marking_flags,
    renamed_flag,
)

from imgsynth.distributed.ranks import generate_on_rank

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
def main(
    model: Path = typer.Argument(..., help="A class-conditional model dir or a text-to-image pipeline."),
    out: Path = typer.Argument(..., help="Folder of the ImageSet to write."),
    per_class: int = typer.Option(..., "--per-class", help="Images per class."),
    guidance: Optional[float] = typer.Option(None, help="Classifier-free guidance scale (default: the model's)."),
    sample_steps: Optional[int] = typer.Option(None, "--sample-steps", help="Sampling steps (default: the model's)."),
    steps: Optional[int] = typer.Option(None, "--steps", hidden=True, help="Former name of --sample-steps."),
    seed: int = typer.Option(0, help="Base seed; every image's seed derives from it."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Images per forward pass."),
    shard_size: Optional[int] = typer.Option(None, "--shard-size", help="Images per shard (the unit of work and "
                                             "resuming; default: the kind's)."),
    classes: Optional[str] = typer.Option(None, help="Comma-separated class names to generate (default: all)."),
    prompts: Optional[str] = typer.Option(None, help="Prompt bank (text-to-image)."),
    noise_temperature: Optional[float] = typer.Option(None, "--noise-temperature",
                                                      help="Initial-noise scale (conditional)."),
    generation: Optional[int] = typer.Option(None, help="Generation number recorded in the metadata."),
    dtype: Optional[str] = typer.Option(None, help="Precision of a text-to-image pipeline (default: bf16 on CUDA)."),
    # The same provenance marks as `imgsynth generate`: every process writes its shards' images with them.
    watermark: bool = WATERMARK_OPTION,
    c2pa_cert: Optional[Path] = C2PA_CERT_OPTION,
    c2pa_key: Optional[Path] = C2PA_KEY_OPTION,
    c2pa_tsa: Optional[str] = C2PA_TSA_OPTION,
) -> None:
    """Generate an ImageSet with every process of an ``accelerate launch``, one device each."""
    from accelerate import PartialState

    from imgsynth.distributed.accelerate_train import launched_on_cpu
    from imgsynth.outputs import IMAGESET, claim_output
    from imgsynth.pipelines.base import kind_for_model
    from imgsynth.pipelines.sharding import with_marking

    claim_output(out, IMAGESET, [model, prompts])
    marking = marking_flags(watermark, c2pa_cert, c2pa_key, c2pa_tsa)  # before any model loads
    state = PartialState(cpu=launched_on_cpu())  # CPU-only machines use gloo ranks
    given = {"guidance_scale": guidance, "sample_steps": renamed_flag("--steps", steps, "--sample-steps", sample_steps), "sample_batch_size": batch_size,
             "shard_size": shard_size, "prompts": prompts, "noise_temperature": noise_temperature, "dtype": dtype}
    options = {name: value for name, value in given.items() if value is not None}
    # The same registry lookup and option check as `imgsynth generate`.
    kind = kind_for_model(model, options, where="accelerate launch", device=str(state.device))
    chosen = None if classes is None else [c.strip() for c in classes.split(",") if c.strip()] or None
    job = with_marking(kind.job(model, per_class, seed, generation=generation, classes=chosen), marking)
    result = generate_on_rank(job, out, rank=state.process_index, world_size=state.num_processes,
                              barrier=state.wait_for_everyone, progress=True)
    if result is not None:
        processes = f"{state.num_processes} process{'es' if state.num_processes > 1 else ''}"
        typer.echo(f"{result.root}: {len(result)} images by {processes}, id {result.id[:12]}")


def run() -> None:
    """Entry point: user errors print one line on stderr, as ``imgsynth`` does."""
    from imgsynth.cli.app import run_app

    run_app(app)


if __name__ == "__main__":
    run()
