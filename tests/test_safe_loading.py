"""One safe loading rule: a malicious pickle handed to any weight loader never runs, and is one error line.

Every case writes a file whose unpickling would call ``os.makedirs(marker)``, feeds it to one loader the
way a user would (the CLI where there is one), and checks that the marker never appears and that the
command fails with a single ``error:`` line naming the file, without a traceback.
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imgsynth.imageset import ImageSet, ImageSetWriter, Sample
from imgsynth.metrics import features as F
from imgsynth.metrics.extractors import inception
from imgsynth.metrics.features import create_extractor
from imgsynth.safe_loading import (WEIGHT_LOADERS, UnsafeFileError, check_claimed_digest, claimed_digest,
                                   load_torch_file)

PUBLISHED = "weights-inception-2015-12-05-6726825d.pth"
TINY_CLIP = {"embed_dim": 16,
             "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
             "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


class Payload:
    """Unpickling this calls ``os.makedirs(marker)``: the stand-in for arbitrary code in a weights file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return os.makedirs, (self.marker,)


def evil_torch_file(path: Path, marker: Path) -> Path:
    """A ``torch.save`` zip file whose pickle runs code: a tensor next to the payload, as a real attack."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"weight": torch.zeros(2), "payload": Payload(marker)}, path)
    return path


def evil_pickle_file(path: Path, marker: Path, protocol: int) -> Path:
    """A plain ``pickle.dump`` (the legacy, non-zip torch format) whose unpickling runs code."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        pickle.dump({"payload": Payload(marker)}, handle, protocol=protocol)
    return path


def without_logging_errors(err: str) -> str:
    """``err`` less the reports of the logging module's own write failures ("--- Logging error ---" up to
    its "Arguments:" line): under pytest, a library log handler may still hold the stderr of an earlier
    test, now closed, and that report carries a traceback that is not the command's."""
    kept, skipping = [], False
    for line in err.splitlines():
        if "--- Logging error ---" in line:  # may follow a progress bar's text on the same line
            skipping = True
        elif skipping and line.startswith("Arguments:"):
            skipping = False
        elif not skipping:
            kept.append(line)
    return "\n".join(kept)


def assert_refused(result: tuple[int, str, str], named: str | Path, marker: Path, reason: str = "refused") -> str:
    """The command failed, its last stderr line is the one ``error:`` line naming ``named``, no code ran."""
    code, out, err = result
    assert not marker.exists(), "the pickle's code ran"
    assert code == 2, out
    assert "Traceback" not in out + without_logging_errors(err), err
    lines = err.rstrip().splitlines()
    assert lines and lines[-1].startswith("error: "), err  # a multi-line message would not end so
    assert sum(line.startswith("error:") for line in lines) == 1, err
    assert str(named) in lines[-1] and reason in lines[-1], lines[-1]
    return lines[-1]


def random_images(n: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), "RGB") for _ in range(n)]


@pytest.fixture(scope="module")
def two_sets(tmp_path_factory: pytest.TempPathFactory) -> tuple[ImageSet, ImageSet]:
    """Two tiny labeled sets for ``imgsynth metrics A B``."""
    sets = []
    for seed in (0, 1):
        writer = ImageSetWriter(tmp_path_factory.mktemp("sets") / f"set{seed}", ["a", "b"])
        writer.write_all(Sample(image, label, caption=f"a {label}")
                         for image, label in zip(random_images(4, seed), ["a", "b"] * 2))
        sets.append(writer.finalize())
    return sets[0], sets[1]


@pytest.fixture
def metrics_cli(run_cli, two_sets, tmp_path):
    """``imgsynth metrics A B --features SPEC`` on the CPU."""
    def invoke(features: str) -> tuple[int, str, str]:
        return run_cli("metrics", two_sets[0].root, two_sets[1].root, "--features", features,
                       "--out", tmp_path / "metrics.csv", "--device", "cpu")
    return invoke


