"""Scale-out throughput: Ray workers on one machine, and how close the single-device path gets to its FLOP limit.

Run: ``python benchmarks/bench_distributed.py [ray|flops|all] [options]``

1. ``ray``: the tiny offline text-to-image pipeline (``imgsynth.testing.tiny_text2image_pipeline``)
   generates the same job locally (one process, torch's default threads) and on a local Ray cluster
   (``ray.init(num_cpus=N)``) with 1 and 2 … N workers (one actor and one pipeline each, one CPU and one
   torch thread each: ``--threads``, the backends' ``cpu_threads``, also used by the local row). Printed per run: wall time, images/s over the whole run (actor start and model
   load included) and in steady state (from the first finished shard to the last), the speed-up over one
   Ray worker, and the set id, which must be the same in every row.
2. ``flops``: the class-conditional UNet of a preset (random weights; sampling cost does not depend on
   them) sampled with ``conditional.denoise``, the path ``conditional.sample`` takes: on CUDA bf16
   autocast and channels-last (``--compile`` adds ``torch.compile``). FLOPs of one UNet forward are
   counted with ``torch.utils.flop_counter.FlopCounterMode``; achieved TFLOP/s = FLOPs per image per
   step × steps × (2 with guidance) × images/s, reported against ``--peak-tflops`` (the device's dense
   bf16 peak, e.g. 989 for an H100 SXM) and against a measured dense matmul on the same device.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any


# --------------------------------------------------------------------------------------------- ray

def ray_table(args: argparse.Namespace) -> list[dict[str, Any]]:
    import ray

    from imgsynth.distributed import generate
    from imgsynth.pipelines.text2image import Text2ImageOptions, Text2ImageSamplingJob
    from imgsynth.testing import tiny_text2image_pipeline

    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    pipe = tiny_text2image_pipeline(work / "pipe")
    classes = [f"class{i}" for i in range(args.classes)]

    def job() -> Text2ImageSamplingJob:
        options = Text2ImageOptions(model=str(pipe), classes=classes, sample_steps=args.steps,
                                    sample_batch_size=args.batch_size, shard_size=args.shard_size, device="cpu")
        return Text2ImageSamplingJob(options, per_class=args.per_class)

    def run(backend: str, workers: int | None, name: str) -> dict[str, Any]:
        finished: list[tuple[float, int]] = []
        start = time.perf_counter()
        # Every worker computes with --threads torch threads (the backends' cpu_threads): the same floats.
        result = generate(job(), work / name, backend=backend, workers=workers, cpu_threads=args.threads,
                          on_shard=lambda index, n: finished.append((time.perf_counter(), n)))
        wall = time.perf_counter() - start
        steady = None
        if len(finished) > 1:
            span = finished[-1][0] - finished[0][0]
            steady = sum(n for _, n in finished[1:]) / span if span > 0 else None
        return {"backend": backend, "workers": workers or 1, "images": len(result), "wall_s": wall,
                "images_per_s": len(result) / wall, "steady_images_per_s": steady, "id": result.id[:12]}

    rows = [run("local", None, "local")]
    ray.init(num_cpus=args.cpus, include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        for workers in range(1, args.cpus + 1):
            rows.append(run("ray", workers, f"ray{workers}"))
    finally:
        ray.shutdown()
    one = next(r for r in rows if r["backend"] == "ray" and r["workers"] == 1)
    for r in rows:
        r["speedup"] = r["images_per_s"] / one["images_per_s"]
        r["steady_speedup"] = (r["steady_images_per_s"] / one["steady_images_per_s"]
                               if r["steady_images_per_s"] and one["steady_images_per_s"] else None)
    print(f"\nRay Data backend, tiny text-to-image pipeline: {args.classes} classes × {args.per_class} images, "
          f"{args.steps} steps, batch {args.batch_size}, shard {args.shard_size}, ray.init(num_cpus={args.cpus}), "
          f"{os.cpu_count()} cores visible")
    header = f"{'backend':8} {'workers':>7} {'images':>6} {'wall s':>8} {'img/s':>7} {'×1 wkr':>7} " \
             f"{'steady img/s':>12} {'×1 wkr':>7}  set id"
    print(header)
    print("-" * len(header))
    for r in rows:
        steady = f"{r['steady_images_per_s']:12.2f}" if r["steady_images_per_s"] else f"{'-':>12}"
        steady_x = f"{r['steady_speedup']:7.2f}" if r["steady_speedup"] else f"{'-':>7}"
        print(f"{r['backend']:8} {r['workers']:7d} {r['images']:6d} {r['wall_s']:8.1f} {r['images_per_s']:7.2f} "
              f"{r['speedup']:7.2f} {steady} {steady_x}  {r['id']}")
    ids = {r["id"] for r in rows}
    print(f"set ids identical across backends and worker counts: {len(ids) == 1}")
    return rows


# --------------------------------------------------------------------------------------------- flops

def matmul_tflops(device: Any, dtype: Any, size: int, repeats: int) -> float:
    """Dense matmul throughput on ``device``: a practical ceiling to compare a network against."""
    import torch

    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * size ** 3 * repeats / (time.perf_counter() - start) / 1e12


def synchronize(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def flops_table(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from imgsynth.pipelines import conditional
    from imgsynth.compute import resolve_device
    from imgsynth.pipelines import device as devices

    device = resolve_device(args.device)
    config = conditional.preset(args.preset)
    num_classes = 10
    torch.manual_seed(0)
    unet = devices.prepare_module(conditional.build_unet(config, num_classes), device).eval()
    channels, size, patch = config.channels, config.image_size, config.patch_size

    # FLOPs of one UNet forward per image, on the tensor shape the sampler feeds it (before compiling).
    probe = devices.prepare_input(torch.randn(2, channels * patch ** 2, size // patch, size // patch), device)
    with FlopCounterMode(display=False) as counter, torch.inference_mode(), devices.autocast(device):
        unet(probe, torch.tensor(10, device=device), class_labels=torch.zeros(2, dtype=torch.long, device=device))
    flops_per_image_forward = counter.get_total_flops() / 2
    guided = args.guidance not in (0.0, 1.0)
    flops_per_image = flops_per_image_forward * args.steps * (2 if guided else 1)
    if args.compile:
        unet = devices.maybe_compile(unet, device, True)
    info = {"patch_size": config.patch_size, "classes": [str(i) for i in range(num_classes)],
            "null_class_index": num_classes, "training_config": {"mixed_precision": config.mixed_precision}}
    model = conditional.LoadedModel(unet, info, dict(conditional.build_noise_scheduler(config).config), "bench",
                                    device)

    def sample_batch() -> None:
        noise = torch.randn(args.batch_size, channels, size, size)
        labels = torch.arange(args.batch_size) % num_classes
        conditional.denoise(model, noise, labels, guidance_scale=args.guidance, steps=args.steps,
                            sampler=config.sampler)

    for _ in range(args.warmup):
        sample_batch()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(args.batches):
        sample_batch()
    synchronize(device)
    elapsed = time.perf_counter() - start
    images_per_s = args.batch_size * args.batches / elapsed
    achieved = flops_per_image * images_per_s / 1e12
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    ceiling = matmul_tflops(device, dtype, 8192 if device.type == "cuda" else 1024,
                            50 if device.type == "cuda" else 5)
    row = {"device": str(device), "preset": args.preset, "batch": args.batch_size, "steps": args.steps,
           "guided": guided, "compile": args.compile, "gflops_per_forward_image": flops_per_image_forward / 1e9,
           "images_per_s": images_per_s, "achieved_tflops": achieved, "matmul_tflops": ceiling,
           "peak_tflops": args.peak_tflops}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"\nSingle-device sampling, conditional.denoise, preset {args.preset} ({size}px, {channels} ch, "
          f"patch {patch}), {args.steps} steps, guidance {args.guidance}, batch {args.batch_size}, "
          f"compile {args.compile}, on {name}")
    header = f"{'GFLOP/fwd/img':>13} {'img/s':>9} {'TFLOP/s':>8} {'matmul TFLOP/s':>14} {'of matmul':>9} " \
             f"{'peak TFLOP/s':>12} {'of peak':>8}"
    print(header)
    print("-" * len(header))
    of_peak = f"{achieved / args.peak_tflops:8.1%}" if args.peak_tflops else f"{'-':>8}"
    peak = f"{args.peak_tflops:12.1f}" if args.peak_tflops else f"{'-':>12}"
    print(f"{flops_per_image_forward / 1e9:13.3f} {images_per_s:9.1f} {achieved:8.3f} {ceiling:14.3f} "
          f"{achieved / ceiling:9.1%} {peak} {of_peak}")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", nargs="?", choices=("ray", "flops", "all"), default="all")
    ray_group = parser.add_argument_group("ray")
    ray_group.add_argument("--cpus", type=int, default=2, help="ray.init(num_cpus=…); workers 1..cpus are run")
    ray_group.add_argument("--threads", type=int, default=1, help="torch threads per worker (cpu_threads)")
    ray_group.add_argument("--classes", type=int, default=4)
    ray_group.add_argument("--per-class", type=int, default=32)
    ray_group.add_argument("--shard-size", type=int, default=8)
    ray_group.add_argument("--batch-size", type=int, default=None, help="images per pipeline call (ray: 4), "
                           "or per sampling batch (flops: default 256 on CUDA, 64 on CPU)")
    ray_group.add_argument("--steps", type=int, default=None, help="sampling steps (default 8 ray, 20 flops)")
    flops_group = parser.add_argument_group("flops")
    flops_group.add_argument("--preset", default=None, help="conditional preset (default: cifar32-gpu on CUDA, "
                             "digits16-cpu on CPU)")
    flops_group.add_argument("--device", default=None)
    flops_group.add_argument("--guidance", type=float, default=2.0)
    flops_group.add_argument("--batches", type=int, default=None, help="timed batches (default 20 CUDA, 3 CPU)")
    flops_group.add_argument("--warmup", type=int, default=None, help="untimed batches first (default 3 CUDA, 1 CPU)")
    flops_group.add_argument("--compile", action="store_true", help="torch.compile the UNet (CUDA only)")
    flops_group.add_argument("--peak-tflops", type=float, default=None,
                             help="the device's dense peak to report against (H100 SXM bf16: 989)")
    args = parser.parse_args()
    if args.what in ("ray", "all"):
        ray_args = argparse.Namespace(**vars(args))
        ray_args.steps = args.steps or 8
        ray_args.batch_size = args.batch_size or 4
        ray_table(ray_args)
    if args.what in ("flops", "all"):
        import torch

        cuda = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
        flops_args = argparse.Namespace(**vars(args))
        flops_args.steps = args.steps or 20
        flops_args.preset = args.preset or ("cifar32-gpu" if cuda else "digits16-cpu")
        flops_args.batch_size = args.batch_size or (256 if cuda else 64)
        flops_args.batches = args.batches or (20 if cuda else 3)
        flops_args.warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
        flops_table(flops_args)


if __name__ == "__main__":
    main()
