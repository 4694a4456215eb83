"""Benchmark the RGB CPU presets: training time and how recognisable the samples are, at 16 and 32 px.

Data: the embedded UCI digits drawn in colour (each image gets its own random bright foreground and dark
background colour, plus pixel noise), written as an RGB folder of class sub-folders and imported as any user's folder
would be (``folder:`` source), at 16 and 32 px. So the class is in the shape, not the colour, and a
sample is "recognisable" when a classifier trained on the *real* colour digits labels it as its class,
as for the grayscale digits (benchmarks/README.md). Side by side, in the same run: the classifier's
accuracy on real test images (the ceiling), and the `rgb16-cpu` / `rgb32-cpu` presets against
`digits16-cpu` with the data's channels (what a user got before these presets existed).

    python benchmarks/bench_rgb_presets.py                 # both sizes, 50 samples per class
    python benchmarks/bench_rgb_presets.py --size 16 --threads 2
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from imgsynth.classifier.config import ClassifierConfig  # noqa: E402
from imgsynth.classifier.evaluation import evaluate_classifier  # noqa: E402
from imgsynth.classifier.training import train_classifier  # noqa: E402
from imgsynth.pipelines.base import build_kind  # noqa: E402
from imgsynth.sources import import_source  # noqa: E402


def colour_digits(root: Path, seed: int = 0) -> Path:
    """The 1,797 UCI digits as 32 px RGB PNGs in class folders: random colours per image, shape = class."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    for index, (image, label) in enumerate(zip(digits.images, digits.target)):
        shape = np.asarray(Image.fromarray((image * 255 / 16).astype(np.uint8)).resize((32, 32), Image.BILINEAR),
                           dtype=np.float64)[..., None] / 255
        # Any hue, but the digit brighter than its ground, as in photos of written digits.
        foreground, background = rng.uniform(140, 255, 3), rng.uniform(0, 70, 3)
        pixels = shape * foreground + (1 - shape) * background + rng.normal(0, 6, (32, 32, 3))
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB").save(folder / f"{index:04d}.png")
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, action="append", help="image size (repeatable; default 16 and 32)")
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, action="append", default=[],
                        help="also train the rgb preset with this many steps (repeatable), to choose its schedule")
    parser.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                        help="include digits16-cpu on the colour data (what a user got before the RGB presets)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = args.size or [16, 32]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        folder = colour_digits(work / "colour-digits")
        print(f"load average at start: {os.getloadavg()[0]:.2f}; torch threads {args.threads}")
        header = f"{'size':>4} {'preset':<20} {'train s':>8} {'sample s':>8} {'recognised':>10} {'real-test acc':>13}"
        print(header)
        print("-" * len(header))
        for size in sizes:
            train, test = import_source(f"folder:{folder}", work / f"real{size}", size=size, mode="RGB",
                                        test_fraction=0.2, seed=0)
            classifier = train_classifier(train, work / f"clf{size}", ClassifierConfig(), progress=False)
            ceiling = evaluate_classifier(classifier, test).accuracy
            rows = [(f"rgb{size}-cpu", {})] + [(f"rgb{size}-cpu", {"train_steps": n}) for n in args.steps]
            rows += [("digits16-cpu", {})] if args.baseline else []
            for preset, extra in rows:
                generator = build_kind("conditional", {"preset": preset, **extra})
                t0 = time.perf_counter()
                label = preset + "".join(f" {k}={v}" for k, v in extra.items())
                model = generator.fit(train, work / f"model{size}-{label.replace(' ', '_')}", seed=0, progress=False)
                trained = time.perf_counter() - t0
                t0 = time.perf_counter()
                samples = generator.sample(model, work / f"samples{size}-{label.replace(' ', '_')}", args.per_class, seed=1,
                                           progress=False)
                sampled = time.perf_counter() - t0
                recognised = evaluate_classifier(classifier, samples).accuracy
                print(f"{size:>4} {label:<20} {trained:>8.1f} {sampled:>8.1f} {recognised:>10.3f} {ceiling:>13.3f}")
        print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
