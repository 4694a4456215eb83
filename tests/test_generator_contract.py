"""Every registered generator kind honours one contract, and a new kind needs no edit outside its own file.

The contract: ``fit`` returns at once for the same fit and refuses another one in the same folder;
``sample`` gives the same set (id and bytes) for the same seed, resumes an interrupted write to the
same set, and refuses a model folder whose weights were changed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar, Mapping

import numpy as np
import pytest

from imgsynth.experiments.config import load_recipe
from imgsynth.experiments.loop import Experiment
from imgsynth.experiments.recipes import shipped_recipes
from imgsynth.imageset import ImageSet, ImageSetWriter, verify
from imgsynth.pipelines import per_class
from imgsynth.pipelines.base import GENERATOR_KINDS, build_kind, register_kind
from imgsynth.pipelines.per_class import PerClassKind
from imgsynth.sources import import_source


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> ImageSet:
    return import_source("gaussian:per_class=40", tmp_path_factory.mktemp("real") / "real", size=4, mode="L")[0]


@pytest.fixture(scope="module")
def ray_pool():
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield ray
    ray.shutdown()


# Per kind: options that make a fit take a second, and the files that mark a finished fit and hold its
# weights (a kind registered later uses the shared ones of pipelines.base). text2image fine-tunes a
# pretrained pipeline and is run through the loop below instead.
FAST_OPTIONS = {"conditional": {"preset": "smoke", "train_steps": 2, "sample_steps": 2}}
FILES = {"conditional": ("imgsynth_model.json", "unet/diffusion_pytorch_model.safetensors")}
CONTRACT_KINDS = sorted(set(GENERATOR_KINDS) - {"text2image"})


def _bytes(image_set: ImageSet) -> list[bytes]:
    return [image_set.read_bytes(i) for i in range(len(image_set))]


def _crash_after_one_shard(monkeypatch):
    """Make the next write stop (as a kill would) after its first shard; returns the real write_shard."""
    calls = {"n": 0}
    real_write = ImageSetWriter.write_shard

    def crash(self, index, samples):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed after one shard")
        return real_write(self, index, samples)

    monkeypatch.setattr(ImageSetWriter, "write_shard", crash)
    return real_write


def _assert_every_image_says_it_is_generated(image_set: ImageSet, kind: str) -> None:
    """Issue 25: every PNG a kind writes carries the IPTC digital source type and imgsynth's fields in XMP, as
    exiv2 (pyexiv2, an independent reader) reads them."""
    import pyexiv2

    weights = image_set.manifest["generator"]["weights_sha256"]
    for index, record in enumerate(image_set.records):
        with pyexiv2.ImageData(image_set.read_bytes(index)) as image:
            xmp = image.read_xmp()
        assert xmp["Xmp.iptcExt.DigitalSourceType"] == \
            "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
        assert xmp["Xmp.imgsynth.generatorKind"] == kind and xmp["Xmp.imgsynth.weightsSha256"] == weights
        assert xmp["Xmp.imgsynth.seed"] == str(record.seed) and xmp["Xmp.imgsynth.generation"] == "1"


@pytest.mark.parametrize("kind", CONTRACT_KINDS)
def test_every_registered_kind_fits_samples_and_resumes_the_same_set(kind, real, tmp_path, monkeypatch):
    marker, weights = FILES.get(kind, (per_class.MODEL_INFO, per_class.MODEL_WEIGHTS))
    generator_kind = build_kind(kind, {**FAST_OPTIONS.get(kind, {}), "shard_size": 8})
    model = generator_kind.fit(real, tmp_path / "model", seed=0, progress=False)
    stamp = (model / marker).stat().st_mtime_ns
    assert generator_kind.fit(real, tmp_path / "model", seed=0, progress=False) == model
    assert (model / marker).stat().st_mtime_ns == stamp  # the same fit: nothing redone
    whole = generator_kind.sample(model, tmp_path / "whole", per_class=10, seed=4, generation=1, progress=False)
    assert verify(whole.root).ok and whole.counts == {c: 10 for c in real.classes}
    _assert_every_image_says_it_is_generated(whole, kind)

    real_write = _crash_after_one_shard(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        generator_kind.sample(model, tmp_path / "resumed", per_class=10, seed=4, generation=1, progress=False)
    monkeypatch.setattr(ImageSetWriter, "write_shard", real_write)
    resumed = generator_kind.sample(model, tmp_path / "resumed", per_class=10, seed=4, generation=1, progress=False)
    assert resumed.id == whole.id
    assert _bytes(resumed) == _bytes(whole)
    assert generator_kind.sample(model, tmp_path / "other", per_class=10, seed=5, progress=False).id != whole.id

    with pytest.raises(ValueError, match="already holds a model (fitted|trained) (to|on) another set"):
        generator_kind.fit(real.__class__.open(whole.root), tmp_path / "model", seed=0, progress=False)
    (model / weights).write_bytes((model / weights).read_bytes()[:-1] + b"\0")
    with pytest.raises(ValueError, match="does not match the sha256"):
        generator_kind.sample(model, tmp_path / "tampered", per_class=2, seed=4, progress=False)


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("kind", CONTRACT_KINDS)
def test_every_kind_writes_the_same_set_on_two_ray_workers(kind, real, tmp_path, ray_pool):
    from imgsynth.distributed.generate import generate
    from imgsynth.compute import torch_threads

    generator_kind = build_kind(kind, {**FAST_OPTIONS.get(kind, {}), "shard_size": 4})
    model = generator_kind.fit(real, tmp_path / "model", seed=0, progress=False)
    with torch_threads(1):  # CPU floats depend on the thread count; every backend computes with one
        local = generator_kind.sample(model, tmp_path / "local", per_class=6, seed=2, generation=3, progress=False)
    job = generator_kind.job(model, per_class=6, seed=2, generation=3)
    spread = generate(job, tmp_path / "ray", backend="ray", workers=2)
    assert spread.id == local.id and _bytes(spread) == _bytes(local)
    assert spread.manifest["generator"] == local.manifest["generator"]
    one = generate(generator_kind.job(model, per_class=6, seed=2, generation=3), tmp_path / "one")
    assert one.id == local.id


@pytest.mark.parametrize("flag, value", [("--noise-temperature", "0.5"), ("--option", "stepz=3")])
def test_unknown_options_are_refused_the_same_everywhere(flag, value, real, tmp_path, run_cli):
    """The CLI, the accelerate entry and a recipe check a kind's options with one function: same message."""
    from typer.testing import CliRunner

    from imgsynth.cli.accelerate_launch import app as launch_app

    model = build_kind("gaussian").fit(real, tmp_path / "model", seed=0, progress=False)
    name = "noise_temperature" if flag == "--noise-temperature" else "stepz"
    expected = f"unknown option(s) ['{name}'] for generator kind 'gaussian'"
    code, _, err = run_cli("generate", model, tmp_path / "out", "--per-class", "1", flag, value)
    assert code != 0 and f"error: imgsynth generate: {expected}" in err
    if flag == "--noise-temperature":
        launched = CliRunner().invoke(launch_app, [str(model), str(tmp_path / "out2"), "--per-class", "1", flag, value])
        assert launched.exit_code != 0 and str(launched.exception).startswith(f"accelerate launch: {expected}")
    with pytest.raises(Exception, match=re.escape(expected)):
        load_recipe(shipped_recipes()["gaussian-theory"], [f"generator.options.{name}=3"])
    assert not (tmp_path / "out").exists() and not (tmp_path / "out2").exists()


