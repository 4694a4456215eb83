"""Text-to-image throughput: the plain diffusers call vs imgsynth's path, same prompts and seeds, one run.

Run::

    python benchmarks/bench_text2image.py                      # tiny offline pipeline on this machine
    python benchmarks/bench_text2image.py --model stabilityai/sd-turbo --steps 1 --guidance 0 \\
        --images 256 --batch-size 16 --compile                 # a real model on a CUDA GPU

Rows (each after one untimed warm-up batch, model loading excluded):

* ``diffusers fp32``: ``AutoPipelineForText2Image.from_pretrained(model).to(device)`` with diffusers'
  defaults (float32, its per-call progress bar, PIL output), called batch by batch with the same
  prompts and one ``torch.Generator`` per image. What a user gets from the model card's snippet
  without a dtype.
* ``diffusers fp16`` (CUDA only): the same with ``torch_dtype=torch.float16``, the usual hand-tuned call.
* ``imgsynth``: ``generate_text2image`` into a temporary ImageSet (bf16 on CUDA, channels-last, no inner
  progress bar; PNG encoding, hashing and resumable shard writes included).
* ``imgsynth --compile`` (with ``--compile``): the same with the denoiser under ``torch.compile``
  (compile time is spent in the warm-up batch).

Columns: images/s, speed-up over ``diffusers fp32``, and the mean / max absolute pixel difference from
``diffusers fp32`` in 8-bit levels (bf16 changes pixels; the seeds, prompts and noise are the same).
"""

from __future__ import annotations

import argparse
import gc
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="Pipeline folder or Hub id (default: build the tiny one).")
    parser.add_argument("--classes", default="kitchen,bedroom,bathroom,living room")
    parser.add_argument("--prompts", default=None, help="Prompt bank (default: shipped entries for --classes).")
    parser.add_argument("--images", type=int, default=32, help="Images per row (rounded up to whole classes).")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=None, help="Default: by model (turbo-like 4, else 30).")
    parser.add_argument("--guidance", type=float, default=None, help="Default: by model (turbo-like 0, else 7.5).")
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--device", default=None, help="Default: CUDA when available, else CPU.")
    parser.add_argument("--compile", action="store_true", help="Add a row with the denoiser compiled.")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's).")
    return parser.parse_args()


def plain_diffusers(model: str, device: str, dtype: Any, items: list, args: argparse.Namespace,
                    steps: int, guidance: float, negative: str) -> tuple[float, np.ndarray]:
    """Seconds for all items and their pixels, through the bare diffusers call."""
    import torch
    from diffusers import AutoPipelineForText2Image

    from imgsynth.pipelines.text2image import hub_offline

    kwargs = {"torch_dtype": dtype} if dtype is not None else {}
    pipe = AutoPipelineForText2Image.from_pretrained(model, local_files_only=hub_offline() or Path(model).exists(),
                                                     **kwargs).to(device)

    def call(batch: list) -> list:
        extra = {"negative_prompt": [negative] * len(batch)} if negative and guidance > 1 else {}
        for key in ("height", "width"):
            if getattr(args, key):
                extra[key] = getattr(args, key)
        return pipe([i.prompt for i in batch], num_inference_steps=steps, guidance_scale=guidance,
                    generator=[torch.Generator("cpu").manual_seed(i.seed) for i in batch], **extra).images

    call(items[:args.batch_size])  # warm-up
    synchronize(device)
    images = []
    start = time.perf_counter()
    for i in range(0, len(items), args.batch_size):
        images += call(items[i:i + args.batch_size])
    synchronize(device)
    seconds = time.perf_counter() - start
    del pipe
    release(device)
    return seconds, np.stack([np.asarray(image.convert("RGB")) for image in images])


