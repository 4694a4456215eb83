"""The default recipe's preset is ``auto``: on the embedded digits it trains exactly what it trained before
(``digits16-cpu``, on a CPU or a GPU machine), on a user's RGB photos the RGB preset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgsynth.experiments.config import RecipeError, dump_recipe, load_recipe
from imgsynth.experiments.loop import Experiment
from imgsynth.experiments.recipes import DEFAULT_RECIPE, shipped_recipes
from imgsynth.imageset import ImageSet
from imgsynth.pipelines.base import build_kind
from imgsynth.pipelines.conditional import kind as conditional_kind
from imgsynth.pipelines.conditional import training
from imgsynth.pipelines.conditional.config import TrainConfig
from imgsynth.sources import import_source

DEFAULT = shipped_recipes()[DEFAULT_RECIPE]


def _fitted_config(options: dict, train_set: ImageSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                   gpu: bool) -> TrainConfig:
    """The TrainConfig the conditional kind's ``fit`` hands to training (training itself left out)."""
    seen: list[TrainConfig] = []

    def train(train_set: ImageSet, out: Path, config: TrainConfig, **_: object) -> Path:
        seen.append(config)
        return out

    monkeypatch.setattr(training, "train", train)
    monkeypatch.setattr(conditional_kind, "_cuda_available", lambda: gpu)
    build_kind("conditional", options).fit(train_set, tmp_path / "model", seed=3, progress=False)
    return seen[0]


@pytest.mark.parametrize("gpu", [False, True])
def test_auto_on_the_embedded_digits_trains_what_the_default_run_trained(gpu, digits_sets, tmp_path, monkeypatch):
    recipe = load_recipe(DEFAULT)
    assert recipe.generator.options["preset"] == "auto"
    before = {**recipe.generator.options, "preset": "digits16-cpu"}  # the default recipe until now
    auto = _fitted_config(recipe.generator.options, digits_sets[0], tmp_path, monkeypatch, gpu)
    today = _fitted_config(before, digits_sets[0], tmp_path, monkeypatch, gpu)
    assert auto == today and auto.preset == "digits16-cpu" and auto.fingerprint() == today.fingerprint()


def test_auto_on_a_users_rgb_photos_trains_the_rgb_preset(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (tmp_path / "photos" / name).mkdir(parents=True)
        for i in range(5):
            pixels = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
            Image.fromarray(pixels, "RGB").save(tmp_path / "photos" / name / f"{i}.png")
    source = f"folder:{tmp_path / 'photos'}"
    recipe = load_recipe(DEFAULT, [f'data.source="{source}"', 'data.mode="RGB"'])
    train_set, _ = import_source(source, tmp_path / "real", size=recipe.data.size, mode=recipe.data.mode,
                                 test_fraction=0.2, seed=0)
    config = _fitted_config(recipe.generator.options, train_set, tmp_path, monkeypatch, gpu=False)
    assert (config.preset, config.channels, config.image_size) == ("rgb16-cpu", 3, 16)


def test_a_run_begun_with_the_old_default_preset_continues_under_auto(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    started = dump_recipe(load_recipe(DEFAULT, ["generator.options.preset=digits16-cpu"]))
    (run / "config.toml").write_text(started, encoding="utf-8")
    experiment = Experiment(load_recipe(DEFAULT), run)
    experiment._save_config()
    assert (run / "config.toml").read_text(encoding="utf-8") == started
    assert experiment.recipe.generator.options["preset"] == "digits16-cpu"
    # A preset auto does not stand for on this data is still another recipe.
    (run / "config.toml").write_text(dump_recipe(load_recipe(DEFAULT, ["generator.options.preset=rgb16-cpu"])),
                                     encoding="utf-8")
    with pytest.raises(RecipeError, match="started with another recipe"):
        Experiment(load_recipe(DEFAULT), run)._save_config()
