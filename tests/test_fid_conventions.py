"""The FID Inception's resize conventions against the tools they are named after, with one weights file.

A random FID Inception (He-initialised convolutions: with PyTorch's default initialisation every image
gets nearly the same features and every FID is ~0) is saved once and handed to each tool where it loads
weights from: imgsynth's ``inception:<path>``, torch-fidelity's ``feature_extractor_weights_path``,
pytorch-fid's ``fid_inception_v3`` (its hub loader patched to return the same state dict). Nothing is
downloaded. Two folders of small RGB PNGs of different sizes (one not square) are compared:

- ``pytorch-fid``: imgsynth's FID equals pytorch-fid's ``calculate_fid_given_paths``, to 1e-4 relative;
- ``torch-fidelity``: imgsynth's FID equals torch-fidelity's ``calculate_metrics``, to 1e-4 relative;
- ``clean``: imgsynth's network input equals clean-fid's own resizer (``build_resizer("clean")``) exactly.

Inception at 299 px costs ~0.2 s of CPU per image, so each side extracts each folder once (module fixtures).
"""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image

from imgsynth.imageset import ImageSetWriter, Sample
from imgsynth.metrics.distances import frechet_distance
from imgsynth.metrics.extractors.registry import RESIZE_MODES
from imgsynth.metrics.features import create_extractor
from imgsynth.testing import random_fid_inception

PER_FOLDER = 8
RTOL = 1e-4
# 8 samples in 2048 dimensions: every tool's FD is biased alike, which is beside the point here; scipy's
# sqrtm (pytorch-fid) warns that the product of rank-deficient covariances is singular.
pytestmark = [pytest.mark.filterwarnings("ignore::imgsynth.metrics.distances.BiasedEstimateWarning"),
              pytest.mark.filterwarnings("ignore:Matrix is singular:RuntimeWarning")]


def _images(seed: int, size: tuple[int, int], smooth: bool) -> list[Image.Image]:
    """``PER_FOLDER`` RGB images of ``size`` = (width, height): noise, or noisy colour gradients."""
    rng = np.random.default_rng(seed)
    width, height = size
    out = []
    for _ in range(PER_FOLDER):
        if smooth:
            ramp = np.linspace(0, 1, width)[None, :, None] * rng.uniform(60, 200, 3)
            base = ramp + np.linspace(0, 1, height)[:, None, None] * rng.uniform(0, 50, 3)
            array = base + rng.normal(0, 12, (height, width, 3))
        else:
            array = rng.uniform(0, 255, (height, width, 3))
        out.append(Image.fromarray(np.clip(array, 0, 255).astype(np.uint8), "RGB"))
    return out


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A He-initialised FID Inception state dict in torch-fidelity's layout (which pytorch-fid's matches)."""
    return random_fid_inception(tmp_path_factory.mktemp("weights") / "inception-random.pth")


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two folders of PNGs: noise at 32 × 32, colour ramps at 48 × 40 (width × height)."""
    root = tmp_path_factory.mktemp("folders")
    out = []
    for name, images in (("a", _images(1, (32, 32), smooth=False)), ("b", _images(2, (48, 40), smooth=True))):
        folder = root / name
        folder.mkdir()
        for i, image in enumerate(images):
            image.save(folder / f"{i:02d}.png")
        out.append(folder)
    return out[0], out[1]


def _read(folder: Path) -> list[Image.Image]:
    return [Image.open(path).convert("RGB") for path in sorted(folder.glob("*.png"))]


