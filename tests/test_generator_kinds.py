"""The kind contract's rules: options own their defaults (a recipe's flat fields are translated once), which
kind owns a model folder is one documented rule, a name is registered once, renamed options still work."""

from __future__ import annotations

import dataclasses
import shutil
import warnings
from pathlib import Path
from typing import ClassVar

import pytest

from imgsynth.experiments.config import FLAT_GENERATOR_FIELDS, GeneratorConfig, load_recipe
from imgsynth.notes import Note
from imgsynth.pipelines.base import (GENERATOR_KINDS, GeneratorKind, build_kind, kind_for_model, model_kind,
                                     register_kind)
from imgsynth.pipelines.text2image.kind import Text2ImageOptions
from imgsynth.pipelines.text2image.loading import FEW_STEP_GUIDANCE, FEW_STEP_STEPS
from imgsynth.registry import RegistryError

FIXTURES = Path(__file__).parent / "fixtures" / "before-generator-record"


@pytest.fixture(scope="module")
def turbo(tiny_text2image: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny pipeline under a few-step model's name: its defaults are few steps and no guidance."""
    return Path(shutil.copytree(tiny_text2image, tmp_path_factory.mktemp("models") / "tiny-sd-turbo"))


def _recipe(tmp_path: Path, generator: str) -> Path:
    path = tmp_path / "recipe.toml"
    path.write_text('name = "t"\n[data]\nsource = "digits"\nsize = 16\nmode = "RGB"\n[generator]\n'
                    f'kind = "text2image"\nper_class = 2\n{generator}', encoding="utf-8")
    return path


def test_a_text2image_recipe_with_only_its_options_table_samples_with_the_model_aware_defaults(turbo, tmp_path):
    recipe = load_recipe(_recipe(tmp_path, f'[generator.options]\nmodel = "{turbo}"\nclasses = ["kitchen"]\n'))
    job = build_kind(recipe.generator.kind, recipe.generator.options).job(turbo, per_class=2, seed=0)
    # SD-Turbo-like models: few steps, no guidance; batches of the kind's own default size.
    assert (job.sampling.steps, job.sampling.guidance_scale) == (FEW_STEP_STEPS, FEW_STEP_GUIDANCE)
    assert job.options.sample_batch_size == Text2ImageOptions.sample_batch_size == 4  # not the recipe's old 256
    image_set = build_kind(recipe.generator.kind, recipe.generator.options).sample(
        turbo, tmp_path / "samples", per_class=1, seed=0, progress=False)
    assert (image_set.manifest["generator"]["steps"], image_set.manifest["generator"]["guidance_scale"]) == \
        (FEW_STEP_STEPS, FEW_STEP_GUIDANCE)
    assert image_set.manifest["config"]["batch_size"] == 4


def test_flat_generator_fields_default_to_not_given_so_a_kind_owns_every_default():
    defaults = GeneratorConfig()
    assert all(getattr(defaults, name) is None for name in FLAT_GENERATOR_FIELDS)
    assert {f.name for f in dataclasses.fields(GeneratorConfig)} == {"kind", "per_class", "options",
                                                                      *FLAT_GENERATOR_FIELDS}


def test_flat_fields_are_translated_once_into_options_with_a_note(turbo, tmp_path):
    with pytest.warns(Note, match=r"write them under \[generator.options\] instead \(sample_steps = 2, model = \".*\", "
                                  r"classes = \[\"kitchen\"\]\)"):
        recipe = load_recipe(_recipe(tmp_path, f'model = "{turbo}"\nclasses = ["kitchen"]\nsample_steps = 2\n'
                                               '[generator.options]\nsample_steps = 3\n'))
    # The table wins where both give an option; the flat fields are gone after the translation.
    assert recipe.generator.options == {"model": str(turbo), "classes": ["kitchen"], "sample_steps": 3}
    assert recipe.generator.sample_steps is None and recipe.generator.model is None


def test_a_conditional_model_folder_is_the_conditional_kinds_though_it_is_a_diffusers_pipeline_folder():
    model = FIXTURES / "conditional_model"
    assert model_kind(model) == "conditional"
    assert type(kind_for_model(model)).name == "conditional"


class Greedy(GeneratorKind):
    """A throwaway kind that claims every model folder as its own."""

    name: ClassVar[str] = "greedy"

    @dataclasses.dataclass
    class Options:
        shard_size: int = 8

        def validate(self) -> Greedy.Options:
            return self

    @classmethod
    def owns(cls, model: str | Path) -> bool:
        return True


class GreedyFallback(Greedy):
    name: ClassVar[str] = "greedy-fallback"
    ownership = "fallback"


def test_which_kind_owns_a_model_does_not_depend_on_registration_order(tiny_text2image):
    with GENERATOR_KINDS.registered("greedy-fallback", GreedyFallback):
        # Two fallback kinds both take a pipeline folder: refused, naming both, instead of the first one winning.
        with pytest.raises(ValueError, match=r"claimed by several generator kinds \(text2image, greedy-fallback\)"):
            model_kind(tiny_text2image)
        assert model_kind(FIXTURES / "conditional_model") == "conditional"  # a specific owner wins
    with GENERATOR_KINDS.registered("greedy", Greedy):
        with pytest.raises(ValueError, match=r"claimed by several generator kinds \(conditional, greedy\)"):
            model_kind(FIXTURES / "conditional_model")
        assert model_kind(tiny_text2image) == "greedy"  # a specific owner wins over the fallback


def test_registering_a_kind_name_twice_is_refused_naming_both():
    with pytest.raises(RegistryError, match=r"generator kind 'gaussian' is already registered as "
                                            r"imgsynth.pipelines.gaussian:GaussianKind; refusing to replace it with "
                                            r".*Greedy"):
        register_kind("gaussian", Greedy)
    assert GENERATOR_KINDS.target("gaussian") == "imgsynth.pipelines.gaussian:GaussianKind"


def test_a_renamed_option_still_works_with_a_note_and_both_names_are_refused():
    with pytest.warns(Note, match="option 'steps' of generator kind 'conditional' is now called 'train_steps'"):
        kind = build_kind("conditional", {"preset": "smoke", "steps": 5})
    assert kind.options.train_steps == 5
    with pytest.raises(ValueError, match=r"'steps' and 'train_steps' are one option"):
        build_kind("conditional", {"steps": 5, "train_steps": 6})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_kind("conditional", {"train_steps": 5})  # the name of now: no note


def test_renamed_cli_flags_still_work_with_a_note(digits_sets, tmp_path, run_cli):
    train, _ = digits_sets
    code, _, err = run_cli("train", train.root, tmp_path / "model", "--preset", "smoke", "--steps", "2",
                           "--no-progress")
    assert code == 0 and "note: --steps is now called --train-steps" in err, err
    code, _, err = run_cli("generate", tmp_path / "model", tmp_path / "set", "--per-class", "1", "--steps", "2",
                           "--no-progress")
    assert code == 0 and "note: --steps is now called --sample-steps" in err, err
    from imgsynth.imageset import ImageSet

    assert ImageSet.open(tmp_path / "set").manifest["generator"]["steps"] == 2
    code, _, err = run_cli("generate", tmp_path / "model", tmp_path / "set2", "--per-class", "1", "--steps", "2",
                           "--sample-steps", "3")
    assert code == 2 and "--steps is the former name of --sample-steps" in err