def test_text2image_runs_through_the_loop_with_lora_each_generation(tiny_text2image, tmp_path):
    """The kitchen case: generation 0 samples the pretrained pipeline, later ones a LoRA fine-tuned on the
    previous generation's samples."""
    recipe = load_recipe(shipped_recipes()["smoke"], [
        'generator.kind="text2image"', "generator.options={}", f'generator.options.model="{tiny_text2image}"',
        'generator.options.classes=["kitchen","bedroom"]', "generator.per_class=2", "generator.options.sample_steps=2",
        "generator.options.sample_batch_size=2", "generator.options.lora_steps=2", "generator.options.lora_rank=2",
        "loop.generations=2", 'loop.modes=["replace"]', "loop.seeds=1", "data.size=16",
        'data.mode="RGB"', 'data.source="folder:' + str(_rgb_folder(tmp_path / "rgb")) + '"', "classifier.enabled=false",
        'metrics.extractors=["pixels"]'])
    run = Experiment(recipe, tmp_path / "run", progress=False).run()
    from imgsynth.pipelines.finetune import WEIGHTS_FILE as LORA_WEIGHTS

    gen1 = ImageSet.open(run / "seed_0" / "replace" / "gen_1" / "samples")
    gen0 = ImageSet.open(run / "seed_0" / "gen_0" / "samples")
    assert set(gen0.classes) == set(gen1.classes) == {"kitchen", "bedroom"}
    assert (run / "seed_0" / "replace" / "gen_1" / "model" / LORA_WEIGHTS).is_file()
    assert gen0.manifest["generator"]["lora"] is None
    assert gen1.manifest["generator"]["lora"]["sha256"]  # generation 1 sampled through its LoRA
    assert gen1.id != gen0.id