@pytest.fixture(scope="module")
def inception_state() -> dict[str, torch.Tensor]:
    """torch-fidelity's own Inception with random weights (its constructor insists on loading some)."""
    import torch_fidelity.feature_extractor_inceptionv3 as module

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(module, "load_state_dict_from_url", lambda *a, **k: {})
        patch.setattr(module.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None)
        torch.manual_seed(0)
        model = module.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    return model.state_dict()


def forbid_torch_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything calls torch.load (a refusal must come before any unpickling)."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.load was called")
    monkeypatch.setattr(torch, "load", refuse)


# --------------------------------------------------------------------------------------------- the rule itself

@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch.save", "pickle-2", "pickle-4"])
def test_load_torch_file_refuses_code_in_every_pickle_format(tmp_path, writer):
    marker = tmp_path / "marker"
    path = tmp_path / "state.pt"
    if writer == "torch.save":
        evil_torch_file(path, marker)
    else:
        evil_pickle_file(path, marker, protocol=int(writer[-1]))
    with pytest.raises(UnsafeFileError) as error:
        load_torch_file(path, "test weights")
    message = str(error.value)
    assert not marker.exists()
    assert "\n" not in message and message.startswith(f"{path}: test weights: refused: ")
    if writer != "pickle-4":  # protocol 4 frames are refused before the unpickler sees the call
        assert "it calls os.makedirs" in message


def test_load_torch_file_reads_plain_state_and_names_broken_files(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"step": 3, "weight": torch.ones(2)}, good)
    state = load_torch_file(good, "test state")
    assert state["step"] == 3 and torch.equal(state["weight"], torch.ones(2))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:100])
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    for broken in (truncated, empty):
        with pytest.raises(UnsafeFileError, match=f"^{broken}: test state: unreadable") as error:
            load_torch_file(broken, "test state")
        assert "\n" not in str(error.value)
    listed = tmp_path / "list.pt"
    torch.save([torch.ones(1)], listed)
    with pytest.raises(UnsafeFileError, match="holds a list, expected a dict of tensors"):
        load_torch_file(listed, "test state")
    with pytest.raises(FileNotFoundError):
        load_torch_file(tmp_path / "missing.pt", "test state")


def test_a_hub_style_name_claims_a_digest_and_is_held_to_it(tmp_path):
    assert claimed_digest(PUBLISHED) == "6726825d"
    assert claimed_digest("my-cafe.pth") is None and claimed_digest("weights.pth") is None
    check_claimed_digest(tmp_path / PUBLISHED, "6726825d" + "0" * 56, "w")
    check_claimed_digest(tmp_path / "weights.pth", "ab" * 32, "w")
    with pytest.raises(UnsafeFileError, match="claims sha256 6726825d.*sha256 is abababab"):
        check_claimed_digest(tmp_path / PUBLISHED, "ab" * 32, "w")


def test_imgsynth_calls_torch_load_in_one_place_and_never_trusts_remote_code():
    """Every torch.load in the package is the safe one; no loader is ever given trust_remote_code."""
    root = Path(importlib.import_module("imgsynth").__file__).parent
    offenders = []
    for source in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                func = node.func
                if isinstance(func, ast.Attribute) and func.attr == "load" and \
                        isinstance(func.value, ast.Name) and func.value.id == "torch" and source.name != "safe_loading.py":
                    offenders.append(f"{source}:{node.lineno} torch.load")
                for keyword in node.keywords:
                    if keyword.arg == "trust_remote_code" or (
                            keyword.arg == "weights_only" and getattr(keyword.value, "value", True) is not True):
                        offenders.append(f"{source}:{node.lineno} {keyword.arg}")
    assert offenders == []


def test_every_listed_loader_names_real_code():
    names = [loader.name for loader in WEIGHT_LOADERS]
    assert len(names) == len(set(names))
    for loader in WEIGHT_LOADERS:
        module_name, attributes = loader.where, []
        while True:
            try:
                target = importlib.import_module(module_name)
                break
            except ModuleNotFoundError:
                module_name, _, attribute = module_name.rpartition(".")
                attributes.insert(0, attribute)
        for attribute in attributes:
            target = getattr(target, attribute)
        assert callable(target), loader.where
        assert loader.reads and loader.rule


