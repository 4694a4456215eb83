"""Class-conditional diffusion: train → model dir → sample → ImageSet, determinism, resume, bad input.

Mechanics only, on the "smoke" preset (a tiny UNet, a handful of steps); whether the CPU preset's samples
look like digits is measured by benchmarks/bench_conditional.py.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from imgsynth.imageset import ImageSet, ImageSetError, ImageSetWriter, Sample
from imgsynth.pipelines import conditional
from imgsynth.compute import resolve_device
from imgsynth.pipelines.work import image_seed
from imgsynth.provenance import sha256_file


def _pixels(image_set: ImageSet) -> dict[str, np.ndarray]:
    return {r.file_name: np.asarray(image_set.load_image(i), dtype=np.int16) for i, r in enumerate(image_set.records)}


def _file_bytes(image_set: ImageSet) -> dict[str, bytes]:
    return {r.file_name: image_set.read_bytes(i) for i, r in enumerate(image_set.records)}


# --------------------------------------------------------------------------------------------- train → sample

def test_model_dir_holds_safetensors_weights_classes_config_and_parent(smoke_model, digits_sets):
    train_set, _ = digits_sets
    names = {str(p.relative_to(smoke_model)) for p in smoke_model.rglob("*") if p.is_file()}
    assert {conditional.WEIGHTS_FILE, conditional.UNET_CONFIG_FILE, conditional.SCHEDULER_CONFIG_FILE,
            conditional.PIPELINE_FILE} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".ckpt"))]
    assert conditional.CHECKPOINTS not in names  # removed once the model is finished
    info = json.loads((smoke_model / conditional.MODEL_FILE).read_text())
    assert info["classes"] == train_set.classes
    assert info["weights_sha256"] == sha256_file(smoke_model / conditional.WEIGHTS_FILE)
    assert info["parent"]["id"] == train_set.id
    assert (smoke_model / info["parent"]["path"]).resolve() == train_set.root.resolve()
    assert conditional.TrainConfig(**info["training_config"]) == conditional.preset("smoke")
    unet_config = json.loads((smoke_model / conditional.UNET_CONFIG_FILE).read_text())
    assert unet_config["num_class_embeds"] == len(train_set.classes) + 1  # + the null class of CFG


def test_sample_writes_balanced_generated_set_with_provenance(smoke_model, digits_sets, tmp_path):
    train_set, _ = digits_sets
    out = tmp_path / "samples"
    result = conditional.sample(smoke_model, out, 2, seed=7, guidance_scale=2.5, steps=3, noise_temperature=0.9,
                                batch_size=8, generation=3, progress=False)
    reopened = ImageSet.open(out)
    assert reopened.id == result.id and len(reopened) == 20
    assert reopened.counts == {c: 2 for c in train_set.classes}
    assert reopened.kind == "generated" and reopened.image_size == (16, 16)
    assert reopened.manifest["image_mode"] == "L"
    generator = reopened.manifest["generator"]
    assert generator["kind"] == "conditional"
    assert generator["weights_sha256"] == sha256_file(smoke_model / conditional.WEIGHTS_FILE)
    assert (generator["steps"], generator["guidance_scale"], generator["seed"], generator["noise_temperature"]) == \
        (3, 2.5, 7, 0.9)
    assert generator["scheduler"] == "DPMSolverMultistepScheduler"
    (parent,) = reopened.parents
    assert parent["id"] == train_set.id and (out / parent["path"]).resolve() == train_set.root.resolve()
    for record in reopened.records:
        index = int(Path(record.file_name).stem.rsplit("-", 1)[1])
        assert record.seed == image_seed(7, record.label, index)
        assert record.label in record.caption and record.extra["prompt"] == record.caption
        assert record.extra["guidance_scale"] == 2.5 and record.extra["steps"] == 3
        assert record.extra["noise_temperature"] == 0.9 and record.extra["generation"] == 3
    # Calling again on the finished set returns it without recomputing.
    again = conditional.sample(smoke_model, out, 2, seed=7, guidance_scale=2.5, steps=3, noise_temperature=0.9,
                               progress=False)
    assert again.id == result.id


def test_same_seed_is_byte_identical_however_split_or_resumed(smoke_model, tmp_path, monkeypatch):
    settings = dict(seed=3, steps=3, shard_size=4, batch_size=3, progress=False)
    whole = conditional.sample(smoke_model, tmp_path / "whole", 2, **settings)

    # Split: a "worker" computes shards 3 and 1, then the finishing call does the rest.
    written = conditional.sample_shards(smoke_model, tmp_path / "split", 2, [3, 1], **settings)
    assert written == [1, 3]
    split = conditional.sample(smoke_model, tmp_path / "split", 2, **settings)

    # Crash while writing shard 2, then resume with the same call.
    real_write = ImageSetWriter.write_shard

    def crash_on_shard_two(self, index, samples):
        if index == 2:
            raise KeyboardInterrupt("killed")
        return real_write(self, index, samples)

    monkeypatch.setattr(ImageSetWriter, "write_shard", crash_on_shard_two)
    with pytest.raises(KeyboardInterrupt):
        conditional.sample(smoke_model, tmp_path / "resumed", 2, **settings)
    monkeypatch.setattr(ImageSetWriter, "write_shard", real_write)
    resumed = conditional.sample(smoke_model, tmp_path / "resumed", 2, **settings)

    assert whole.id == split.id == resumed.id
    assert _file_bytes(whole) == _file_bytes(split) == _file_bytes(resumed)
    other_seed = conditional.sample(smoke_model, tmp_path / "other", 2, **{**settings, "seed": 4})
    assert other_seed.id != whole.id


def test_other_batch_size_same_labels_seeds_and_pixels_within_one_level(smoke_model, tmp_path):
    sets = [conditional.sample(smoke_model, tmp_path / f"b{b}", 2, seed=5, steps=3, batch_size=b, progress=False)
            for b in (1, 7, 20)]
    reference = sets[0]
    for other in sets[1:]:
        assert [(r.file_name, r.label, r.seed) for r in other.records] == \
            [(r.file_name, r.label, r.seed) for r in reference.records]
        a, b = _pixels(reference), _pixels(other)
        assert max(int(np.abs(a[k] - b[k]).max()) for k in a) <= 1


def test_an_image_does_not_depend_on_which_other_classes_are_sampled(smoke_model, tmp_path):
    full = conditional.sample(smoke_model, tmp_path / "all", 2, seed=1, steps=3, progress=False)
    only = conditional.sample(smoke_model, tmp_path / "three", 2, seed=1, steps=3, classes=["3", "7"],
                              progress=False)
    assert only.classes == ["3", "7"]
    full_bytes = _file_bytes(full)
    for name, data in _file_bytes(only).items():
        assert full_bytes[name] == data


def test_sampling_knobs_change_the_images(smoke_model, tmp_path):
    base = _pixels(conditional.sample(smoke_model, tmp_path / "base", 1, steps=3, progress=False))
    cooler = _pixels(conditional.sample(smoke_model, tmp_path / "cool", 1, steps=3, noise_temperature=0.5,
                                        progress=False))
    unguided = _pixels(conditional.sample(smoke_model, tmp_path / "g1", 1, steps=3, guidance_scale=1.0,
                                          progress=False))
    assert any((base[k] != cooler[k]).any() for k in base)
    assert any((base[k] != unguided[k]).any() for k in base)


# --------------------------------------------------------------------------------------------- training resume

def test_killed_training_resumes_and_ends_where_an_uninterrupted_run_would(digits_sets, smoke_model, tmp_path):
    train_set, _ = digits_sets
    config = conditional.preset("smoke")  # 6 steps, a checkpoint every 2

    def kill_at_step_three(step: int, loss: float) -> None:
        if step == 3:
            raise RuntimeError("killed at step 3")

    out = tmp_path / "model"
    with pytest.raises(RuntimeError, match="killed at step 3"):
        conditional.train(train_set, out, config, progress=False, callback=kill_at_step_three)
    assert not (out / conditional.MODEL_FILE).exists()
    assert [p.name for p in (out / conditional.CHECKPOINTS).iterdir()] == ["step-00000002"]

    steps_seen: list[int] = []
    conditional.train(train_set, out, config, progress=False, callback=lambda step, loss: steps_seen.append(step))
    assert steps_seen == [3, 4, 5, 6]
    info = conditional.read_model_info(out)
    assert info["stats"]["resumed_from_step"] == 2
    resumed, uninterrupted = load_file(str(out / conditional.WEIGHTS_FILE)), \
        load_file(str(smoke_model / conditional.WEIGHTS_FILE))
    assert resumed.keys() == uninterrupted.keys()
    for name, tensor in uninterrupted.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=1e-5, atol=1e-6)


def test_training_with_dropout_resumes_where_an_uninterrupted_run_would(digits_sets, tmp_path):
    """With dropout (the GPU presets), a resumed run still ends where an uninterrupted one would."""
    train_set, _ = digits_sets
    config = conditional.preset("smoke", dropout=0.3)

    def killed(step: int, loss: float) -> None:
        if step == 3:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        conditional.train(train_set, tmp_path / "resumed", config, progress=False, callback=killed)
    torch.manual_seed(1234)  # the caller's RNG must not matter either
    resumed = conditional.train(train_set, tmp_path / "resumed", config, progress=False)
    whole = conditional.train(train_set, tmp_path / "whole", config, progress=False)
    a, b = load_file(str(resumed / conditional.WEIGHTS_FILE)), load_file(str(whole / conditional.WEIGHTS_FILE))
    for name, tensor in b.items():
        torch.testing.assert_close(a[name], tensor, rtol=1e-5, atol=1e-6)


def test_finished_model_is_reused_and_another_config_is_refused(digits_sets, smoke_model, tmp_path):
    train_set, _ = digits_sets
    out = tmp_path / "model"
    shutil.copytree(smoke_model, out)
    before = (out / conditional.WEIGHTS_FILE).read_bytes()
    assert conditional.train(train_set, out, conditional.preset("smoke"), progress=False) == out.absolute()
    assert (out / conditional.WEIGHTS_FILE).read_bytes() == before
    with pytest.raises(ValueError, match="already holds a model trained on another set or with another config"):
        conditional.train(train_set, out, conditional.preset("smoke", lr=5e-4), progress=False)


def test_non_safetensors_checkpoint_is_refused(digits_sets, tmp_path):
    train_set, _ = digits_sets
    checkpoint = tmp_path / "model" / conditional.CHECKPOINTS / "step-00000002"
    checkpoint.mkdir(parents=True)
    torch.save({"weight": torch.zeros(1)}, checkpoint / "weights.bin")
    with pytest.raises(ValueError, match=r"weights\.bin.*safetensors only"):
        conditional.train(train_set, tmp_path / "model", conditional.preset("smoke"), progress=False)


# --------------------------------------------------------------------------------------------- bad input

def test_one_class_set_is_refused(digits_sets, tmp_path):
    train_set, _ = digits_sets
    zeros = train_set.subset(train_set.indices_of_class("0"), tmp_path / "zeros", classes=["0"])
    with pytest.raises(ImageSetError, match="at least two classes"):
        conditional.train(zeros, tmp_path / "model", conditional.preset("smoke"), progress=False)


def test_mixed_image_sizes_are_refused(tmp_path):
    writer = ImageSetWriter(tmp_path / "mixed", ["a", "b"])
    writer.write_all([Sample(Image.new("L", (16, 16), 10 * i), "a" if i % 2 else "b") for i in range(4)] +
                     [Sample(Image.new("L", (12, 12), 5), "a")])
    mixed = writer.finalize()
    assert mixed.image_size is None
    with pytest.raises(ImageSetError, match="mixed sizes"):
        conditional.train(mixed, tmp_path / "model", conditional.preset("smoke"), progress=False)


def test_image_size_or_mode_other_than_the_preset_is_refused(digits_sets, tmp_path):
    train_set, _ = digits_sets
    with pytest.raises(ImageSetError, match="expects 32×32"):
        conditional.train(train_set, tmp_path / "m1", conditional.preset("smoke", image_size=32), progress=False)
    with pytest.raises(ImageSetError, match="channels=3"):
        conditional.train(train_set, tmp_path / "m2", conditional.preset("smoke", channels=3), progress=False)


def test_model_dir_without_weights_or_with_pickle_weights_is_refused(smoke_model, tmp_path):
    no_weights = tmp_path / "no_weights"
    shutil.copytree(smoke_model, no_weights)
    (no_weights / conditional.WEIGHTS_FILE).unlink()
    with pytest.raises(ValueError, match="no weights"):
        conditional.sample(no_weights, tmp_path / "s1", 1, progress=False)

    pickled = tmp_path / "pickled"
    shutil.copytree(smoke_model, pickled)
    (pickled / conditional.WEIGHTS_FILE).rename(pickled / "diffusion_pytorch_model.bin")
    with pytest.raises(ValueError, match=r"diffusion_pytorch_model\.bin.*safetensors only"):
        conditional.sample(pickled, tmp_path / "s2", 1, progress=False)

    tampered = tmp_path / "tampered"
    shutil.copytree(smoke_model, tampered)
    with open(tampered / conditional.WEIGHTS_FILE, "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ValueError, match="does not match the sha256"):
        conditional.sample(tampered, tmp_path / "s3", 1, progress=False)

    with pytest.raises(ValueError, match="not a class-conditional model folder"):
        conditional.sample(tmp_path, tmp_path / "s4", 1, progress=False)


def test_bad_sampling_arguments_are_clear_errors(smoke_model, tmp_path):
    with pytest.raises(ValueError, match="not classes of this model"):
        conditional.sample(smoke_model, tmp_path / "s", 1, classes=["cat"], progress=False)
    with pytest.raises(ValueError, match="per_class must be at least 1"):
        conditional.sample(smoke_model, tmp_path / "s", 0, progress=False)
    with pytest.raises(ValueError, match="noise_temperature must be positive"):
        conditional.sample(smoke_model, tmp_path / "s", 1, noise_temperature=0.0, progress=False)
    with pytest.raises(ValueError, match="unknown sampler"):
        conditional.sample(smoke_model, tmp_path / "s", 1, sampler="euler", progress=False)


def test_a_half_written_set_from_other_settings_is_not_mixed_in(smoke_model, tmp_path):
    conditional.sample_shards(smoke_model, tmp_path / "s", 2, [0, 1], seed=0, steps=3, shard_size=4,
                              guidance_scale=2.0, progress=False)
    with pytest.warns(UserWarning, match="discarding an unfinished write of a different job"):
        resumed = conditional.sample(smoke_model, tmp_path / "s", 2, seed=0, steps=3, shard_size=4,
                                     guidance_scale=4.0, progress=False)
    fresh = conditional.sample(smoke_model, tmp_path / "fresh", 2, seed=0, steps=3, shard_size=4,
                               guidance_scale=4.0, progress=False)
    assert _file_bytes(resumed) == _file_bytes(fresh)
    with pytest.raises(ImageSetError, match="already holds an ImageSet made with other settings"):
        conditional.sample(smoke_model, tmp_path / "s", 2, seed=0, steps=3, shard_size=4, guidance_scale=2.0,
                           progress=False)


def test_presets_and_config_validation():
    assert {"digits16-cpu", "smoke", "cifar32-gpu", "64-gpu"} <= set(conditional.PRESETS)
    for name in conditional.PRESETS:
        config = conditional.preset(name)
        assert config.preset == name
        assert json.loads(json.dumps(dataclasses.asdict(config))) is not None
    assert conditional.preset("digits16-cpu", steps=7).steps == 7
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        conditional.preset("nope")
    with pytest.raises(ValueError, match=r"unknown TrainConfig field\(s\) \['stepz'\]"):
        conditional.preset("smoke", stepz=3)
    with pytest.raises(ValueError, match="lr_schedule must be 'cosine' or 'constant'"):
        conditional.preset("smoke", lr_schedule="linear")
    with pytest.raises(ValueError, match="divisible by patch_size"):
        conditional.preset("smoke", image_size=18)


def test_device_resolution():
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu-ish")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


# --------------------------------------------------------------------------------------------- CLI

def test_cli_train_and_generate(digits_sets, tmp_path, run_cli):
    train_set, _ = digits_sets
    code, out, err = run_cli("train", train_set.root, tmp_path / "model", "--preset", "smoke", "--steps", "2",
                             "--batch-size", "8", "--no-progress")
    assert code == 0, err
    assert "model:" in out and (tmp_path / "model" / conditional.MODEL_FILE).is_file()
    assert conditional.read_model_info(tmp_path / "model")["training_config"]["steps"] == 2
    code, out, err = run_cli("generate", tmp_path / "model", tmp_path / "gen", "--per-class", "1", "--steps", "2",
                             "--guidance", "1.5", "--seed", "4", "--noise-temperature", "0.8", "--no-progress")
    assert code == 0, err
    generated = ImageSet.open(tmp_path / "gen")
    assert len(generated) == 10 and generated.id[:12] in out
    assert generated.manifest["generator"]["guidance_scale"] == 1.5
    assert generated.manifest["generator"]["noise_temperature"] == 0.8


def test_cli_generate_refuses_a_folder_that_is_no_model(tmp_path, run_cli):
    (tmp_path / "junk").mkdir()
    code, _, err = run_cli("generate", tmp_path / "junk", tmp_path / "out", "--per-class", "1")
    assert code == 2
    assert "not a model folder of any registered generator kind" in err
    code, _, err = run_cli("train", tmp_path / "missing", tmp_path / "model", "--preset", "smoke")
    assert code == 2 and "no such ImageSet" in err
