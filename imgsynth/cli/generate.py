"""`imgsynth train` (fit any registered generator kind to an ImageSet) and `imgsynth generate` (any model →
ImageSet).

Both find the generator kind in the registry (:mod:`imgsynth.pipelines.base`): `train` by ``--kind``,
`generate` by MODEL alone (``model_kind``). Their flags are the kind's options, checked by the kind's
options dataclass exactly as a recipe's ``[generator.options]`` are.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from imgsynth.cli.flags import (
    C2PA_CERT_OPTION,
    C2PA_KEY_OPTION,
    C2PA_TSA_OPTION,
    WATERMARK_OPTION,
    marking_flags,
    option_pairs,
    renamed_flag,
)
from imgsynth.compute import check_device
from imgsynth.pipelines.work import check_per_class

# Heavy modules (torch, diffusers) are imported inside the commands so `imgsynth --help` stays quick.


def train_command(
    image_set: Path = typer.Argument(..., metavar="SET", help="Labeled ImageSet to train on."),
    out_model: Path = typer.Argument(..., metavar="OUT_MODEL", help="Model folder to write (resumes if partial)."),
    kind: str = typer.Option("conditional", "--kind", help="Generator kind (imgsynth.pipelines.base.GENERATOR_KINDS): "
                             "conditional (diffusion, the default), gaussian, kde, text2image."),
    preset: Optional[str] = typer.Option(None, help="Conditional: training preset (digits16-cpu, rgb16-cpu, "
                                         "rgb32-cpu, smoke, cifar32-gpu, 64-gpu, auto; default digits16-cpu). Image "
                                         "size and channels come from the data."),
    options: List[str] = typer.Option([], "--option", help="Any option of the kind, key=value (TOML value), e.g. "
                                      "--option estimator=unbiased or --option block_out_channels=[32,64]; "
                                      "repeatable."),
    train_steps: Optional[int] = typer.Option(None, "--train-steps", help="Conditional: optimizer steps (default: the "
                                              "preset's)."),
    steps: Optional[int] = typer.Option(None, "--steps", hidden=True, help="Former name of --train-steps."),
    batch_size: Optional[int] = typer.Option(None, help="Conditional: training batch size (default: the preset's)."),
    lr: Optional[float] = typer.Option(None, help="Conditional: peak learning rate (default: the preset's)."),
    seed: int = typer.Option(0, help="Seed of weights, batches and noise."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda or auto (default: CUDA when present)."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Fit a generator to a labeled ImageSet (by default a class-conditional diffusion model with
    classifier-free guidance).

    Under `accelerate launch`/torchrun with several processes, they train one model data-parallel.
    """
    from imgsynth.distributed.accelerate_train import AccelerateDataParallel, launched_world_size
    from imgsynth.imageset import ImageSet
    from imgsynth.outputs import LORA, MODEL_KINDS, PER_CLASS_MODEL, claim_output
    from imgsynth.pipelines.base import build_kind

    claim_output(out_model, PER_CLASS_MODEL, [image_set], accepts={*MODEL_KINDS, LORA})
    train_steps = renamed_flag("--steps", steps, "--train-steps", train_steps)
    given = {name: value for name, value in (("preset", preset), ("train_steps", train_steps),
                                             ("batch_size", batch_size), ("lr", lr), ("device", device))
             if value is not None}
    parallel = None
    if launched_world_size() > 1:
        if device is not None:
            raise typer.BadParameter("under a launcher every process uses the device it was given; drop --device",
                                     param_hint="--device")
        parallel = AccelerateDataParallel()
        given["device"] = str(parallel.device)
    generator_kind = build_kind(kind, {**given, **option_pairs(options)}, where="imgsynth train")
    check_device(getattr(generator_kind.options, "device", None))  # before the data loads
    train_set = ImageSet.open(image_set)
    fit_parallel = {"parallel": parallel} if parallel is not None else {}
    model_dir = generator_kind.fit(train_set, out_model, seed, progress=progress, **fit_parallel)
    if parallel is not None and parallel.rank != 0:
        return
    if kind != "conditional":
        typer.echo(f"model: {model_dir}  ({kind})")
        return
    from imgsynth.pipelines import conditional

    info = conditional.read_model_info(model_dir)
    stats = info.get("stats", {})
    typer.echo(f"model: {model_dir}  ({len(info['classes'])} classes, {info['training_config']['steps']} steps, "
               f"loss {stats.get('final_loss', float('nan')):.4f}, {stats.get('train_seconds', 0):.1f}s)")


