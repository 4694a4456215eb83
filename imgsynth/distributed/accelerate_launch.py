"""Multi-GPU generation on one machine: ``accelerate launch -m imgsynth.distributed.accelerate_launch``.

    accelerate launch --num_processes 4 -m imgsynth.distributed.accelerate_launch MODEL OUT --per-class 1000

Each process loads MODEL (a class-conditional model dir or a text-to-image pipeline) on its own device,
writes its share of the job's shards (see :mod:`imgsynth.distributed.ranks`), and the main process
finalizes the set after all are done. The set is byte-identical to ``imgsynth generate MODEL OUT`` with
the same settings (same id); an interrupted launch resumes when started again, with any process count.
On a machine without GPUs, ``torchrun --nproc_per_node N -m imgsynth.distributed.accelerate_launch …``
(or ``accelerate launch --multi_gpu``) runs N CPU processes over gloo; ``accelerate launch --cpu`` alone
starts a single process. Training under a launcher is ``imgsynth train`` itself (``accelerate launch -m
imgsynth train SET OUT``), see :mod:`imgsynth.distributed.accelerate_train`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from imgsynth.distributed.generators import generator_for
from imgsynth.distributed.ranks import generate_on_rank

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def sampling_options(model: Path, *, per_class: int, guidance: Optional[float], steps: Optional[int], seed: int,
                     batch_size: Optional[int], shard_size: int, classes: Optional[list[str]],
                     prompts: Optional[str], noise_temperature: float, generation: Optional[int],
                     dtype: Optional[str]) -> dict[str, Any]:
    """``generator_for`` arguments for ``model``'s kind from the command's options (unset ones left out)."""
    from imgsynth.pipelines import conditional

    options: dict[str, Any] = {"per_class": per_class, "guidance_scale": guidance, "steps": steps, "seed": seed,
                               "shard_size": shard_size, "classes": classes or None}
    if batch_size is not None:
        options["batch_size"] = batch_size
    if conditional.is_model_dir(model):
        if prompts or dtype:
            raise ValueError(f"{model}: --prompts and --dtype apply to text-to-image pipelines, "
                             "not to a class-conditional model")
        options.update(noise_temperature=noise_temperature, generation=generation)
    else:
        if noise_temperature != 1.0:
            raise ValueError(f"{model}: --noise-temperature applies to class-conditional models only")
        options.update(prompts=prompts, dtype=dtype, generation=generation or 0)
    return options


@app.command()
def main(
    model: Path = typer.Argument(..., help="A class-conditional model dir or a text-to-image pipeline."),
    out: Path = typer.Argument(..., help="Folder of the ImageSet to write."),
    per_class: int = typer.Option(..., "--per-class", help="Images per class."),
    guidance: Optional[float] = typer.Option(None, help="Classifier-free guidance scale (default: the model's)."),
    steps: Optional[int] = typer.Option(None, help="Sampling steps (default: the model's)."),
    seed: int = typer.Option(0, help="Base seed; every image's seed derives from it."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Images per forward pass."),
    shard_size: int = typer.Option(64, "--shard-size", help="Images per shard (the unit of work and resuming)."),
    classes: Optional[list[str]] = typer.Option(None, "--class", help="Class to generate (repeatable)."),
    prompts: Optional[str] = typer.Option(None, help="Prompt bank (text-to-image)."),
    noise_temperature: float = typer.Option(1.0, "--noise-temperature", help="Initial-noise scale (conditional)."),
    generation: Optional[int] = typer.Option(None, help="Generation number recorded in the metadata."),
    dtype: Optional[str] = typer.Option(None, help="Precision of a text-to-image pipeline (default: bf16 on CUDA)."),
) -> None:
    """Generate an ImageSet with every process of an ``accelerate launch``, one device each."""
    from accelerate import PartialState

    from imgsynth.distributed.accelerate_train import launched_on_cpu

    state = PartialState(cpu=launched_on_cpu())  # CPU-only machines use gloo ranks
    options = sampling_options(model, per_class=per_class, guidance=guidance, steps=steps, seed=seed,
                               batch_size=batch_size, shard_size=shard_size, classes=classes, prompts=prompts,
                               noise_temperature=noise_temperature, generation=generation, dtype=dtype)
    generator = generator_for(model, device=str(state.device), **options)
    result = generate_on_rank(generator, out, rank=state.process_index, world_size=state.num_processes,
                              barrier=state.wait_for_everyone, progress=True)
    if result is not None:
        processes = f"{state.num_processes} process{'es' if state.num_processes > 1 else ''}"
        typer.echo(f"{result.root}: {len(result)} images by {processes}, id {result.id[:12]}")


def run() -> None:
    """Entry point: user errors print one line on stderr and exit with status 1, as ``imgsynth`` does."""
    from imgsynth.cli.app import run_app

    run_app(app)


if __name__ == "__main__":
    run()
