"""Any user's folder runs the loop: presets take image size and channels from the data, RGB included."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgsynth.experiments.config import RecipeError, load_recipe
from imgsynth.experiments.loop import Experiment
from imgsynth.experiments.recipes import shipped_recipes
from imgsynth.imageset import ImageSet
from imgsynth.pipelines import conditional
from imgsynth.pipelines.base import build_kind
from imgsynth.pipelines.conditional.config import auto_preset
from imgsynth.reports.build import run_and_report


def _folder(root: Path, mode: str, size: int = 20, per_class: int = 12) -> Path:
    """Class sub-folders of small images whose class is a shape (a bar, a square), drawn in random colours."""
    rng = np.random.default_rng(0)
    for name in ("bar", "square"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            mask = np.zeros((size, size), bool)
            if name == "bar":
                mask[:, size // 3: size // 2] = True
            else:
                mask[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = True
            colour, background = rng.uniform(128, 255, 3), rng.uniform(0, 100, 3)
            pixels = np.where(mask[..., None], colour, background) + rng.normal(0, 8, (size, size, 3))
            image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
            (image.convert("L") if mode == "L" else image).save(root / name / f"{i}.png")
    return root


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_the_default_loop_runs_on_a_users_folder_at_16_px(mode, tmp_path):
    source = _folder(tmp_path / "photos", mode)
    recipe = load_recipe(shipped_recipes()["smoke"], [
        f'data.source="folder:{source}"', f'data.mode="{mode}"', "data.size=16", "loop.generations=2",
        'loop.modes=["replace"]', "loop.seeds=1", "generator.per_class=4"])
    run = run_and_report(Experiment(recipe, tmp_path / "run", progress=False))
    samples = ImageSet.open(run / "seed_0" / "replace" / "gen_1" / "samples")
    assert samples.manifest["image_mode"] == mode and tuple(samples.image_size) == (16, 16)
    info = conditional.read_model_info(run / "seed_0" / "replace" / "gen_1" / "model")
    assert info["training_config"]["channels"] == (3 if mode == "RGB" else 1)
    assert (run / "metrics.csv").is_file()


def test_presets_follow_the_data_and_auto_follows_data_and_device(tmp_path):
    generator = build_kind("conditional", {"preset": "digits16-cpu"})
    config = generator.check_data(image_size=32, channels=3)
    assert (config.image_size, config.channels) == (32, 3)
    assert config.block_out_channels == conditional.PRESETS["digits16-cpu"].block_out_channels
    auto = build_kind("conditional", {"preset": "auto"})
    assert auto.check_data(image_size=16, channels=3).preset == "rgb16-cpu"
    assert auto.check_data(image_size=16, channels=1).preset == "digits16-cpu"
    assert auto.check_data(image_size=32, channels=3).preset == "rgb32-cpu"
    assert auto_preset(32, 3, on_gpu=True) == "cifar32-gpu" and auto_preset(64, 3, on_gpu=True) == "64-gpu"
    with pytest.raises(ValueError, match="must be divisible"):
        generator.check_data(image_size=18, channels=3)


def test_every_train_config_field_can_be_set_from_a_recipe_and_unknown_ones_are_refused():
    fields = {f.name for f in dataclasses.fields(conditional.TrainConfig)} - {"preset", "seed"}
    options = {f.name for f in dataclasses.fields(conditional.ConditionalOptions)}
    # Every field is an option of the same name, except the optimizer steps, named apart from sampling steps.
    assert fields - {"steps"} <= options and "steps" not in options
    assert build_kind("conditional", {"preset": "smoke", "train_steps": 7}).check_data(16, 1).steps == 7
    recipe = load_recipe(shipped_recipes()["smoke"], ["generator.options.block_out_channels=[8, 8]",
                                                      "generator.options.layers_per_block=2"])
    config = build_kind("conditional", recipe.generator.options | {"preset": "smoke"}).check_data(16, 1)
    assert config.block_out_channels == (8, 8) and config.layers_per_block == 2
    with pytest.raises(RecipeError, match=r"unknown option\(s\) \['block_channels'\]"):
        load_recipe(shipped_recipes()["smoke"], ["generator.options.block_channels=[8, 8]"])


@pytest.mark.parametrize("size", ["0", "2", "5000"])
def test_an_import_size_no_pipeline_can_use_is_refused(size, tmp_path, run_cli):
    code, _, err = run_cli("data", "import", "digits", tmp_path / "out", "--size", size)
    assert code == 2 and err.count("error:") == 1 and f"size = {size}" in err
    assert not (tmp_path / "out").exists()
