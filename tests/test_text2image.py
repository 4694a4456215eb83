"""Text-to-image generation with the tiny offline Stable Diffusion pipeline, loaded like a real model.

What must hold: a labeled set comes back with every per-image record; the same seed gives the same
bytes however the work is split or resumed; batch size changes pixels by at most one level; bad
models, class lists and prompt files fail with clear messages.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from imgsynth.imageset import ImageSet
from imgsynth.pipelines.prompts import load_prompt_bank
from imgsynth.pipelines.sharding import finalize_job, open_job, write_shards
from imgsynth.pipelines.text2image import (Text2ImageOptions, Text2ImageRenderer,
                                           Text2ImageSamplingJob, generate_text2image)
from imgsynth.pipelines.work import image_seed

CLASSES = ["kitchen", "bedroom", "office"]
SEED = 7
# 3 classes x 2 images in shards of 2: three shards, each mixing classes.
SETTINGS = dict(classes=CLASSES, per_class=2, seed=SEED, sample_steps=2, shard_size=2, progress=False)


@pytest.fixture(scope="module")
def renderer(tiny_text2image: Path) -> Text2ImageRenderer:
    return Text2ImageRenderer.from_pretrained(tiny_text2image, device="cpu")


@pytest.fixture(scope="module")
def reference(tiny_text2image: Path, renderer, tmp_path_factory) -> ImageSet:
    out = tmp_path_factory.mktemp("t2i") / "reference"
    return generate_text2image(tiny_text2image, out, sample_batch_size=2, renderer=renderer, **SETTINGS)


def rows(image_set: ImageSet) -> list[tuple]:
    return [(r.file_name, r.label, r.caption, r.seed, r.sha256) for r in image_set.records]


def file_bytes(image_set: ImageSet) -> dict[str, bytes]:
    return {r.file_name: image_set.read_bytes(i) for i, r in enumerate(image_set.records)}


class Interrupted(Exception):
    pass


def interrupt_at(monkeypatch, renderer, call: int) -> list[str]:
    """Make ``renderer.render`` raise on its ``call``-th shard; returns the first image id of each call."""
    calls: list[str] = []
    render = Text2ImageRenderer.render.__get__(renderer)

    def flaky(items, *args, **kwargs):
        calls.append(items[0].image_id)
        if len(calls) == call:
            raise Interrupted
        return render(items, *args, **kwargs)

    monkeypatch.setattr(renderer, "render", flaky)
    return calls


# --------------------------------------------------------------------------------------------- the set

def test_three_class_set_loads_back_with_every_record(reference: ImageSet, tiny_text2image: Path):
    image_set = ImageSet.open(reference.root)
    # Label indices follow sorted names (as ImageFolder's do); the order asked for is the display order.
    assert image_set.classes == sorted(CLASSES) and image_set.display_order == CLASSES
    assert image_set.kind == "generated"
    assert image_set.counts == {c: 2 for c in CLASSES}
    assert image_set.image_size == (16, 16) and image_set.manifest["image_mode"] == "RGB"
    indoor = load_prompt_bank("indoor-scenes")
    for record in image_set.records:
        index = int(Path(record.file_name).stem.rsplit("-", 1)[1])
        assert record.seed == image_seed(SEED, record.label, index)
        assert record.caption == indoor.caption(record.label, SEED, index).text
        assert record.label in record.caption
        extra = record.extra
        assert extra["prompt"] == record.caption
        assert extra["negative_prompt"] == indoor.negative_prompt
        assert (extra["guidance_scale"], extra["steps"], extra["generation"]) == (7.5, 2, 0)
        assert extra["generator"] == f"StableDiffusionPipeline:{tiny_text2image}"
        assert extra["caption_fields"]["style"] in record.caption
    image, label, caption = image_set[0]
    assert tuple(image.shape) == (3, 16, 16) and caption == image_set.records[0].caption
    pixels = image_set.as_array()
    assert len({p.tobytes() for p in pixels}) == len(pixels), "every image has its own noise"

    generator = image_set.manifest["generator"]
    unet_file = tiny_text2image / "unet" / "diffusion_pytorch_model.safetensors"
    file_hash = hashlib.sha256(unet_file.read_bytes()).hexdigest()
    expected = hashlib.sha256(f"{unet_file.name}\t{file_hash}\n".encode()).hexdigest()
    assert generator["weights_sha256"] == expected
    assert generator["kind"] == "text2image" and generator["pipeline"] == "StableDiffusionPipeline" and generator["scheduler"] == "DDIMScheduler"
    assert (generator["steps"], generator["guidance_scale"], generator["seed"]) == (2, 7.5, SEED)
    assert generator["model"] == str(tiny_text2image) and generator["lora"] is None
    assert generator["prompt_bank"] == "indoor-scenes"  # bare class names found in the shipped bank
    assert generator["license"]["name"] == "unknown" and image_set.manifest["license"]["name"] == "unknown"


def test_resume_after_interruption_gives_the_same_bytes_without_duplicates(
        reference, tiny_text2image, renderer, tmp_path, monkeypatch):
    out = tmp_path / "resumed"
    interrupt_at(monkeypatch, renderer, call=2)
    with pytest.raises(Interrupted):
        generate_text2image(tiny_text2image, out, sample_batch_size=2, renderer=renderer, **SETTINGS)
    assert not out.exists()  # a half-written set never looks like a whole one
    calls = interrupt_at(monkeypatch, renderer, call=0)
    resumed = generate_text2image(tiny_text2image, out, sample_batch_size=2, renderer=renderer, **SETTINGS)
    # Only the two shards that were missing were rendered again.
    assert calls == ["office-000000", "bedroom-000001"]
    assert len(resumed) == 6 and len({r.file_name for r in resumed.records}) == 6
    assert sorted(p.name for p in (out / "images").rglob("*.png")) == sorted(Path(r.file_name).name
                                                                             for r in reference.records)
    assert rows(resumed) == rows(reference) and file_bytes(resumed) == file_bytes(reference)
    assert resumed.id == reference.id


def test_a_finished_set_is_returned_not_regenerated(reference, tiny_text2image, renderer, monkeypatch):
    calls = interrupt_at(monkeypatch, renderer, call=0)
    again = generate_text2image(tiny_text2image, reference.root, sample_batch_size=4, renderer=renderer, **SETTINGS)
    assert calls == [] and again.id == reference.id
    with pytest.raises(ValueError, match="already holds an ImageSet made with other settings"):
        generate_text2image(tiny_text2image, reference.root, renderer=renderer, **{**SETTINGS, "sample_steps": 3})
    assert calls == []


def test_workers_splitting_the_shards_write_the_same_set(reference, renderer, tiny_text2image, tmp_path):
    out = tmp_path / "split"
    # Two workers, each with its own job and writer on the same folder, take alternate shards.
    for mine in ({0, 2}, {1}):
        job = Text2ImageSamplingJob(Text2ImageOptions(model=str(tiny_text2image), classes=CLASSES, sample_steps=2,
                                                      shard_size=2, sample_batch_size=2), per_class=2, seed=SEED)
        job.renderer = renderer
        writer = open_job(job, out)
        written = write_shards(job, writer, mine)
        assert written == sorted(mine)
    split = finalize_job(writer, 3)
    assert rows(split) == rows(reference) and split.id == reference.id


def test_batch_size_changes_no_label_seed_or_caption_and_pixels_by_at_most_one_level(
        tiny_text2image, renderer, tmp_path):
    settings = {**SETTINGS, "shard_size": 6}
    one = generate_text2image(tiny_text2image, tmp_path / "b1", sample_batch_size=1, renderer=renderer, **settings)
    four = generate_text2image(tiny_text2image, tmp_path / "b4", sample_batch_size=4, renderer=renderer, **settings)
    assert [(r.label, r.seed, r.caption, r.file_name) for r in one.records] == \
        [(r.label, r.seed, r.caption, r.file_name) for r in four.records]
    difference = np.abs(one.as_array().astype(int) - four.as_array().astype(int))
    assert difference.max() <= 1


def test_turbo_defaults_and_no_negative_prompt_without_guidance(tiny_text2image, renderer, tmp_path):
    image_set = generate_text2image(tiny_text2image, tmp_path / "g0", classes=["zebra"], per_class=1, sample_steps=1,
                                    guidance_scale=0.0, negative_prompt="ugly", renderer=renderer, progress=False)
    record = image_set.records[0]
    assert record.extra["negative_prompt"] == "" and record.extra["guidance_scale"] == 0.0
    assert "zebra" in record.caption
    from imgsynth.pipelines.text2image import default_sampling

    assert default_sampling("stabilityai/sd-turbo") == (4, 0.0)
    assert default_sampling("runwayml/stable-diffusion-v1-5") == (30, 7.5)


def test_captions_rewritten_by_a_local_model_are_what_is_stored_and_prompted(tiny_text2image, renderer, tmp_path):
    from imgsynth.testing import tiny_caption_model

    lm = tiny_caption_model(tmp_path / "lm")
    image_set = generate_text2image(tiny_text2image, tmp_path / "rewritten", classes=["kitchen", "office"],
                                    per_class=1, seed=SEED, sample_steps=1, caption_model=lm, renderer=renderer,
                                    progress=False)
    indoor = load_prompt_bank("indoor-scenes")
    for record in image_set.records:
        template = indoor.caption(record.label, SEED, 0).text
        assert record.extra["caption_fields"]["template_caption"] == template
        assert record.extra["prompt"] == record.caption and record.caption
    assert image_set.manifest["generator"]["caption_model"] == str(lm)


# --------------------------------------------------------------------------------------------- bad input

def test_unknown_model_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"model '/no/such/model': no such folder"):
        generate_text2image("/no/such/model", tmp_path / "out", classes=CLASSES)
    assert not (tmp_path / "out").exists()


def test_uncached_hub_id_says_what_to_download_where(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"HF_HUB_OFFLINE=1 is set.*hf download imgsynth-test/not-cached"):
        generate_text2image("imgsynth-test/not-cached", tmp_path / "out", classes=CLASSES)


def test_folder_without_a_pipeline(tmp_path):
    (tmp_path / "weights").mkdir()
    with pytest.raises(ValueError, match="not a diffusers pipeline folder \\(no model_index.json\\)"):
        generate_text2image(tmp_path / "weights", tmp_path / "out", classes=CLASSES)


def test_pipeline_that_is_not_text_to_image(tmp_path):
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    unet = UNet2DModel(sample_size=8, block_out_channels=(8, 8), norm_num_groups=4,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    DDPMPipeline(unet, DDPMScheduler()).save_pretrained(tmp_path / "ddpm")
    with pytest.raises(ValueError, match="is a DDPMPipeline, which is not a text-to-image pipeline"):
        generate_text2image(tmp_path / "ddpm", tmp_path / "out", classes=CLASSES)


def test_inpainting_checkpoint_is_refused_and_img2img_loads_as_text_to_image(tiny_text2image, tmp_path):
    import shutil

    from diffusers import UNet2DConditionModel

    def variant(name: str, class_name: str) -> Path:
        folder = tmp_path / name
        shutil.copytree(tiny_text2image, folder)
        index = json.loads((folder / "model_index.json").read_text())
        (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": class_name}))
        return folder

    inpaint = variant("inpaint", "StableDiffusionInpaintPipeline")
    config = dict(UNet2DConditionModel.load_config(inpaint / "unet"), in_channels=9)
    UNet2DConditionModel.from_config(config).save_pretrained(inpaint / "unet")
    with pytest.raises(ValueError, match="9 input channels for 4 latent channels.*inpainting"):
        Text2ImageRenderer.from_pretrained(inpaint, device="cpu")
    # An img2img folder holds the same components; diffusers' text-to-image form of it is used.
    img2img = Text2ImageRenderer.from_pretrained(variant("img2img", "StableDiffusionImg2ImgPipeline"), device="cpu")
    assert type(img2img.pipe).__name__ == "StableDiffusionPipeline"


@pytest.mark.parametrize("kwargs, error, message", [
    ({"classes": []}, ValueError, "class list is empty"),
    ({"classes": [], "prompts": "indoor-scenes"}, ValueError, "class list is empty"),
    ({"classes": ["kitchen", "garage"], "prompts": "indoor-scenes"}, ValueError,
     "indoor-scenes.toml has no class 'garage'"),
    ({"classes": CLASSES, "sample_steps": 0}, ValueError, "steps must be at least 1"),
    ({"classes": CLASSES, "sample_batch_size": 0}, ValueError, "sample_batch_size must be a whole number ≥ 1"),
    ({"classes": CLASSES, "lora": "/no/such/lora"}, FileNotFoundError, "LoRA '/no/such/lora': no such file"),
    ({"classes": CLASSES, "device": "cuda:7"}, ValueError, "CUDA is not available|device"),
])
def test_bad_arguments(tiny_text2image, tmp_path, kwargs, error, message):
    import torch

    if "device" in kwargs and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(error, match=message):
        generate_text2image(tiny_text2image, tmp_path / "out", per_class=1, **kwargs)


def test_prompt_file_with_an_unknown_class(tiny_text2image, tmp_path):
    bank = tmp_path / "rooms.toml"
    bank.write_text('templates = ["a photo of a {name}"]\n[classes.kitchen]\n[classes.bedroom]\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"rooms.toml has no class 'attic' \(it has: kitchen, bedroom\)"):
        generate_text2image(tiny_text2image, tmp_path / "out", classes=["kitchen", "attic"], prompts=bank)


def test_resuming_with_other_settings_starts_over_instead_of_mixing(tiny_text2image, renderer, tmp_path,
                                                                    monkeypatch):
    out = tmp_path / "mixed"
    interrupt_at(monkeypatch, renderer, call=2)
    with pytest.raises(Interrupted):
        generate_text2image(tiny_text2image, out, sample_batch_size=2, renderer=renderer, **SETTINGS)
    monkeypatch.undo()
    with pytest.warns(UserWarning, match="discarding an unfinished write of a different job"):
        other = generate_text2image(tiny_text2image, out, sample_batch_size=2, renderer=renderer, **{**SETTINGS, "seed": 8})
    for record in other.records:
        index = int(Path(record.file_name).stem.rsplit("-", 1)[1])
        assert record.seed == image_seed(8, record.label, index)


def test_resuming_after_the_prompt_bank_changed_is_refused(tiny_text2image, renderer, tmp_path, monkeypatch):
    bank = tmp_path / "rooms.toml"
    bank.write_text('templates = ["a photo of a {name}"]\n[classes.kitchen]\n[classes.bedroom]\n', encoding="utf-8")
    settings = {**SETTINGS, "classes": None, "prompts": bank}
    out = tmp_path / "edited"
    interrupt_at(monkeypatch, renderer, call=2)
    with pytest.raises(Interrupted):
        generate_text2image(tiny_text2image, out, sample_batch_size=2, renderer=renderer, **settings)
    monkeypatch.undo()
    bank.write_text('templates = ["a drawing of a {name}"]\n[classes.kitchen]\n[classes.bedroom]\n', encoding="utf-8")
    with pytest.raises(ValueError, match="half-written set from a generation with other settings"):
        generate_text2image(tiny_text2image, out, sample_batch_size=2, renderer=renderer, **settings)


# --------------------------------------------------------------------------------------------- CLI

def test_cli_generate_dispatches_a_pipeline_folder_to_text_to_image(tiny_text2image, tmp_path, run_cli):
    code, out, err = run_cli("generate", tiny_text2image, tmp_path / "cli", "--classes", "kitchen, zebra",
                             "--per-class", "1", "--steps", "1", "--guidance", "2.5", "--seed", "5",
                             "--negative-prompt", "", "--device", "cpu", "--no-progress")
    assert code == 0, err
    image_set = ImageSet.open(tmp_path / "cli")
    assert image_set.classes == ["kitchen", "zebra"] and "2 images, 2 classes" in out
    assert [r.seed for r in image_set.records] == [image_seed(5, "kitchen", 0), image_seed(5, "zebra", 0)]
    assert {(r.extra["steps"], r.extra["guidance_scale"], r.extra["negative_prompt"]) for r in image_set.records} \
        == {(1, 2.5, "")}


@pytest.mark.parametrize("args, message", [
    (["--classes", ""], "class list is empty"),
    (["--classes", "kitchen,garage", "--prompts", "indoor-scenes"], "has no class 'garage'"),
    ([], "give the classes to generate"),
    (["--classes", "kitchen", "--noise-temperature", "0.5"],
     "unknown option(s) ['noise_temperature'] for generator kind 'text2image'"),
])
def test_cli_generate_bad_input(tiny_text2image, tmp_path, run_cli, args, message):
    code, _, err = run_cli("generate", tiny_text2image, tmp_path / "out", "--per-class", "1", *args)
    assert code == 2 and message in err


def test_cli_generate_unknown_model(tmp_path, run_cli):
    code, _, err = run_cli("generate", tmp_path / "nothing" / "here", tmp_path / "out", "--per-class", "1",
                           "--classes", "kitchen")
    assert code == 2 and "no such folder" in err