def imgsynth_path(model: str, device: str, compile: bool, args: argparse.Namespace, classes: list[str] | None,
                  per_class: int, steps: int, guidance: float, negative: str, work: Path) -> tuple[float, np.ndarray]:
    """Seconds for the whole set through ``generate_text2image`` (writing included) and its pixels."""
    from imgsynth.pipelines.prompts import resolve_bank
    from imgsynth.pipelines.text2image import (SamplingOptions, Text2ImageRenderer, generate_text2image,
                                               plan_text2image)

    renderer = Text2ImageRenderer.from_pretrained(model, device=device, compile=compile)
    bank = resolve_bank(classes, args.prompts)
    options = SamplingOptions(steps=steps, guidance_scale=guidance, negative_prompt=negative, height=args.height,
                              width=args.width)
    renderer.render(plan_text2image(bank, per_class, 0)[:args.batch_size], options,
                    batch_size=args.batch_size)  # warm-up (and compilation)
    synchronize(device)
    out = work / f"imgsynth-{int(compile)}"
    start = time.perf_counter()
    image_set = generate_text2image(model, out, classes=classes, prompts=args.prompts, per_class=per_class,
                                    seed=0, sample_steps=steps, guidance_scale=guidance, negative_prompt=negative,
                                    sample_batch_size=args.batch_size, height=args.height, width=args.width,
                                    progress=False, renderer=renderer)
    synchronize(device)
    seconds = time.perf_counter() - start
    pixels = image_set.as_array()
    del renderer
    release(device)
    return seconds, pixels


def synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def release(device: str) -> None:
    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def main() -> None:
    args = parse_args()
    import torch

    from imgsynth.pipelines.prompts import resolve_bank
    from imgsynth.compute import resolve_device
    from imgsynth.pipelines.text2image import default_sampling, plan_text2image

    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench-t2i-"))
    try:
        model = args.model
        if model is None:
            from imgsynth.testing import tiny_text2image_pipeline

            model = str(tiny_text2image_pipeline(work / "tiny-pipeline"))
        device = str(resolve_device(args.device))
        classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
        bank = resolve_bank(classes, args.prompts)
        per_class = -(-args.images // len(bank.class_names))
        default_steps, default_guidance = default_sampling(model)
        steps = default_steps if args.steps is None else args.steps
        guidance = default_guidance if args.guidance is None else args.guidance
        negative = bank.negative_prompt
        items = plan_text2image(bank, per_class, 0)  # the order generate_text2image renders them in

        rows: list[tuple[str, float, np.ndarray]] = []
        seconds, pixels = plain_diffusers(model, device, None, items, args, steps, guidance, negative)
        rows.append(("diffusers fp32", seconds, pixels))
        if device.startswith("cuda"):
            seconds, pixels = plain_diffusers(model, device, torch.float16, items, args, steps, guidance, negative)
            rows.append(("diffusers fp16", seconds, pixels))
        seconds, pixels = imgsynth_path(model, device, False, args, classes, per_class, steps, guidance, negative, work)
        rows.append(("imgsynth", seconds, pixels))
        if args.compile:
            seconds, pixels = imgsynth_path(model, device, True, args, classes, per_class, steps, guidance,
                                            negative, work)
            rows.append(("imgsynth --compile", seconds, pixels))

        name = torch.cuda.get_device_name() if device.startswith("cuda") else f"CPU ({torch.get_num_threads()} threads)"
        print(f"model {model}\ndevice {name}; {len(items)} images of {pixels.shape[1]}x{pixels.shape[2]}, "
              f"batch {args.batch_size}, {steps} steps, guidance {guidance}")
        print(f"{'path':<20} {'seconds':>8} {'images/s':>9} {'speed-up':>9} {'mean |Δ|':>9} {'max |Δ|':>8}")
        reference_seconds, reference = rows[0][1], rows[0][2].astype(np.int16)
        for label, seconds, pixels in rows:
            difference = np.abs(pixels.astype(np.int16) - reference)
            print(f"{label:<20} {seconds:>8.2f} {len(items) / seconds:>9.2f} {reference_seconds / seconds:>8.2f}x "
                  f"{difference.mean():>9.3f} {difference.max():>8d}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
