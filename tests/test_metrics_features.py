"""Feature extractors through the loading paths users take (tiny self-built models), resize convention, cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imgsynth.imageset import ImageSet, ImageSetWriter, Sample
from imgsynth.metrics import features as F
from imgsynth.metrics.extractors import inception
from imgsynth.metrics.features import (FeatureExtractor, cached_features, clean_resize, create_extractor,
                                       feature_cache_dir)

TINY_CLIP = {"embed_dim": 16,
             "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
             "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def random_images(n: int, seed: int, size: tuple[int, int] = (16, 16), mode: str = "L") -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
    return [Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode) for _ in range(n)]


def write_set(root: Path, images: list[Image.Image], labels: list[str], classes: list[str]) -> ImageSet:
    writer = ImageSetWriter(root, classes)
    writer.write_all(Sample(image, label, caption=f"a {label}") for image, label in zip(images, labels))
    return writer.finalize()


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory: pytest.TempPathFactory) -> ImageSet:
    return write_set(tmp_path_factory.mktemp("set") / "tiny", random_images(8, 0), ["a", "b"] * 4, ["a", "b"])


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight open_clip model saved in open_clip's local-dir layout (config + safetensors)."""
    import open_clip
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("clip") / "tiny-clip"
    folder.mkdir()
    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY_CLIP)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP, "preprocess_cfg": {}}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder


# --------------------------------------------------------------------------------------------- registry

def test_unknown_extractor_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown feature extractor 'vgg'.*clip, dinov2, domain, inception"):
        create_extractor("vgg")


def test_registry_is_one_line_per_extractor():
    @F.register_extractor("test-constant")
    class Constant(FeatureExtractor):
        def __init__(self, argument: str, device: torch.device | None = None) -> None:
            self.device, self.name, self.id, self.preprocessing = torch.device("cpu"), argument, "c", "none"

    try:
        extractor = create_extractor("test-constant:xyz")
        assert isinstance(extractor, Constant) and extractor.name == "xyz"
        assert create_extractor(extractor) is extractor
    finally:
        F.EXTRACTORS.unregister("test-constant")


def test_a_taken_extractor_name_is_refused_naming_both():
    class Other(FeatureExtractor):
        pass

    with pytest.raises(ValueError, match="feature extractor 'pixels' is already registered as "
                                         "imgsynth.metrics.extractors.pixels:PixelExtractor"):
        F.register_extractor("pixels")(Other)
    assert isinstance(create_extractor("pixels"), F.PixelExtractor)


# --------------------------------------------------------------------------------------------- inception