def _rgb_folder(root):
    """A small RGB folder of class sub-folders (kitchen, bedroom): noisy images of two colours."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, name in enumerate(["kitchen", "bedroom"]):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(6):
            base_colour = np.array([200, 80, 40]) if c == 0 else np.array([40, 90, 200])
            pixels = np.clip(base_colour + rng.normal(0, 25, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, "RGB").save(root / name / f"{i}.png")
    return root


@dataclass
class MidpointOptions:
    shard_size: int = 64

    def validate(self) -> MidpointOptions:
        return self


class MidpointKind(PerClassKind):
    """A throwaway kind defined in this test file: every sample is its class's mean image plus noise."""

    name: ClassVar[str] = "midpoint"
    pipeline: ClassVar[str] = "MidpointKind"
    Options: ClassVar[type] = MidpointOptions

    def fit_class(self, points: np.ndarray) -> dict[str, np.ndarray]:
        return {"mean": points.astype(np.float64).mean(axis=0)}

    def draw(self, parameters: Mapping[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
        return parameters["mean"] + rng.normal(0.0, 2.0, parameters["mean"].shape)


def test_a_kind_registered_from_a_test_file_runs_through_the_cli_and_the_loop(real, run_cli, tmp_path, request):
    register_kind("midpoint", MidpointKind)
    request.addfinalizer(lambda: GENERATOR_KINDS.unregister("midpoint"))
    code, _, err = run_cli("train", real.root, tmp_path / "model", "--kind", "midpoint", "--no-progress")
    assert code == 0, err
    code, _, err = run_cli("generate", tmp_path / "model", tmp_path / "samples", "--per-class", "3")
    assert code == 0 and len(ImageSet.open(tmp_path / "samples")) == 3 * len(real.classes), err
    # The whole loop through `imgsynth run`, in this process (the kind is registered only here), with reports.
    run = tmp_path / "run"
    code, stdout, err = run_cli("run", "gaussian-theory", "--out", run, "--workers", "1", "--set",
                                'generator.kind="midpoint"', "--set", "generator.options={}", "--set", "loop.seeds=2",
                                "--set", "loop.generations=2")
    assert code == 0, err
    assert (run / "seed_0" / "replace" / "gen_1" / "metrics.json").is_file()
    assert f"dashboard: {run / 'dashboard.png'}" in stdout and (run / "dashboard.png").stat().st_size > 0
    import pandas as pd

    metrics = pd.read_csv(run / "metrics.csv")
    assert set(metrics["mode"]) == {"replace"} and set(metrics["generation"]) == {0, 1}
    findings = pd.read_csv(run / "findings.csv")
    assert len(findings) and set(findings["metric"]) <= set(metrics["metric"])


@pytest.mark.ray
@pytest.mark.slow
def test_text2image_kind_honours_the_contract_with_a_lora_fit(tiny_text2image, real, tmp_path, monkeypatch, ray_pool):
    """The same contract for the kind that fine-tunes a pretrained pipeline: the fit (a LoRA) is made once and
    refused for another set, a seed gives the same bytes, an interrupted write resumes byte for byte, and two
    Ray workers write the same set. (Its weights' integrity is the pretrained pipeline's: no hash to check.)"""
    from imgsynth.distributed.generate import generate
    from imgsynth.compute import torch_threads
    from imgsynth.pipelines.finetune import INFO_FILE

    generator_kind = build_kind("text2image", {"model": str(tiny_text2image), "classes": ["kitchen", "bedroom"],
                                               "sample_steps": 2, "lora_steps": 2, "lora_rank": 2, "shard_size": 2,
                                               "sample_batch_size": 2, "device": "cpu"})
    lora = generator_kind.fit(real, tmp_path / "lora", seed=0, progress=False)
    stamp = (lora / INFO_FILE).stat().st_mtime_ns
    assert generator_kind.fit(real, tmp_path / "lora", seed=0, progress=False) == lora
    assert (lora / INFO_FILE).stat().st_mtime_ns == stamp
    with torch_threads(1):
        whole = generator_kind.sample(lora, tmp_path / "whole", per_class=2, seed=4, generation=1, progress=False)
    assert whole.manifest["generator"]["lora"]["sha256"] and whole.counts == {"kitchen": 2, "bedroom": 2}

    real_write = _crash_after_one_shard(monkeypatch)
    with pytest.raises(KeyboardInterrupt), torch_threads(1):
        generator_kind.sample(lora, tmp_path / "resumed", per_class=2, seed=4, generation=1, progress=False)
    monkeypatch.setattr(ImageSetWriter, "write_shard", real_write)
    with torch_threads(1):
        resumed = generator_kind.sample(lora, tmp_path / "resumed", per_class=2, seed=4, generation=1, progress=False)
    assert resumed.id == whole.id and _bytes(resumed) == _bytes(whole)
    spread = generate(generator_kind.job(lora, per_class=2, seed=4, generation=1), tmp_path / "ray",
                      backend="ray", workers=2)
    assert spread.id == whole.id and _bytes(spread) == _bytes(whole)
    other = ImageSet.open(whole.root)
    with pytest.raises(ValueError, match="already holds a LoRA trained with other settings or data"):
        generator_kind.fit(other, tmp_path / "lora", seed=0, progress=False)
