"""FID of two folders under each resize convention, next to pytorch-fid's and torch-fidelity's own FID.

    python benchmarks/fid_conventions.py                       # random-weight Inception, made-up folders
    python benchmarks/fid_conventions.py --weights weights-inception-2015-12-05-6726825d.pth A/ B/

Every tool gets the same weights file (pytorch-fid through its hub loader, patched to return it: nothing is
downloaded) and computes FID in full (2048-d). Without ``--weights`` the network is a He-initialised random
FID Inception, and without folders two small ones are written (8 noise images at 32 × 32, 8 colour ramps at
48 × 40), as in ``tests/test_fid_conventions.py``. Folders must hold images of one size each (pytorch-fid and
torch-fidelity batch them). Numbers only, no timing.
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from PIL import Image

from imgsynth.metrics.distances import frechet_distance
from imgsynth.metrics.extractors.registry import RESIZE_MODES
from imgsynth.metrics.features import create_extractor
from imgsynth.testing import random_fid_inception


def made_up_folders(root: Path, n: int = 8) -> list[Path]:
    """Noise at 32 × 32 and noisy colour ramps at 48 × 40 (width × height), ``n`` PNGs each."""
    out = []
    for name, seed, (width, height), smooth in (("a", 1, (32, 32), False), ("b", 2, (48, 40), True)):
        rng, folder = np.random.default_rng(seed), root / name
        folder.mkdir()
        for i in range(n):
            if smooth:
                array = (np.linspace(0, 1, width)[None, :, None] * rng.uniform(60, 200, 3)
                         + np.linspace(0, 1, height)[:, None, None] * rng.uniform(0, 50, 3)
                         + rng.normal(0, 12, (height, width, 3)))
            else:
                array = rng.uniform(0, 255, (height, width, 3))
            Image.fromarray(np.clip(array, 0, 255).astype(np.uint8), "RGB").save(folder / f"{i:02d}.png")
        out.append(folder)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="*", type=Path, help="two folders of PNG/JPEG images (default: made up)")
    parser.add_argument("--weights", type=Path, help="FID Inception weights (default: random, He-initialised)")
    parser.add_argument("--batch-size", type=int, default=50)
    args = parser.parse_args()
    if args.folders and len(args.folders) != 2:
        parser.error("give two folders, or none")
    warnings.simplefilter("ignore")
    scratch = Path(tempfile.mkdtemp(prefix="fid-conventions-"))
    weights = args.weights or random_fid_inception(scratch / "inception-random.pth")
    folders = args.folders or made_up_folders(scratch)
    files = [sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
             for folder in folders]

    print(f"weights {weights}; folders {folders[0]} ({len(files[0])}), {folders[1]} ({len(files[1])})")
    for mode in RESIZE_MODES:
        extractor = create_extractor(f"inception:{weights}", "cpu", resize_mode=mode)
        a, b = (extractor.extract([Image.open(p).convert("RGB") for p in f], batch_size=args.batch_size)
                for f in files)
        print(f"imgsynth --resize-mode {mode:<15} FID {frechet_distance(a, b):.8g}")

    from pytorch_fid import fid_score, inception

    state = torch.load(weights, weights_only=True)
    with mock.patch.object(inception, "load_state_dict_from_url", lambda *a, **k: state):
        model = inception.InceptionV3([inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    statistics = [fid_score.calculate_activation_statistics(f, model, batch_size=args.batch_size, dims=2048,
                                                             device="cpu", num_workers=0) for f in files]
    print(f"pytorch-fid                      FID {fid_score.calculate_frechet_distance(*statistics[0], *statistics[1]):.8g}")

    import torch_fidelity

    metrics = torch_fidelity.calculate_metrics(
        input1=str(folders[0]), input2=str(folders[1]), fid=True, cuda=False, batch_size=args.batch_size,
        feature_extractor_weights_path=str(weights), cache=False, save_cpu_ram=True, verbose=False,
        samples_find_deep=True)
    print(f"torch-fidelity                   FID {metrics['frechet_inception_distance']:.8g}")


if __name__ == "__main__":
    main()
