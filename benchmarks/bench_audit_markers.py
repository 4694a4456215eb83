"""How often `imgsynth audit` still finds imgsynth's images after the transformations a scraped copy meets.

Writes N generated 256×256 RGB images through imgsynth's one PNG writer with every marker (the XMP packet, the
invisible DWT-DCT watermark, a C2PA manifest signed with a throwaway chain made here), then copies them
through each transformation with Pillow's defaults (which keep no metadata, as most pipelines do), and audits
each folder twice: markers alone, and with ``--against`` the original set (near-copy matching, ``pixels:8``
at the default threshold). Prints the share of images each marker, and the audit overall, flags.

    python benchmarks/bench_audit_markers.py --images 40

The images are smooth random colour textures (bicubic upsampling of 16×16 noise): the watermark needs texture
to hide in; flat images carry it poorly, photographs better.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test signing chain

from imgsynth.audit import audit  # noqa: E402
from imgsynth.imageset import ImageSetWriter, Sample  # noqa: E402
from imgsynth.provenance.markers import Marking  # noqa: E402


def _texture(rng: np.random.Generator, size: int) -> Image.Image:
    small = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    return small.resize((size, size), Image.Resampling.BICUBIC)


def _jpeg(image: Image.Image) -> tuple[Image.Image, str, dict]:
    return image, "JPEG", {"quality": 90}


def _jpeg_keeping_xmp(image: Image.Image) -> tuple[Image.Image, str, dict]:
    return image, "JPEG", {"quality": 90, "xmp": image.info["xmp"]}  # a converter that copies XMP over


def _half(image: Image.Image) -> tuple[Image.Image, str, dict]:
    return image.resize((image.width // 2, image.height // 2), Image.Resampling.BICUBIC), "PNG", {}


def _crop(image: Image.Image) -> tuple[Image.Image, str, dict]:
    w, h = image.size
    dw, dh = int(w * 0.1), int(h * 0.1)
    return image.crop((dw, dh, w - dw, h - dh)), "PNG", {}


TRANSFORMS = {"lossless copy (bytes kept)": None, "PNG→JPEG q90": _jpeg, "PNG→JPEG q90, XMP kept": _jpeg_keeping_xmp,
              "resize to half": _half,
              "crop to 80%": _crop}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from c2pa_test_chain import make_chain

    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        chain, key = make_chain(root / "credentials")
        marking = Marking.of(watermark=True, c2pa_cert=str(chain), c2pa_key=str(key))
        start = time.perf_counter()
        writer = ImageSetWriter(root / "set", ["a"], kind="generated", generator={"kind": "bench"}, marking=marking)
        writer.write_all([Sample(_texture(rng, args.size), "a", seed=i, image_id=f"{i:05d}")
                          for i in range(args.images)])
        original = writer.finalize()
        print(f"{args.images} images of {args.size}x{args.size} written with XMP + watermark + C2PA in "
              f"{time.perf_counter() - start:.1f} s")
        header = f"{'transformation':<28} {'C2PA valid':>10} {'C2PA any':>8} {'IPTC':>6} {'wmark':>6} " \
                 f"{'markers':>8} {'+ --against':>11}"
        print(header)
        print("-" * len(header))
        for name, transform in TRANSFORMS.items():
            folder = root / "copies" / f"t{list(TRANSFORMS).index(name)}" / "cls"
            folder.mkdir(parents=True)
            for index in range(len(original)):
                if transform is None:
                    (folder / f"copy{index}.png").write_bytes(original.read_bytes(index))
                    continue
                image, fmt, options = transform(original.load_image(index))
                buffer = io.BytesIO()
                image.save(buffer, format=fmt, **options)
                (folder / f"copy{index}.{fmt.lower().replace('jpeg', 'jpg')}").write_bytes(buffer.getvalue())
            alone = audit(folder.parent)
            known = audit(folder.parent, [original.root])
            n = len(alone.rows)

            def share(predicate) -> str:  # noqa: ANN001
                return f"{sum(map(predicate, alone.rows)) / n:.0%}"

            print(f"{name:<28} {share(lambda r: r.c2pa == 'valid'):>10} {share(lambda r: bool(r.c2pa)):>8} "
                  f"{share(lambda r: bool(r.iptc_source_type)):>6} {share(lambda r: bool(r.watermark)):>6} "
                  f"{share(lambda r: r.synthetic):>8} {sum(r.synthetic for r in known.rows) / n:>11.0%}")


if __name__ == "__main__":
    main()
