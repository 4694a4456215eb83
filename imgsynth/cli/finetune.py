"""`imgsynth finetune PIPELINE SET OUT`: LoRA-fine-tune a text-to-image pipeline on an ImageSet."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from imgsynth.cli.flags import renamed_flag
from imgsynth.compute import check_device

# torch and diffusers are imported inside the command so `imgsynth --help` stays quick.


def finetune_command(
    pipeline: str = typer.Argument(..., help="Diffusers text-to-image pipeline: a save_pretrained folder or a "
                                             "Hub id in the local cache (Stable Diffusion 1.x/2.x style)."),
    image_set: Path = typer.Argument(..., metavar="SET", help="The ImageSet to train on (images + captions)."),
    out: Path = typer.Argument(..., help="Folder for the LoRA (pytorch_lora_weights.safetensors + "
                                         "imgsynth_lora.json); pass it to `imgsynth generate --lora`."),
    train_steps: Optional[int] = typer.Option(None, "--train-steps", help="Optimizer steps (default 200)."),
    steps: Optional[int] = typer.Option(None, "--steps", hidden=True, help="Former name of --train-steps."),
    rank: int = typer.Option(8, help="LoRA rank of the UNet attention projections."),
    alpha: Optional[float] = typer.Option(None, help="LoRA alpha (default: the rank)."),
    lr: float = typer.Option(1e-4, help="AdamW learning rate."),
    batch_size: int = typer.Option(4, help="Images per step."),
    resolution: Optional[int] = typer.Option(None, help="Training resolution in pixels (default: the model's)."),
    caption: str = typer.Option("caption", help="Text to train on: caption, prompt (as generated) or label."),
    random_flip: bool = typer.Option(False, "--random-flip", help="Flip half the images horizontally."),
    seed: int = typer.Option(0, help="Seed of LoRA init, data order, noise and timesteps."),
    dtype: Optional[str] = typer.Option(None, help="Weights dtype: bf16, fp16, fp32 (default bf16 on CUDA, "
                                                   "fp32 on CPU)."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda or cuda:N (default: CUDA when available)."),
    checkpoint_every: int = typer.Option(100, help="Save a resumable checkpoint every N steps (0: never); "
                                                   "run the same command again to continue a killed run."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Train a LoRA on an ImageSet so `imgsynth generate PIPELINE OUT2 --lora OUT` samples the tuned model."""

    from imgsynth.outputs import LORA, claim_output
    from imgsynth.pipelines.finetune import INFO_FILE, LoraConfig, finetune_lora
    from imgsynth.structured_files import read_json_object

    check_device(device)  # before the pipeline or the set loads
    claim_output(out, LORA, [pipeline, image_set])
    train_steps = renamed_flag("--steps", steps, "--train-steps", train_steps)
    config = LoraConfig(steps=LoraConfig.steps if train_steps is None else train_steps, rank=rank, alpha=alpha, lr=lr,
                        batch_size=batch_size, resolution=resolution, seed=seed, caption_column=caption,
                        random_flip=random_flip)
    folder = finetune_lora(pipeline, image_set, out, config, device=device, dtype=dtype,
                           checkpoint_every=checkpoint_every, progress=progress)
    info = read_json_object(folder / INFO_FILE)
    losses = info.get("losses") or [float("nan")]
    typer.echo(f"{folder}: LoRA rank {rank}, {len(losses)} steps on {info['train_set']['num_images']} images, "
               f"final loss {losses[-1]:.4f}")


def register(app: typer.Typer) -> None:
    app.command("finetune")(finetune_command)
