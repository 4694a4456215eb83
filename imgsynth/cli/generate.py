"""`imgsynth train` (a class-conditional model on an ImageSet) and `imgsynth generate` (any generator → ImageSet).

`generate` is one command for every generator; which one runs is decided by MODEL alone:
a folder with ``imgsynth_model.json`` is a class-conditional model from `imgsynth train`; anything else
(a diffusers pipeline folder with ``model_index.json``, or a Hub id) goes to the text-to-image pipeline.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from imgsynth.pipelines.base import MODEL_INFO

# Heavy modules (torch, diffusers) are imported inside the commands so `imgsynth --help` stays quick.


def train_command(
    image_set: Path = typer.Argument(..., metavar="SET", help="Labeled ImageSet to train on."),
    out_model: Path = typer.Argument(..., metavar="OUT_MODEL", help="Model folder to write (resumes if partial)."),
    preset: str = typer.Option("digits16-cpu", help="Training preset: digits16-cpu, smoke, cifar32-gpu, 64-gpu."),
    kind: str = typer.Option("conditional", "--kind", help="Generator kind: conditional (diffusion, the "
                             "default) or a registered kind (gaussian, kde)."),
    options: List[str] = typer.Option([], "--option", help="Option of a registered kind, key=value (TOML "
                                      "value), e.g. --option estimator=unbiased; repeatable."),
    steps: Optional[int] = typer.Option(None, help="Optimizer steps (default: the preset's)."),
    batch_size: Optional[int] = typer.Option(None, help="Training batch size (default: the preset's)."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate (default: the preset's)."),
    seed: int = typer.Option(0, help="Seed of weights, batches and noise."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda or auto (default: CUDA when present)."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Train a class-conditional diffusion model (with classifier-free guidance) on an ImageSet.

    Under `accelerate launch`/torchrun with several processes, they train one model data-parallel.
    """
    from imgsynth.distributed.accelerate_train import AccelerateDataParallel, launched_world_size
    from imgsynth.imageset import ImageSet
    from imgsynth.pipelines import conditional
    from imgsynth.pipelines.base import GENERATORS, build_generator

    if kind != "conditional":
        if kind not in GENERATORS:
            raise typer.BadParameter(f"choose conditional or one of {sorted(GENERATORS)}", param_hint="--kind")
        model_dir = build_generator(kind, _parse_options(options)).fit(ImageSet.open(image_set), out_model, seed,
                                                                       progress=progress)
        typer.echo(f"model: {model_dir}  ({kind})")
        return
    if options:
        raise typer.BadParameter("--option is for registered kinds; the conditional model takes --preset, "
                                 "--steps, --batch-size, --lr", param_hint="--option")
    parallel = None
    if launched_world_size() > 1:
        if device is not None:
            raise typer.BadParameter("under a launcher every process uses the device it was given; drop --device",
                                     param_hint="--device")
        parallel = AccelerateDataParallel()
        device = str(parallel.device)
    overrides = {name: value for name, value in (("steps", steps), ("batch_size", batch_size), ("lr", lr),
                                                 ("device", device)) if value is not None}
    config = conditional.preset(preset, seed=seed, **overrides)
    model_dir = conditional.train(ImageSet.open(image_set), out_model, config, progress=progress, parallel=parallel)
    if parallel is not None and parallel.rank != 0:
        return
    info = conditional.read_model_info(model_dir)
    stats = info.get("stats", {})
    typer.echo(f"model: {model_dir}  ({len(info['classes'])} classes, {config.steps} steps, "
               f"loss {stats.get('final_loss', float('nan')):.4f}, {stats.get('train_seconds', 0):.1f}s)")