def test_inception_missing_weights_says_what_to_download_and_where(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    expected = tmp_path / "torch" / "hub" / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth"
    with pytest.raises(FileNotFoundError) as error:
        create_extractor("inception", device="cpu")
    message = str(error.value)
    assert str(expected) in message
    assert "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" in message
    assert "Nothing is downloaded" in message
    with pytest.raises(FileNotFoundError, match="the path you gave"):
        create_extractor(f"inception:{tmp_path / 'nowhere.pth'}", device="cpu")


def random_inception_state_dict(monkeypatch: pytest.MonkeyPatch) -> dict[str, torch.Tensor]:
    """torch-fidelity's Inception with random weights (its constructor insists on loading some)."""
    import torch_fidelity.feature_extractor_inceptionv3 as module

    with monkeypatch.context() as patch:
        patch.setattr(module, "load_state_dict_from_url", lambda *a, **k: {})
        patch.setattr(module.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None)
        torch.manual_seed(0)
        model = module.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    return model.state_dict()


def test_inception_loads_weights_from_the_cache_path_and_resizes_with_pil_bicubic(tmp_path, monkeypatch):
    state = random_inception_state_dict(monkeypatch)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    # Random weights cannot carry the published name (its -6726825d part is checked against the file's
    # sha256 before loading), so the cache name is one that claims these weights' own digest.
    scratch = tmp_path / "scratch.pth"
    torch.save(state, scratch)
    monkeypatch.setattr(inception, "INCEPTION_FILE", f"weights-inception-2015-12-05-{F.file_digest(scratch)[:8]}.pth")
    path = F.default_inception_weights()
    path.parent.mkdir(parents=True)
    scratch.rename(path)
    extractor = create_extractor("inception", device="cpu")
    assert extractor.id.startswith("inception-v3-fid:") and len(extractor.id) == len("inception-v3-fid:") + 16

    image = random_images(1, 1, size=(20, 12), mode="RGB")[0]
    # The default convention is clean-fid's: PIL bicubic per channel in float, not rounded to uint8.
    from cleanfid.resize import make_resizer

    independent = make_resizer("PIL", False, "bicubic", (299, 299))(np.asarray(image)).transpose(2, 0, 1)
    pixels = extractor.preprocess(image)
    assert pixels.dtype == torch.float32 and torch.equal(pixels, torch.from_numpy(independent.copy()))
    assert extractor.resize_mode == "clean"
    # The convention matters: a plain tensor bilinear resize gives other pixels.
    small = torch.from_numpy(np.asarray(image).transpose(2, 0, 1).copy())[None].float()
    bilinear = torch.nn.functional.interpolate(small, size=(299, 299), mode="bilinear", align_corners=False)
    assert (bilinear.round() - pixels.float()).abs().max() > 2

    features = extractor.extract(random_images(1, 2, mode="L"))
    assert features.shape == (1, 2048) and torch.isfinite(features).all()


def test_inception_wrong_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "weights.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, bad)
    with pytest.raises(ValueError, match="not the FID Inception weights"):
        create_extractor(f"inception:{bad}", device="cpu")


# --------------------------------------------------------------------------------------------- CLIP

def test_clip_from_a_local_folder(tiny_clip_dir):
    import open_clip

    extractor = create_extractor(f"clip:{tiny_clip_dir}", device="cpu")
    assert extractor.id.startswith("clip:tiny-clip:") and extractor.id.endswith(":unit-norm")
    assert "pil-bicubic" in extractor.preprocessing
    images = random_images(3, 3, size=(20, 12), mode="RGB")  # not square: resize shorter side, crop centre
    _, _, open_clip_preprocess = open_clip.create_model_and_transforms(f"local-dir:{tiny_clip_dir}")
    for image in images:
        assert torch.allclose(extractor.preprocess(image), open_clip_preprocess(image), atol=1e-6)
    features = extractor.extract(images, batch_size=2)
    assert features.shape == (3, 16)
    assert torch.allclose(features.norm(dim=1), torch.ones(3), atol=1e-6)
    assert torch.equal(features, extractor.extract(images, batch_size=2))  # deterministic
    assert torch.allclose(features, extractor.extract(images, batch_size=64), atol=1e-6)  # batching aside
    text = extractor.encode_text(["a 1", "a 2", "a 1"])
    assert text.shape == (3, 16) and torch.allclose(text.norm(dim=1), torch.ones(3), atol=1e-6)
    assert torch.equal(text[0], text[2]) and not torch.equal(text[0], text[1])


def test_clip_architecture_name_with_checkpoint_file(tiny_clip_dir, tmp_path):
    import open_clip
    from open_clip import factory

    config = tmp_path / "imgsynth-tiny-test.json"
    config.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(config)
    try:
        checkpoint = tiny_clip_dir / "open_clip_model.safetensors"
        by_name = create_extractor(f"clip:imgsynth-tiny-test:{checkpoint}", device="cpu")
        by_folder = create_extractor(f"clip:{tiny_clip_dir}", device="cpu")
        images = random_images(2, 4, mode="RGB")
        assert torch.allclose(by_name.extract(images), by_folder.extract(images), atol=1e-6)
        assert by_name.id.split(":")[2] == F.file_digest(checkpoint)[:16]
    finally:
        factory._MODEL_CONFIGS.pop("imgsynth-tiny-test", None)


def test_clip_weight_errors(tmp_path, monkeypatch, tiny_clip_dir):
    import huggingface_hub.constants

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(ValueError, match="names no weights"):
        create_extractor("clip:ViT-B-32", device="cpu")
    with pytest.raises(FileNotFoundError, match="not in the local cache.*`hf download "):
        create_extractor("clip:ViT-B-32:laion2b_s34b_b79k", device="cpu")
    with pytest.raises(FileNotFoundError, match="neither a file nor a pretrained tag"):
        create_extractor(f"clip:ViT-B-32:{tmp_path / 'missing.bin'}", device="cpu")
    with pytest.raises(ValueError, match="unknown open_clip model"):
        create_extractor("clip:NoSuchNet:openai", device="cpu")
    empty = tmp_path / "no-weights"
    empty.mkdir()
    (empty / "open_clip_config.json").write_text((tiny_clip_dir / "open_clip_config.json").read_text())
    with pytest.raises(FileNotFoundError, match="no weights file"):
        create_extractor(f"clip:{empty}", device="cpu")


# --------------------------------------------------------------------------------------------- DINOv2

def test_dinov2_from_a_save_pretrained_folder(tmp_path):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2, image_size=56,
                          patch_size=14)
    Dinov2Model(config).save_pretrained(tmp_path / "dino")
    extractor = create_extractor(f"dinov2:{tmp_path / 'dino'}", device="cpu")
    image = random_images(1, 5, size=(16, 16), mode="L")[0]
    independent = np.asarray(image.convert("RGB").resize((224, 224), Image.BICUBIC), dtype=np.float32) / 255
    expected = (independent - np.array(F.IMAGENET_MEAN)) / np.array(F.IMAGENET_STD)
    assert np.allclose(extractor.preprocess(image).numpy(), expected.transpose(2, 0, 1), atol=1e-5)
    features = extractor.extract(random_images(3, 6))
    assert features.shape == (3, 32) and torch.isfinite(features).all()
    assert extractor.id.startswith("dinov2:Dinov2Model:")