def generate_command(
    model: str = typer.Argument(..., metavar="MODEL",
                                help="Model folder from `imgsynth train`, a diffusers pipeline folder, or a Hub id."),
    out: Path = typer.Argument(..., metavar="OUT", help="ImageSet folder to write (resumes if partial)."),
    per_class: int = typer.Option(..., "--per-class", help="Images per class."),
    guidance: Optional[float] = typer.Option(None, "--guidance", help="Classifier-free guidance scale "
                                             "(default: the model's)."),
    sample_steps: Optional[int] = typer.Option(None, "--sample-steps", help="Sampling steps (default: the model's)."),
    steps: Optional[int] = typer.Option(None, "--steps", hidden=True, help="Former name of --sample-steps."),
    seed: int = typer.Option(0, help="Base seed; each image's seed derives from it, its class and index."),
    batch_size: Optional[int] = typer.Option(None, help="Images per forward pass (default: 64 for "
                                             "class-conditional models, 4 for text-to-image pipelines)."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda or auto (default: CUDA when present)."),
    classes: Optional[str] = typer.Option(None, help="Comma-separated class names to generate, e.g. "
                                          "kitchen,bedroom (default: every class of the model or of --prompts)."),
    noise_temperature: Optional[float] = typer.Option(None, help="Class-conditional: scale of the starting noise "
                                                      "(default 1)."),
    options: List[str] = typer.Option([], "--option", help="Any other sampling option of the model's kind, "
                                      "key=value, e.g. --option sampler=ddim; repeatable."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
    # Text-to-image pipelines only.
    prompts: Optional[str] = typer.Option(None, help="Text-to-image: prompt bank, a TOML file or a shipped "
                                          "name (indoor-scenes)."),
    negative_prompt: Optional[str] = typer.Option(None, help="Text-to-image: negative prompt (default: the "
                                                  "bank's; '' for none)."),
    lora: Optional[Path] = typer.Option(None, help="Text-to-image: LoRA from `imgsynth finetune`."),
    caption_model: Optional[Path] = typer.Option(None, help="Text-to-image: local transformers language model "
                                                 "that rewrites every caption."),
    height: Optional[int] = typer.Option(None, help="Text-to-image: image height (default: the model's)."),
    width: Optional[int] = typer.Option(None, help="Text-to-image: image width (default: the model's)."),
    dtype: Optional[str] = typer.Option(None, help="Text-to-image: bf16, fp16 or fp32 (default: bf16 on CUDA, "
                                        "fp32 on CPU)."),
    compile: bool = typer.Option(False, "--compile", help="Text-to-image: torch.compile the denoiser."),
    license: Optional[str] = typer.Option(None, help="Text-to-image: the model's license, when its card "
                                          "does not say."),
    # Scale-out (imgsynth.distributed); the set is byte-identical whichever backend makes it.
    backend: str = typer.Option("local", help="local (this process) or ray (a Ray cluster; needs "
                                "`pip install 'imgsynth\\[ray]'`)."),
    address: Optional[str] = typer.Option(None, help="Ray: cluster address, auto or ray://host:port "
                                          "(default: a local cluster)."),
    workers: Optional[int] = typer.Option(None, min=1, help="Ray: actors, one model each (default: one per "
                                          "CPU, or per GPU on CUDA)."),
    # Provenance inside each file (imgsynth.provenance.markers); the XMP marker is always written.
    watermark: bool = WATERMARK_OPTION,
    c2pa_cert: Optional[Path] = C2PA_CERT_OPTION,
    c2pa_key: Optional[Path] = C2PA_KEY_OPTION,
    c2pa_tsa: Optional[str] = C2PA_TSA_OPTION,
) -> None:
    """Sample a labeled ImageSet from any generator's model: a class-conditional model, a fitted gaussian or
    kde model, or a text-to-image pipeline. Which kind is decided by MODEL alone."""
    check_device(device)  # before any model or data loads
    check_per_class(per_class, "--per-class")
    from imgsynth.outputs import IMAGESET, claim_output

    claim_output(out, IMAGESET, [model, lora, caption_model, prompts])
    marking = marking_flags(watermark, c2pa_cert, c2pa_key, c2pa_tsa)  # before any model loads
    sample_steps = renamed_flag("--steps", steps, "--sample-steps", sample_steps)
    flags = {"guidance_scale": guidance, "sample_steps": sample_steps, "sample_batch_size": batch_size, "device": device,
             "noise_temperature": noise_temperature, "prompts": prompts, "negative_prompt": negative_prompt,
             "lora": None if lora is None else str(lora),
             "caption_model": None if caption_model is None else str(caption_model), "height": height,
             "width": width, "dtype": dtype, "compile": compile or None, "license": license}
    chosen = None if classes is None else [c.strip() for c in classes.split(",") if c.strip()]
    if chosen == []:
        raise ValueError("--classes: the class list is empty: give at least one class (e.g. --classes kitchen,bedroom)")
    result = sample_model(model, out, per_class, seed, {**{k: v for k, v in flags.items() if v is not None},
                                                        **option_pairs(options)},
                          classes=chosen, backend=backend, address=address, workers=workers, progress=progress,
                          marking=marking)
    typer.echo(f"{result.root}  ({len(result)} images, {len(result.classes)} classes, id {result.id[:12]})")


def sample_model(model: str | Path, out: Path, per_class: int, seed: int, options: dict[str, object], *,
                 classes: Optional[List[str]] = None, backend: str = "local", address: Optional[str] = None,
                 workers: Optional[int] = None, progress: bool = True, generation: Optional[int] = None,
                 marking=None):  # noqa: ANN201, ANN001
    """Sample ``model`` with its kind from the registry, in this process or on a backend; ``marking``: opt-in
    marks (:class:`imgsynth.provenance.markers.Marking`) beyond the XMP marker every image carries."""
    from imgsynth.pipelines.base import kind_for_model
    from imgsynth.pipelines.sharding import with_marking, write_set

    if address is not None and backend != "ray":
        raise ValueError("--address applies to --backend ray only")
    kind = kind_for_model(model, options)
    if backend == "local" and workers is None and (marking is None or not marking.any):
        return kind.sample(Path(model), out, per_class, seed, generation=generation, progress=progress,
                           classes=classes)
    job = with_marking(kind.job(Path(model), per_class, seed, generation=generation, classes=classes), marking)
    if backend == "local" and workers is None:
        return write_set(job, out, progress=progress)
    from imgsynth.distributed.generate import generate

    return generate(job, out, backend=backend, workers=workers, address=address, progress=progress)


def register(app: typer.Typer) -> None:
    """Add `train` and `generate` to the top level of the app."""
    app.command("train")(train_command)
    app.command("generate")(generate_command)
