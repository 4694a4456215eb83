"""Benchmark the class-conditional diffusion pipeline: training steps/s, sampled images/s, class accuracy.

CPU (default): trains the "digits16-cpu" preset on the embedded digits at 16 px and samples it, then
scores the samples with two classifiers trained on *real* digits: imgsynth's classifier (the one the
experiments use) and an independent scikit-learn SVC on raw pixels. Side by side, the same run with the
straightforward layout (no 2×2 pixel-unshuffle, three UNet levels at 16 px) as the reference.

CUDA (``--device cuda``): throughput of the 32 and 64 px GPU presets on random-pixel sets (speed only).

    python benchmarks/bench_conditional.py                       # CPU table, torch's default threads
    python benchmarks/bench_conditional.py --threads 1 --threads 2
    python benchmarks/bench_conditional.py --device cuda         # GPU presets

Timings on a machine shared with other jobs are inflated (and with two threads, badly: spinning OpenMP
threads lose their core); the CPU-time column shows the work itself.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from imgsynth.imageset import ImageSet, ImageSetWriter, Sample  # noqa: E402
from imgsynth.pipelines import conditional  # noqa: E402
from imgsynth.sources import import_source  # noqa: E402

REFERENCE_LAYOUT = {"patch_size": 1, "block_out_channels": (32, 64, 64), "mid_block": False}


class Timer:
    """Wall and process CPU seconds of a block."""

    def __enter__(self) -> Timer:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def real_digit_scorers(train: ImageSet, work: Path) -> dict[str, object]:
    """Classifiers trained on real digits: name → function(ImageSet) → accuracy."""
    from sklearn.svm import SVC

    from imgsynth.classifier import ClassifierConfig, evaluate_classifier, train_classifier

    pixels = train.as_array().reshape(len(train), -1) / 255.0
    svc = SVC(C=10.0, gamma="scale").fit(pixels, np.asarray(train.labels))

    def svc_accuracy(image_set: ImageSet) -> float:
        x = image_set.as_array().reshape(len(image_set), -1) / 255.0
        y = np.asarray([train.class_to_index[image_set.classes[i]] for i in image_set.labels])
        return float(svc.score(x, y))

    checkpoint = train_classifier(train, work / "classifier", ClassifierConfig(), progress=False)
    return {"imgsynth classifier": lambda s: evaluate_classifier(checkpoint, s).accuracy, "sklearn SVC": svc_accuracy}


def bench_cpu(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench_conditional_"))
    try:
        train, test = import_source("digits", work / "digits", size=16, test_fraction=0.2, seed=0)
        scorers = real_digit_scorers(train, work)
        print(f"digits 16 px: {len(train)} train / {len(test)} test images; real-test accuracy of the scorers: "
              + ", ".join(f"{name} {score(test):.3f}" for name, score in scorers.items()))
        layouts = {args.preset: {}}
        if not args.no_reference:
            layouts["reference (no unshuffle, 3 levels)"] = REFERENCE_LAYOUT
        rows = []
        for threads in args.threads or [torch.get_num_threads()]:
            torch.set_num_threads(threads)
            for name, layout in layouts.items():
                overrides = {"seed": args.seed, **layout, **({"steps": args.steps} if args.steps else {})}
                config = conditional.preset(args.preset, **overrides)
                model_dir = work / f"model-{threads}-{len(rows)}"
                with Timer() as t_train:
                    conditional.train(train, model_dir, config, progress=False)
                for guidance in args.guidance:
                    out = work / f"samples-{threads}-{len(rows)}"
                    with Timer() as t_sample:
                        samples = conditional.sample(model_dir, out, args.per_class, guidance_scale=guidance,
                                                     steps=args.sample_steps, seed=args.seed,
                                                     batch_size=args.batch_size, progress=False)
                    accuracies = {k: score(samples) for k, score in scorers.items()}
                    rows.append((name, threads, config.steps, t_train, guidance, len(samples), t_sample, accuracies))
                    shutil.rmtree(out)
        print(f"\nsample steps {args.sample_steps or 'model default'}, {args.per_class} per class, "
              f"sampling batch {args.batch_size}")
        header = (f"{'layout':36} {'thr':>3} {'steps':>5} {'train s':>8} {'cpu s':>7} {'step/s':>7} {'guid':>5} "
                  f"{'n':>5} {'sample s':>8} {'cpu s':>7} {'img/s':>7} " + " ".join(f"{k:>19}" for k in scorers))
        print(header + "\n" + "-" * len(header))
        for name, threads, steps, t_train, guidance, n, t_sample, acc in rows:
            print(f"{name:36} {threads:>3} {steps:>5} {t_train.wall:8.1f} {t_train.cpu:7.1f} "
                  f"{steps / t_train.wall:7.1f} {guidance:5.1f} {n:>5} {t_sample.wall:8.1f} {t_sample.cpu:7.1f} "
                  f"{n / t_sample.wall:7.1f} " + " ".join(f"{v:19.3f}" for v in acc.values()))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def random_set(root: Path, size: int, per_class: int = 64, classes: int = 10) -> ImageSet:
    """A random-pixel RGB set: enough for throughput, meaningless for quality."""
    rng = np.random.default_rng(0)
    writer = ImageSetWriter(root, [str(c) for c in range(classes)])
    writer.write_all(Sample(Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)), str(i % classes))
                     for i in range(per_class * classes))
    return writer.finalize()


def bench_cuda(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench_conditional_gpu_"))
    print(f"device: {torch.cuda.get_device_name()}")
    header = f"{'preset':12} {'px':>3} {'batch':>5} {'steps':>5} {'train s':>8} {'step/s':>7} {'img/s sample':>12} {'guid':>5}"
    print(header + "\n" + "-" * len(header))
    try:
        for name in ("cifar32-gpu", "64-gpu"):
            base = conditional.PRESETS[name]
            data = random_set(work / f"data{base.image_size}", base.image_size)
            steps = args.steps or 300
            config = conditional.preset(name, steps=steps, checkpoint_every=0, device="cuda", compile=args.compile)
            with Timer() as warm:  # compile and cudnn autotuning happen here, not in the timed run
                conditional.train(data, work / f"warm{name}", conditional.preset(
                    name, steps=20, warmup_steps=5, checkpoint_every=0, device="cuda", compile=args.compile),
                    progress=False)
            with Timer() as t_train:
                model = conditional.train(data, work / f"model{name}", config, progress=False)
            torch.cuda.synchronize()
            with Timer() as t_sample:
                samples = conditional.sample(model, work / f"samples{name}", args.per_class, steps=args.sample_steps or 25,
                                             batch_size=args.batch_size, device="cuda", progress=False)
            print(f"{name:12} {base.image_size:>3} {config.batch_size:>5} {steps:>5} {t_train.wall:8.1f} "
                  f"{steps / t_train.wall:7.1f} {len(samples) / t_sample.wall:12.1f} {config.guidance_scale:5.1f}"
                  f"   (warm-up {warm.wall:.0f}s)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--preset", default="digits16-cpu")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the preset's)")
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--sample-steps", type=int, default=None, help="default: the model's")
    parser.add_argument("--guidance", type=float, action="append", default=None)
    parser.add_argument("--batch-size", type=int, default=256, help="sampling batch size")
    parser.add_argument("--threads", type=int, action="append", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-reference", action="store_true", help="skip the reference layout rows")
    parser.add_argument("--compile", action="store_true", help="torch.compile on CUDA")
    args = parser.parse_args()
    args.guidance = args.guidance or [conditional.PRESETS[args.preset].guidance_scale]
    if args.device == "cuda":
        bench_cuda(args)
    else:
        bench_cpu(args)


if __name__ == "__main__":
    main()
