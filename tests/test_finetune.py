"""LoRA fine-tuning of the tiny Stable Diffusion pipeline on CPU, and generating with the result."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgsynth.imageset import ImageSet, ImageSetWriter, Sample, concatenate
from imgsynth.pipelines.finetune import INFO_FILE, WEIGHTS_FILE, LoraConfig, finetune_lora, weighted_batches
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


# ------------------------------------------------------------------------------------------ training weights

class _Recording(ImageSet):
    """An ImageSet that notes which images are read (the LoRA trainer reads exactly its batches' images)."""

    loaded: list[int]

    def load_image(self, index: int) -> Image.Image:
        self.loaded.append(index)
        return super().load_image(index)


def _halves(train_set: ImageSet, out: Path, weights: list[float] | None) -> _Recording:
    """``train_set`` with images 0, 1 (one per class) weighted ``weights[0]`` and 2, 3 ``weights[1]``."""
    concatenate([train_set, train_set], out, indices=[[0, 1], [2, 3]], weights=weights)
    opened = _Recording.open(out)
    opened.loaded = []
    return opened


@pytest.fixture(scope="module")
def weighted(tiny_text2image, train_set, tmp_path_factory) -> tuple[_Recording, Path]:
    """The set with weight 0 on images 2, 3, and its LoRA trained with the reads recorded."""
    folder = tmp_path_factory.mktemp("weighted")
    image_set = _halves(train_set, folder / "set", [1.0, 0.0])
    return image_set, finetune_lora(tiny_text2image, image_set, folder / "lora", CONFIG, device="cpu",
                                    progress=False)


def test_a_weighted_lora_trains_only_on_the_images_its_weights_draw(weighted):
    image_set, lora = weighted
    order = weighted_batches(image_set, CONFIG)
    drawn = [i for step in range(CONFIG.steps) for i in order.indices(step).tolist()]
    assert image_set.loaded == drawn, "finetune_lora reads exactly the batches weighted_batches draws"
    assert set(drawn) <= {0, 1}, "weight 0: never drawn"
    info = json.loads((lora / INFO_FILE).read_text())
    assert len(info["train_set"]["weights_sha256"]) == 64


def test_weighted_batches_follow_the_weights_probabilities_and_only_seed_and_step(train_set, tmp_path):
    from scipy import stats

    image_set = _halves(train_set, tmp_path / "set", [3.0, 1.0])
    config = LoraConfig(batch_size=50, seed=5)
    order = weighted_batches(image_set, config)
    drawn = np.concatenate([order.indices(step).numpy() for step in range(200)])
    heavy = int(np.isin(drawn, [0, 1]).sum())  # images 0, 1 carry 3 + 3 of the total weight 8
    assert stats.binom(len(drawn), 6 / 8).cdf(heavy) > 1e-4 and stats.binom(len(drawn), 6 / 8).sf(heavy) > 1e-4
    assert np.array_equal(order.indices(17), weighted_batches(image_set, config).indices(17))
    assert weighted_batches(train_set, config) is None  # a set without weights trains on permutations


def test_an_unweighted_lora_records_no_weights_and_is_not_taken_for_a_weighted_one(lora, weighted, tiny_text2image,
                                                                                    train_set, tmp_path):
    from safetensors.torch import load_file

    assert "weights_sha256" not in json.loads((lora / INFO_FILE).read_text())["train_set"]
    image_set, weighted_lora = weighted
    plain = _halves(train_set, tmp_path / "plain", None)
    assert plain.id == image_set.id, "the set's id does not cover its weights: the LoRA's identity must"
    with pytest.raises(ValueError, match="already holds a LoRA trained with other settings"):
        finetune_lora(tiny_text2image, plain, weighted_lora, CONFIG, device="cpu", progress=False)
    other = _halves(train_set, tmp_path / "other", [1.0, 2.0])
    with pytest.raises(ValueError, match="already holds a LoRA trained with other settings"):
        finetune_lora(tiny_text2image, other, weighted_lora, CONFIG, device="cpu", progress=False)
    # The unweighted set's LoRA is that of the original four images (the same permutations, the same weights).
    again = finetune_lora(tiny_text2image, plain, tmp_path / "plain-lora", CONFIG, device="cpu", progress=False)
    first, second = load_file(lora / WEIGHTS_FILE), load_file(again / WEIGHTS_FILE)
    assert all((first[k] == second[k]).all() for k in first)


def test_a_killed_weighted_training_resumes_to_the_same_weights(weighted, tiny_text2image, train_set, tmp_path):
    from safetensors.torch import load_file

    class Killed(Exception):
        pass

    def kill_at_last_step(step: int, loss: float) -> None:
        if step == CONFIG.steps:
            raise Killed

    image_set, uninterrupted = weighted
    again = _halves(train_set, tmp_path / "set", [1.0, 0.0])
    out = tmp_path / "resumed"
    with pytest.raises(Killed):
        finetune_lora(tiny_text2image, again, out, CONFIG, device="cpu", checkpoint_every=2,
                      on_step=kill_at_last_step, progress=False)
    again.loaded.clear()
    finetune_lora(tiny_text2image, again, out, CONFIG, device="cpu", checkpoint_every=2, progress=False)
    assert again.loaded == weighted_batches(again, CONFIG).indices(CONFIG.steps - 1).tolist()
    first, resumed = load_file(uninterrupted / WEIGHTS_FILE), load_file(out / WEIGHTS_FILE)
    assert all((first[k] == resumed[k]).all() for k in first)
    losses = [json.loads((folder / INFO_FILE).read_text())["losses"] for folder in (uninterrupted, out)]
    assert losses[0] == losses[1]


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
