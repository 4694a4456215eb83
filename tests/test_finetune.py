"""LoRA fine-tuning of the tiny Stable Diffusion pipeline on CPU, and generating with the result."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgsynth.imageset import ImageSet, ImageSetWriter, Sample
from imgsynth.pipelines.finetune import INFO_FILE, WEIGHTS_FILE, LoraConfig, finetune_lora
from imgsynth.pipelines.text2image import Text2ImageRenderer, generate_text2image
from imgsynth.provenance import lineage

CONFIG = LoraConfig(steps=3, rank=4, lr=1e-2, batch_size=2, seed=0)
GENERATE = dict(classes=["kitchen", "bedroom"], per_class=1, seed=3, sample_steps=2, progress=False)


@pytest.fixture(scope="module")
def train_set(tmp_path_factory) -> ImageSet:
    """Four captioned 16 px images: two classes of flat colours plus noise."""
    rng = np.random.default_rng(0)
    writer = ImageSetWriter(tmp_path_factory.mktemp("ft") / "train", ["kitchen", "bedroom"], kind="real",
                            license="cc0-1.0")
    samples = []
    for i in range(4):
        label = ["kitchen", "bedroom"][i % 2]
        base = np.array([200, 60, 30] if label == "kitchen" else [30, 60, 200], dtype=np.int16)
        pixels = np.clip(base + rng.integers(-20, 20, (16, 16, 3)), 0, 255).astype(np.uint8)
        samples.append(Sample(Image.fromarray(pixels), label, f"a photo of a {label}", seed=i, image_id=f"{label}-{i}"))
    writer.write_shard(0, samples)
    return writer.finalize()


@pytest.fixture(scope="module")
def lora(tiny_text2image, train_set, tmp_path_factory) -> Path:
    return finetune_lora(tiny_text2image, train_set, tmp_path_factory.mktemp("ft") / "lora", CONFIG,
                         device="cpu", progress=False)


def test_lora_is_saved_as_diffusers_safetensors_with_its_provenance(lora, tiny_text2image, train_set):
    from safetensors.torch import load_file

    tensors = load_file(lora / WEIGHTS_FILE)
    assert tensors and all(key.startswith("unet.") and "lora" in key for key in tensors)
    assert any(".to_q." in key for key in tensors) and any(".to_out.0." in key for key in tensors)
    assert {tuple(t.shape)[0] for k, t in tensors.items() if "lora_A" in k or "lora.down" in k} == {4}
    info = json.loads((lora / INFO_FILE).read_text())
    assert info["base_model"] == str(tiny_text2image)
    assert info["train_set"]["id"] == train_set.id and info["train_set"]["num_images"] == 4
    assert info["config"]["rank"] == 4 and len(info["losses"]) == 3
    assert all(np.isfinite(info["losses"]))
    assert not (lora.parent / f".{lora.name}.partial").exists()


def test_diffusers_loads_the_lora_into_the_pipeline(lora, tiny_text2image):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_text2image, local_files_only=True)
    pipe.load_lora_weights(lora)
    assert pipe.get_active_adapters()


def test_generating_with_the_lora_changes_the_images_not_the_plan(lora, tiny_text2image, train_set, tmp_path):
    base = generate_text2image(tiny_text2image, tmp_path / "base", device="cpu", **GENERATE)
    tuned = generate_text2image(tiny_text2image, tmp_path / "tuned", lora=lora, device="cpu", **GENERATE)
    assert [(r.label, r.seed, r.caption) for r in base.records] == [(r.label, r.seed, r.caption) for r in tuned.records]
    difference = np.abs(base.as_array().astype(int) - tuned.as_array().astype(int))
    assert (difference.reshape(len(base), -1).max(axis=1) > 1).all(), "every image changes beyond rounding"
    record = tuned.manifest["generator"]["lora"]
    assert record["path"] == str(lora.resolve()) and len(record["sha256"]) == 64
    assert record["trained"]["train_set"]["id"] == train_set.id
    assert tuned.records[0].extra["generator"].endswith(f"+lora:{lora.name}")
    # The LoRA's training set is a parent: lineage walks from the tuned samples back to it.
    assert train_set.id in {p["id"] for p in tuned.parents}
    assert train_set.id in lineage(tuned.root).nodes


def test_training_is_seeded_and_a_finished_lora_is_reused(lora, tiny_text2image, train_set, tmp_path, run_cli):
    from safetensors.torch import load_file

    code, out, err = run_cli("finetune", tiny_text2image, train_set.root, tmp_path / "again", "--steps", "3",
                             "--rank", "4", "--lr", "0.01", "--batch-size", "2", "--device", "cpu", "--no-progress")
    assert code == 0, err
    assert "LoRA rank 4, 3 steps on 4 images" in out
    first, again = load_file(lora / WEIGHTS_FILE), load_file(tmp_path / "again" / WEIGHTS_FILE)
    assert first.keys() == again.keys() and all((first[k] == again[k]).all() for k in first)
    stamp = (lora / WEIGHTS_FILE).stat().st_mtime_ns
    assert finetune_lora(tiny_text2image, train_set, lora, CONFIG, device="cpu", progress=False) == lora
    assert (lora / WEIGHTS_FILE).stat().st_mtime_ns == stamp


def test_a_killed_training_resumes_from_its_checkpoint_to_the_same_weights(lora, tiny_text2image, train_set,
                                                                           tmp_path):
    from safetensors.torch import load_file

    class Killed(Exception):
        pass

    def kill_at_last_step(step: int, loss: float) -> None:
        if step == CONFIG.steps:
            raise Killed

    out = tmp_path / "resumed"
    with pytest.raises(Killed):
        finetune_lora(tiny_text2image, train_set, out, CONFIG, device="cpu", checkpoint_every=2,
                      on_step=kill_at_last_step, progress=False)
    assert not out.exists() and (tmp_path / ".resumed.partial" / "checkpoint.pt").is_file()
    steps: list[int] = []
    finetune_lora(tiny_text2image, train_set, out, CONFIG, device="cpu", checkpoint_every=2,
                  on_step=lambda step, loss: steps.append(step), progress=False)
    assert steps == [3], "only the step after the checkpoint is trained again"
    first, resumed = load_file(lora / WEIGHTS_FILE), load_file(out / WEIGHTS_FILE)
    assert all((first[k] == resumed[k]).all() for k in first)
    assert json.loads((out / INFO_FILE).read_text())["losses"] == json.loads((lora / INFO_FILE).read_text())["losses"]
    assert not (out / "checkpoint.pt").exists()


# --------------------------------------------------------------------------------------------- bad input

def test_a_different_lora_in_the_output_folder_is_not_overwritten(lora, tiny_text2image, train_set):
    with pytest.raises(ValueError, match="already holds a LoRA trained with other settings"):
        finetune_lora(tiny_text2image, train_set, lora, LoraConfig(steps=4, rank=4), device="cpu", progress=False)


def test_a_folder_that_is_not_a_lora_is_not_overwritten(tiny_text2image, train_set, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="is not an imgsynth LoRA; refusing to overwrite"):
        finetune_lora(tiny_text2image, train_set, tmp_path / "mine", CONFIG, device="cpu", progress=False)


@pytest.mark.parametrize("kwargs, message", [
    ({"steps": 0}, "steps must be at least 1"),
    ({"rank": 0}, "rank must be at least 1"),
    ({"lr": 0.0}, "learning rate must be positive"),
    ({"caption_column": "title"}, "caption_column must be one of"),
])
def test_bad_configs(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LoraConfig(**kwargs)


def test_bad_models_and_sets(tmp_path, train_set, tiny_text2image, run_cli):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        finetune_lora("/no/such/model", train_set, tmp_path / "out", CONFIG)
    code, _, err = run_cli("finetune", tiny_text2image, tmp_path / "missing-set", tmp_path / "out")
    assert code == 2 and "error:" in err and "missing-set" in err
    with pytest.raises(FileNotFoundError, match="LoRA '/no/such/lora': no such file"):
        Text2ImageRenderer.from_pretrained(tiny_text2image, lora="/no/such/lora")