@pytest.fixture(scope="module")
def ours(weights: Path, folders: tuple[Path, Path]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """imgsynth's features of both folders under the two conventions whose FID is compared (one pass each)."""
    out = {}
    for mode in ("pytorch-fid", "torch-fidelity"):
        extractor = create_extractor(f"inception:{weights}", "cpu", resize_mode=mode)
        out[mode] = tuple(extractor.extract(_read(folder), batch_size=PER_FOLDER) for folder in folders)
    return out


def test_clean_gives_exactly_clean_fids_network_input(weights, folders):
    from cleanfid.resize import build_resizer

    extractor = create_extractor(f"inception:{weights}", "cpu")  # the default
    assert extractor.resize_mode == "clean" and create_extractor(
        f"inception:{weights}", "cpu", resize_mode="clean").preprocessing == extractor.preprocessing
    resize = build_resizer("clean")  # what clean-fid's compute_fid(mode="clean") resizes with
    for folder in folders:
        for path in sorted(folder.glob("*.png")):
            theirs = resize(np.array(Image.open(path).convert("RGB")))  # as clean-fid's ResizeDataset reads it
            mine = extractor.preprocess(Image.open(path))
            assert mine.dtype == torch.float32 and mine.shape == (3, 299, 299)
            assert torch.equal(mine, torch.from_numpy(theirs.transpose(2, 0, 1).copy()))


def _in_their_subspace(features: tuple[np.ndarray, np.ndarray],
                       statistics: tuple[tuple[np.ndarray, np.ndarray], ...]) -> list[tuple[np.ndarray, np.ndarray]]:
    """A tool's (mu, sigma) of both folders in an orthonormal basis of the span of its features minus one
    mean. Both covariances and the mean difference lie in that span, and the Fréchet distance is unchanged
    by an orthonormal change of basis, so the tool's own FD function gives its 2048-d number exactly, without
    a 2048 × 2048 matrix function (pytorch-fid's scipy ``sqrtm`` of one costs ~13 s of CPU, torch-fidelity's
    ``eigvals`` ~4 s)."""
    basis, _ = np.linalg.qr((np.concatenate(features) - statistics[0][0]).T)
    return [(basis.T @ mu, basis.T @ sigma @ basis) for mu, sigma in statistics]


def test_pytorch_fid_convention_gives_pytorch_fids_fid(weights, folders, ours):
    from pytorch_fid import fid_score, inception

    state = torch.load(weights, weights_only=True)
    with mock.patch.object(inception, "load_state_dict_from_url", lambda *a, **k: state):
        model = inception.InceptionV3([inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    # fid_score.calculate_activation_statistics, keeping the activations it computes from.
    activations = tuple(fid_score.get_activations(sorted(folder.glob("*.png")), model, batch_size=PER_FOLDER,
                                                  dims=2048, device="cpu", num_workers=0) for folder in folders)
    statistics = tuple((np.mean(act, axis=0), np.cov(act, rowvar=False)) for act in activations)
    (mu_a, sigma_a), (mu_b, sigma_b) = _in_their_subspace(activations, statistics)
    theirs = fid_score.calculate_frechet_distance(mu_a, sigma_a, mu_b, sigma_b)
    features = ours["pytorch-fid"]
    for mine, (mu, sigma) in zip(features, statistics):
        np.testing.assert_allclose(mine.double().mean(0).numpy(), mu, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(np.cov(mine.double().numpy(), rowvar=False), sigma, rtol=1e-3, atol=1e-8)
    assert theirs > 1e-3  # the folders differ: a 0 would compare nothing
    assert frechet_distance(*features) == pytest.approx(theirs, rel=RTOL)


def test_torch_fidelity_convention_gives_torch_fidelitys_fid(weights, folders, ours):
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.utils import (create_feature_extractor, extract_featuresdict_from_input_id,
                                      resolve_feature_extractor, resolve_feature_layer_for_metric)

    # torch_fidelity.calculate_metrics(fid=True, ...) step by step, keeping the features.
    settings = dict(input1=str(folders[0]), input2=str(folders[1]), fid=True, cuda=False, batch_size=PER_FOLDER,
                    feature_extractor_weights_path=str(weights), cache=False, save_cpu_ram=True, verbose=False)
    layer = resolve_feature_layer_for_metric("fid", **settings)
    extractor = create_feature_extractor(resolve_feature_extractor(**settings), [layer], **settings)
    features = tuple(extract_featuresdict_from_input_id(i, extractor, **settings)[layer] for i in (1, 2))
    statistics = tuple((s["mu"], s["sigma"]) for s in map(fid_features_to_statistics, features))
    projected = _in_their_subspace(tuple(f.numpy() for f in features), statistics)
    theirs = fid_statistics_to_metric(*({"mu": mu, "sigma": sigma} for mu, sigma in projected), False)[KEY_METRIC_FID]
    for mine, (mu, _) in zip(ours["torch-fidelity"], statistics):
        np.testing.assert_allclose(mine.double().mean(0).numpy(), mu, rtol=1e-4, atol=1e-6)
    assert theirs > 1e-3
    assert frechet_distance(*ours["torch-fidelity"]) == pytest.approx(theirs, rel=RTOL)


def test_the_conventions_differ_and_are_recorded(weights, ours):
    # Same weights, other resize: other features (the reason the convention must be chosen and recorded).
    assert not torch.allclose(ours["pytorch-fid"][0], ours["torch-fidelity"][0], rtol=1e-3)
    built = {mode: create_extractor(f"inception:{weights}", "cpu", resize_mode=mode) for mode in RESIZE_MODES}
    assert [e.resize_mode for e in built.values()] == list(RESIZE_MODES)
    assert len({e.preprocessing for e in built.values()}) == 3 and len({e.id for e in built.values()}) == 3
    assert built["clean"].id == f"inception-v3-fid:{built['clean'].weights_sha256[:16]}"  # as before


# --------------------------------------------------------------------------------------------- CLI, recipes

def _write_set(root: Path, images: list[Image.Image]) -> Path:
    writer = ImageSetWriter(root, ["x"])
    writer.write_all(Sample(image, "x") for image in images)
    return writer.finalize().root


def test_metrics_cli_takes_the_resize_mode(weights, folders, ours, tmp_path, run_cli):
    """One end-to-end run: the flag reaches the extractor (its FID is the pytorch-fid convention's)."""
    images = _read(folders[0])
    half = PER_FOLDER // 2
    reference, candidate = (_write_set(tmp_path / name, part)
                            for name, part in (("ref", images[:half]), ("cand", images[half:])))
    out = tmp_path / "fid.csv"
    code, _, err = run_cli("metrics", reference, candidate, "--features", f"inception:{weights}", "--metrics", "fid",
                           "--device", "cpu", "--cache-dir", tmp_path / "cache", "--out", out,
                           "--resize-mode", "pytorch-fid")
    assert code == 0, err
    import pandas as pd

    value = pd.read_csv(out).query("`class` == 'all'")["value"].item()
    features = ours["pytorch-fid"][0]
    assert value == pytest.approx(frechet_distance(features[half:], features[:half]), rel=RTOL)


@pytest.mark.parametrize("args, message", [
    (("--features", "inception", "--resize-mode", "bicubic"), "error: --resize-mode 'bicubic' is not a resize mode; choose one of clean"),
    (("--features", "pixels", "--resize-mode", "clean"), "'pixels' cannot resize by 'clean'"),
])
def test_metrics_and_features_refuse_a_resize_mode_in_one_line(args, message, tmp_path, run_cli):
    image_set = _write_set(tmp_path / "set", _images(3, (8, 8), smooth=True)[:2])
    for command in (("metrics", image_set, image_set, "--out", tmp_path / "m.csv"), ("features", image_set)):
        code, _, err = run_cli(*command, *args, "--cache-dir", tmp_path / "cache")
        assert code == 2 and message in err and "Traceback" not in err, err
        assert not (tmp_path / "m.csv").exists()


@pytest.mark.parametrize("table, message", [
    ({"inception": "pytorch-fid", "clip": "clean"}, "'clip' is not among [metrics] extractors"),
    ({"inception": "tf"}, "inception = 'tf': choose one of clean, pytorch-fid, torch-fidelity"),
    ({"domain": "clean"}, "domain = 'clean': the domain extractor has a preprocessing of its own"),
])
def test_a_recipe_names_a_resize_mode_per_extractor_checked_before_the_run(table, message):
    from imgsynth.experiments.config import RecipeError, recipe_from_dict

    metrics = {"extractors": ["domain", "inception"]}
    assert recipe_from_dict({"metrics": {**metrics, "resize_mode": {"inception": "torch-fidelity"}}}).metrics \
        .resize_mode == {"inception": "torch-fidelity"}
    with pytest.raises(RecipeError) as caught:
        recipe_from_dict({"metrics": {**metrics, "resize_mode": table}})
    assert str(caught.value).startswith("recipe: [metrics.resize_mode] ") and message in str(caught.value)


def test_the_loop_evaluates_with_the_recipes_resize_mode(monkeypatch):
    """``Experiment._evaluate`` hands evaluate an extractor built with the recipe's mode (others by name)."""
    from types import SimpleNamespace

    import importlib

    from imgsynth.experiments.config import recipe_from_dict
    from imgsynth.experiments.loop import Experiment, GenerationKey

    recipe = recipe_from_dict({"metrics": {"extractors": ["pixels", "inception"],
                                           "resize_mode": {"inception": "pytorch-fid"}},
                               "classifier": {"enabled": False}})
    evaluate_module = importlib.import_module("imgsynth.metrics.evaluate")
    features_module = importlib.import_module("imgsynth.metrics.features")
    built, asked = [], []
    monkeypatch.setattr(features_module, "create_extractor",
                        lambda name, device=None, *, resize_mode=None: built.append((name, resize_mode)) or name)
    monkeypatch.setattr(evaluate_module, "evaluate", lambda samples, real, extractor, **_: asked.append(extractor) or [])
    loop = SimpleNamespace(recipe=recipe)
    loop._extractor_names = lambda ckpt: Experiment._extractor_names(loop, ckpt)
    Experiment._evaluate(loop, None, None, None, None, GenerationKey(0, "replace", 1))
    assert built == [("inception", "pytorch-fid")] and asked == ["pixels", "inception"]