# --------------------------------------------------------------------------------------------- Inception

@pytest.mark.parametrize("writer", ["torch.save", "pickle-2"])
def test_inception_by_flag_refuses_a_pickle(metrics_cli, tmp_path, writer):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pth"
    evil_torch_file(path, marker) if writer == "torch.save" else evil_pickle_file(path, marker, protocol=2)
    line = assert_refused(metrics_cli(f"inception:{path}"), path, marker)
    assert "arbitrary code" in line and "os.makedirs" in line


def test_inception_from_a_recipe_refuses_a_pickle(tmp_path):
    from imgsynth.experiments.config import load_recipe
    from imgsynth.experiments.loop import Experiment

    marker = tmp_path / "marker"
    path = evil_torch_file(tmp_path / "evil.pth", marker)
    recipe_file = tmp_path / "recipe.toml"
    recipe_file.write_text(f'name = "evil"\n\n[metrics]\nextractors = ["inception:{path}"]\n', encoding="utf-8")
    experiment = Experiment(load_recipe(recipe_file), tmp_path / "run")
    for name in experiment._extractor_names(None):  # the names the loop hands to evaluate → create_extractor
        with pytest.raises(UnsafeFileError, match=f"{path}: .*refused: pickle-based file"):
            create_extractor(name, device="cpu")
    assert not marker.exists()


