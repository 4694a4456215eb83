"""What checking every image as it is read costs: images/s with and without the check, side by side.

Builds an ImageSet of N images (default 10,000 noisy colour gradients, 32×32 RGB, or the 16×16 grayscale
digits with --digits), then times, in one run and in alternating rounds:

* ``plain PIL``        — the reference: ``Image.open(path).load()`` on each file (what imgsynth did before),
* ``checked decode``   — ``ImageSet.load_image``: regular-file check, sha256 against the metadata, header
                          bounds, mode and size against the manifest, then the decode,
* ``raw read``         — ``open(path).read()`` of each file, no decoding (the I/O floor),
* ``checked read``     — ``ImageSet.read_bytes``: the same bytes with the file check and the sha256
                          (what a feature-cache hit and ``export`` pay).

Usage: ``python benchmarks/bench_read.py [--images 10000] [--rounds 3] [--digits]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from imgsynth.imageset import ImageSet, ImageSetWriter, Sample


def build_set(root: Path, count: int, digits: bool) -> ImageSet:
    rng = np.random.default_rng(0)
    writer = ImageSetWriter(root, [str(c) for c in range(10)])
    if digits:
        from sklearn.datasets import load_digits

        data = load_digits()
        pictures = [Image.fromarray((data.images[i % len(data.images)] * 16).clip(0, 255).astype(np.uint8))
                    .resize((16, 16), Image.Resampling.BICUBIC) for i in range(count)]
    else:
        gradient = np.linspace(0, 255, 32, dtype=np.float32)
        pictures = [Image.fromarray((gradient[None, :, None] * rng.random(3) + rng.normal(0, 20, (32, 32, 3)))
                                    .clip(0, 255).astype(np.uint8)) for _ in range(count)]
    writer.write_all(Sample(p, str(i % 10), image_id=f"img-{i:06d}") for i, p in enumerate(pictures))
    return writer.finalize()


def plain_pil(image_set: ImageSet) -> None:
    for i in range(len(image_set)):
        with Image.open(image_set.path_of(i)) as image:
            image.load()


def checked_decode(image_set: ImageSet) -> None:
    for i in range(len(image_set)):
        image_set.load_image(i)


def raw_read(image_set: ImageSet) -> None:
    for i in range(len(image_set)):
        with open(image_set.path_of(i), "rb") as handle:
            handle.read()


def checked_read(image_set: ImageSet) -> None:
    for i in range(len(image_set)):
        image_set.read_bytes(i)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--digits", action="store_true", help="16x16 grayscale digits instead of 32x32 RGB")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        image_set = build_set(Path(tmp) / "set", args.images, args.digits)
        size = image_set.image_size
        mean_bytes = sum(image_set.path_of(i).stat().st_size for i in range(len(image_set))) / len(image_set)
        print(f"load average {os.getloadavg()[0]:.2f}; {len(image_set)} images {size[0]}x{size[1]} "
              f"{image_set.manifest['image_mode']}, {mean_bytes:.0f} bytes each; best of {args.rounds} rounds "
              "(files in the page cache)")
        paths = {"plain PIL": plain_pil, "checked decode": checked_decode, "raw read": raw_read,
                 "checked read": checked_read}
        times: dict[str, list[float]] = {name: [] for name in paths}
        raw_read(image_set)  # warm the page cache
        for _ in range(args.rounds):
            for name, run in paths.items():
                started = time.perf_counter()
                run(image_set)
                times[name].append(time.perf_counter() - started)
        best = {name: min(values) for name, values in times.items()}
        print(f"{'path':16} {'images/s':>10} {'median s':>9}  relative")
        for name in paths:
            reference = best["plain PIL"] if "decode" in name or "PIL" in name else best["raw read"]
            print(f"{name:16} {len(image_set) / best[name]:10.0f} {statistics.median(times[name]):9.3f}  "
                  f"{best[name] / reference:.2f}x the time of {'plain PIL' if reference == best['plain PIL'] else 'raw read'}")
        print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