def generate_command(
    model: str = typer.Argument(..., metavar="MODEL",
                                help="Model folder from `imgsynth train`, a diffusers pipeline folder, or a Hub id."),
    out: Path = typer.Argument(..., metavar="OUT", help="ImageSet folder to write (resumes if partial)."),
    per_class: int = typer.Option(..., "--per-class", help="Images per class."),
    guidance: Optional[float] = typer.Option(None, "--guidance", help="Classifier-free guidance scale "
                                             "(default: the model's)."),
    steps: Optional[int] = typer.Option(None, help="Sampling steps (default: the model's)."),
    seed: int = typer.Option(0, help="Base seed; each image's seed derives from it, its class and index."),
    batch_size: Optional[int] = typer.Option(None, help="Images per forward pass (default: 64 for "
                                             "class-conditional models, 4 for text-to-image pipelines)."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda or auto (default: CUDA when present)."),
    noise_temperature: float = typer.Option(1.0, help="Scale of the starting noise (class-conditional models)."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
    # Text-to-image pipelines only.
    classes: Optional[str] = typer.Option(None, help="Text-to-image: comma-separated class names, e.g. "
                                          "kitchen,bedroom (default: every class of --prompts)."),
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
) -> None:
    """Sample a labeled ImageSet from a class-conditional model or a text-to-image pipeline."""
    from imgsynth.pipelines import conditional

    text_options = {"--classes": classes, "--prompts": prompts, "--negative-prompt": negative_prompt,
                    "--lora": lora, "--caption-model": caption_model, "--height": height, "--width": width,
                    "--dtype": dtype, "--compile": compile or None, "--license": license}
    if backend != "local" or workers is not None or address is not None:
        from imgsynth.distributed.generators import generate_with_backend

        result = generate_with_backend(
            model, out, backend=backend, address=address, workers=workers, progress=progress, per_class=per_class,
            guidance_scale=guidance, steps=steps, seed=seed, batch_size=batch_size, device=device,
            noise_temperature=noise_temperature, classes=classes, prompts=prompts, negative_prompt=negative_prompt,
            lora=lora, caption_model=caption_model, height=height, width=width, dtype=dtype, compile=compile,
            license=license)
    elif (Path(model) / MODEL_INFO).is_file():  # a registered kind's model folder (gaussian, kde, …)
        result = _sample_registered(Path(model), out, per_class, seed)
    elif conditional.is_model_dir(model):
        given = [name for name, value in text_options.items() if value is not None]
        if given:
            raise ValueError(f"{', '.join(given)} apply to text-to-image pipelines only; {model} is a "
                             "class-conditional model")
        result = conditional.sample(model, out, per_class, guidance_scale=guidance, steps=steps, seed=seed,
                                    batch_size=batch_size or 64, device=device,
                                    noise_temperature=noise_temperature, progress=progress)
    else:
        if noise_temperature != 1.0:
            raise ValueError("--noise-temperature applies to class-conditional models only; "
                             f"{model} is not one (no {conditional.MODEL_FILE})")
        text2image = _text2image_module(model)
        class_list = None if classes is None else [c.strip() for c in classes.split(",") if c.strip()]
        result = text2image.generate_text2image(
            model, out, classes=class_list, prompts=prompts, per_class=per_class, guidance_scale=guidance,
            steps=steps, seed=seed, negative_prompt=negative_prompt, batch_size=batch_size or 4, height=height,
            width=width, lora=lora, compile=compile, dtype=dtype, device=device, caption_model=caption_model,
            license=license, progress=progress)
    typer.echo(f"{result.root}  ({len(result)} images, {len(result.classes)} classes, id {result.id[:12]})")


def _parse_options(pairs: List[str]) -> dict[str, object]:
    """``key=value`` pairs (values read as TOML, bare words as strings) for a registered kind's options."""
    import tomllib

    parsed: dict[str, object] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"{pair!r}: expected key=value", param_hint="--option")
        try:
            parsed[key.strip()] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            parsed[key.strip()] = raw
    return parsed


def _sample_registered(model: Path, out: Path, per_class: int, seed: int):  # noqa: ANN202 - an ImageSet
    """Sample a registered kind's model folder with the options it was fitted with."""
    import json

    from imgsynth.pipelines.base import build_generator

    info = json.loads((model / MODEL_INFO).read_text(encoding="utf-8"))
    return build_generator(info.get("kind", ""), info.get("options") or {}).sample(model, out, per_class, seed)


def _text2image_module(model: str):  # noqa: ANN202 - a module
    """The text-to-image pipeline module, imported only when a text-to-image model is asked for."""
    path = Path(model)
    if path.is_dir() and not (path / "model_index.json").is_file():
        raise ValueError(f"{model}: neither a class-conditional model folder (no imgsynth_model.json) nor a "
                         "diffusers pipeline folder (no model_index.json)")
    try:
        from imgsynth.pipelines import text2image
    except ModuleNotFoundError as exc:
        if exc.name != "imgsynth.pipelines.text2image":
            raise
        raise ValueError(f"{model} is a text-to-image model, but this imgsynth has no text-to-image pipeline "
                         "(imgsynth.pipelines.text2image is missing)") from exc
    return text2image


def register(app: typer.Typer) -> None:
    """Add `train` and `generate` to the top level of the app."""
    app.command("train")(train_command)
    app.command("generate")(generate_command)