def test_inception_at_the_default_path_under_the_published_name_is_digest_checked_first(
        metrics_cli, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    marker = tmp_path / "marker"
    path = evil_torch_file(F.default_inception_weights(), marker)
    assert path.name == PUBLISHED
    forbid_torch_load(monkeypatch)
    actual = F.file_digest(path)[:8]
    line = assert_refused(metrics_cli("inception"), path, marker)
    assert "claims sha256 6726825d" in line and f"sha256 is {actual}" in line


def test_inception_at_the_default_path_with_a_matching_digest_still_runs_no_code(metrics_cli, tmp_path,
                                                                                  monkeypatch):
    """Even a file that passes the digest check (here: a name claiming its own digest) is never unpickled
    with code: the digest is a check of identity, weights_only=True is the check of safety."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    marker = tmp_path / "marker"
    scratch = evil_torch_file(tmp_path / "scratch.pth", marker)
    monkeypatch.setattr(inception, "INCEPTION_FILE", f"weights-inception-2015-12-05-{F.file_digest(scratch)[:8]}.pth")
    path = F.default_inception_weights()
    path.parent.mkdir(parents=True)
    scratch.rename(path)
    line = assert_refused(metrics_cli("inception"), path, marker)
    assert "arbitrary code" in line


def test_legitimate_inception_weights_under_the_published_name_with_another_digest_are_refused(
        inception_state, tmp_path, monkeypatch):
    path = tmp_path / PUBLISHED
    torch.save(inception_state, path)
    forbid_torch_load(monkeypatch)
    with pytest.raises(UnsafeFileError) as error:
        create_extractor(f"inception:{path}", device="cpu")
    message = str(error.value)
    assert "\n" not in message and str(path) in message
    assert "6726825d" in message and F.file_digest(path)[:8] in message


@pytest.mark.parametrize("layout", ["published", "state_dict"])
def test_legitimate_inception_weights_load_safely_and_give_torch_fidelitys_features(inception_state, tmp_path,
                                                                                     monkeypatch, layout):
    """Both the published file's layout (a plain dict converted from TensorFlow: no BatchNorm
    num_batches_tracked, no version metadata) and a module's state_dict() load, exactly as torch-fidelity
    itself would load them."""
    import torch_fidelity.feature_extractor_inceptionv3 as module

    path = tmp_path / "fid-inception.pth"
    if layout == "published":
        torch.save({k: v for k, v in inception_state.items() if not k.endswith("num_batches_tracked")}, path)
    else:
        torch.save(inception_state, path)
    real_load, calls = torch.load, []

    def spy(*args: object, **kwargs: object) -> object:
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch-fidelity tried to download the weights")

    with monkeypatch.context() as patch:
        patch.setattr(torch, "load", spy)
        patch.setattr(module, "load_state_dict_from_url", no_download)
        extractor = create_extractor(f"inception:{path}", device="cpu")
    assert calls == [True], "one torch.load, with weights_only=True"
    assert isinstance(extractor.model, module.FeatureExtractorInceptionV3)
    assert extractor.id == f"inception-v3-fid:{F.file_digest(path)[:16]}"
    assert not any(p.requires_grad for p in extractor.model.parameters()) and not extractor.model.training

    # torch-fidelity's own constructor on the same (trusted, test-made) file gives the very same features.
    reference = module.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                                   feature_extractor_weights_path=str(path))
    # At the network's size every resize convention is the identity, so both get the same pixels.
    image = random_images(1, 7)[0].convert("RGB").resize((299, 299))
    features = extractor.extract([image])
    with torch.inference_mode():
        expected = reference(torch.from_numpy(np.asarray(image).transpose(2, 0, 1).copy())[None])[0]
    assert features.shape == (1, 2048) and torch.equal(features, expected)


def test_truncated_or_wrong_inception_files_are_one_line_errors(inception_state, tmp_path):
    whole = tmp_path / "whole.pth"
    torch.save({k: inception_state[k] for k in list(inception_state)[:3]}, whole)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(whole.read_bytes()[:1000])
    with pytest.raises(UnsafeFileError, match=f"^{truncated}: Inception FID weights: unreadable") as error:
        create_extractor(f"inception:{truncated}", device="cpu")
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match=f"^{whole}: not the FID Inception weights .*missing keys") as error:
        create_extractor(f"inception:{whole}", device="cpu")
    assert "\n" not in str(error.value) and PUBLISHED in str(error.value)


# --------------------------------------------------------------------------------------------- CLIP, DINOv2

def test_clip_checkpoint_file_refuses_a_pickle(metrics_cli, tmp_path):
    marker = tmp_path / "marker"
    path = evil_torch_file(tmp_path / "evil.pt", marker)
    line = assert_refused(metrics_cli(f"clip:ViT-B-32:{path}"), path, marker)
    assert "arbitrary code" in line


def test_clip_folder_refuses_a_pickle(metrics_cli, tmp_path):
    marker = tmp_path / "marker"
    folder = tmp_path / "clip"
    path = evil_torch_file(folder / "open_clip_pytorch_model.bin", marker)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP, "preprocess_cfg": {}}))
    assert_refused(metrics_cli(f"clip:{folder}"), path, marker)


def test_dinov2_folder_refuses_a_pickle(metrics_cli, tmp_path):
    from transformers import Dinov2Config, Dinov2Model

    marker = tmp_path / "marker"
    folder = tmp_path / "dino"
    config = Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2, image_size=28,
                          patch_size=14)
    Dinov2Model(config).save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    path = evil_torch_file(folder / "pytorch_model.bin", marker)
    assert_refused(metrics_cli(f"dinov2:{folder}"), path, marker)


# --------------------------------------------------------------------------------------------- imgsynth's own folders

def test_conditional_model_folder_refuses_pickle_weights(run_cli, smoke_model, tmp_path):
    from imgsynth.pipelines import conditional

    folder = Path(shutil.copytree(smoke_model, tmp_path / "model"))
    (folder / conditional.WEIGHTS_FILE).unlink()  # as handed over: the same model, its weights pickled
    marker = tmp_path / "marker"
    evil_torch_file(folder / "diffusion_pytorch_model.bin", marker)
    result = run_cli("generate", folder, tmp_path / "out", "--per-class", "1", "--no-progress", "--device", "cpu")
    assert_refused(result, "diffusion_pytorch_model.bin", marker, reason="pickle-based weights")


def test_classifier_folder_refuses_pickle_weights(run_cli, two_sets, tmp_path):
    marker = tmp_path / "marker"
    folder = tmp_path / "classifier"
    evil_torch_file(folder / "model.pt", marker)
    (folder / "classifier.json").write_text("{}")
    result = run_cli("classify", "eval", folder, two_sets[0].root, "--device", "cpu")
    assert_refused(result, "model.pt", marker, reason="only safetensors weights are loaded")
    result = run_cli("metrics", two_sets[0].root, two_sets[1].root, "--features", f"domain:{folder}",
                     "--out", tmp_path / "m.csv", "--device", "cpu")
    assert_refused(result, "model.pt", marker, reason="only safetensors weights are loaded")


def test_training_checkpoint_refuses_a_pickle_training_state(run_cli, digits_sets, tmp_path):
    from imgsynth.pipelines import conditional

    train_set, _ = digits_sets

    def killed(step: int, loss: float) -> None:
        if step == 3:
            raise RuntimeError("killed")

    out = tmp_path / "model"
    with pytest.raises(RuntimeError, match="killed"):
        conditional.train(train_set, out, conditional.preset("smoke"), progress=False, callback=killed)
    state = out / conditional.CHECKPOINTS / "step-00000002" / "training_state.pt"
    assert state.is_file()
    marker = tmp_path / "marker"
    evil_torch_file(state, marker)
    result = run_cli("train", train_set.root, out, "--preset", "smoke", "--no-progress", "--device", "cpu")
    assert_refused(result, state, marker)


# --------------------------------------------------------------------------------------------- text-to-image

@pytest.fixture(scope="module")
def captioned_set(tmp_path_factory: pytest.TempPathFactory) -> ImageSet:
    writer = ImageSetWriter(tmp_path_factory.mktemp("ft") / "train", ["kitchen", "bedroom"], kind="real")
    writer.write_all(Sample(image, label, caption=f"a photo of a {label}", image_id=f"{label}-{i}")
                     for i, (image, label) in enumerate(zip(random_images(4, 3), ["kitchen", "bedroom"] * 2)))
    return writer.finalize()


def generate_args(model: Path, out: Path, *extra: str | Path) -> tuple[str | Path, ...]:
    return ("generate", model, out, "--classes", "kitchen,bedroom", "--per-class", "1", "--steps", "1",
            "--device", "cpu", "--no-progress", *extra)


def test_finetune_checkpoint_refuses_a_pickle(run_cli, tiny_text2image, captioned_set, tmp_path):
    marker = tmp_path / "marker"
    checkpoint = evil_torch_file(tmp_path / ".lora.partial" / "checkpoint.pt", marker)
    result = run_cli("finetune", tiny_text2image, captioned_set.root, tmp_path / "lora", "--steps", "2",
                     "--rank", "4", "--batch-size", "2", "--device", "cpu", "--no-progress")
    assert_refused(result, checkpoint, marker)


def test_generate_refuses_a_pickle_lora(run_cli, tiny_text2image, tmp_path):
    marker = tmp_path / "marker"
    lora = evil_torch_file(tmp_path / "lora.bin", marker)
    assert_refused(run_cli(*generate_args(tiny_text2image, tmp_path / "out", "--lora", lora)), lora, marker)


@pytest.mark.parametrize("component, weights", [("unet", "diffusion_pytorch_model"), ("text_encoder", "model")])
def test_text2image_pipeline_refuses_pickle_components(run_cli, tiny_text2image, tmp_path, component, weights):
    marker = tmp_path / "marker"
    pipeline = tmp_path / "pipeline"
    shutil.copytree(tiny_text2image, pipeline)
    (pipeline / component / f"{weights}.safetensors").unlink()
    name = "diffusion_pytorch_model.bin" if component == "unet" else "pytorch_model.bin"
    path = evil_torch_file(pipeline / component / name, marker)
    assert_refused(run_cli(*generate_args(pipeline, tmp_path / "out")), path, marker)


def test_caption_model_refuses_a_pickle(run_cli, tiny_text2image, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    marker = tmp_path / "marker"
    folder = tmp_path / "captioner"
    GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=2, n_positions=64, vocab_size=1000)).save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    for file in (tiny_text2image / "tokenizer").iterdir():
        shutil.copy(file, folder / file.name)
    path = evil_torch_file(folder / "pytorch_model.bin", marker)
    assert_refused(run_cli(*generate_args(tiny_text2image, tmp_path / "out", "--caption-model", folder)), path, marker)