def test_dinov2_missing_model_says_what_to_do(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(FileNotFoundError, match="`hf download facebook/dinov2-small`"):
        create_extractor("dinov2:facebook/dinov2-small", device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="does not hold a loadable model"):
        create_extractor(f"dinov2:{tmp_path / 'empty'}", device="cpu")


# --------------------------------------------------------------------------------------------- domain

def test_domain_extractor_is_the_classifier_penultimate_layer(tiny_set, tmp_path):
    from imgsynth.classifier import ClassifierConfig, penultimate_features, train_classifier

    checkpoint = train_classifier(tiny_set, tmp_path / "classifier",
                                  ClassifierConfig(epochs=1, width=4, batch_size=8), progress=False)
    extractor = create_extractor(f"domain:{checkpoint}", device="cpu")
    assert extractor.id.startswith("domain:") and "bicubic" in extractor.preprocessing
    features = extractor.extract(tiny_set)
    assert features.shape[0] == len(tiny_set)
    assert torch.allclose(features, penultimate_features(checkpoint, tiny_set))
    assert torch.equal(cached_features(tiny_set, extractor, tmp_path / "cache"), features)
    with pytest.raises(FileNotFoundError, match="no such classifier checkpoint"):
        create_extractor(f"domain:{tmp_path / 'missing'}", device="cpu")


# --------------------------------------------------------------------------------------------- cache

class CountingExtractor(FeatureExtractor):
    """Mean pixel value per channel after a clean resize to 4 × 4; counts how often it runs."""

    def __init__(self, version: str = "1") -> None:
        self.device, self.name, self.id = torch.device("cpu"), "counting", f"counting:{version}"
        self.preprocessing = "rgb|pil-bicubic-uint8-4x4"
        self.calls = 0

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return F.to_uint8_tensor(clean_resize(image, (4, 4))).float()

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return batch.flatten(2).mean(dim=2)

    def extract(self, images, batch_size: int = 64, num_workers: int = 0) -> torch.Tensor:
        self.calls += 1
        return super().extract(images, batch_size, num_workers)


def test_cache_computes_once_and_checks_what_it_reads(tiny_set, tmp_path):
    extractor = CountingExtractor()
    first = cached_features(tiny_set, extractor, tmp_path)
    again = cached_features(tiny_set, extractor, tmp_path)
    assert extractor.calls == 1 and torch.equal(first, again) and first.shape == (8, 3)
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].suffix == ".safetensors"  # no temporary left behind
    # Another extractor version is another entry, never a stale hit.
    other = CountingExtractor("2")
    cached_features(tiny_set, other, tmp_path)
    assert other.calls == 1 and len(list(tmp_path.iterdir())) == 2
    # A damaged entry is recomputed and replaced.
    files[0].write_bytes(b"garbage")
    assert torch.equal(cached_features(tiny_set, extractor, tmp_path), first) and extractor.calls == 2
    # An entry whose metadata does not match (e.g. written for another set) is not trusted.
    from safetensors.torch import save_file

    save_file({"features": torch.zeros(8, 3)}, str(files[0]), metadata={"set_id": "other"})
    assert torch.equal(cached_features(tiny_set, extractor, tmp_path), first) and extractor.calls == 3


def test_cache_folder_follows_argument_then_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("IMGSYNTH_CACHE", str(tmp_path / "env"))
    assert feature_cache_dir() == tmp_path / "env" / "features"
    assert feature_cache_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("IMGSYNTH_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert feature_cache_dir() == tmp_path / "home" / ".cache" / "imgsynth" / "features"


def test_cache_key_depends_on_row_order(tiny_set, tmp_path):
    reordered = ImageSet(tiny_set.root, tiny_set.manifest, list(reversed(tiny_set.records)))
    assert reordered.id == tiny_set.id  # the set id names content, not order ...
    extractor = CountingExtractor()
    forward, backward = cached_features(tiny_set, extractor, tmp_path), cached_features(reordered, extractor, tmp_path)
    assert torch.equal(backward, forward.flip(0))  # ... but cached rows follow the order asked for


def test_extract_refuses_an_empty_image_list():
    with pytest.raises(ValueError, match="no images"):
        CountingExtractor().extract([])
