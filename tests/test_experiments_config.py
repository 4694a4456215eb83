import tomllib

import pytest

from imgsynth.experiments.config import (RecipeError, apply_overrides, dump_recipe, load_recipe,
                                         recipe_from_dict)
from imgsynth.experiments.recipes import shipped_recipes


def test_every_shipped_recipe_round_trips_through_toml():
    recipes = shipped_recipes()
    assert {"digits-collapse", "digits-minority", "smoke", "kitchen-sd-turbo"} <= set(recipes)
    for name, path in recipes.items():
        values = tomllib.loads(path.read_text())
        if name == "kitchen-sd-turbo":  # its real-data folder is the user's; validation must say so
            with pytest.raises(RecipeError, match="data/indoor does not exist"):
                load_recipe(path)
            continue
        recipe = load_recipe(path)
        assert recipe.name == values["name"]
        assert recipe_from_dict(tomllib.loads(dump_recipe(recipe))) == recipe


def test_default_recipe_compares_three_modes_over_five_generations():
    recipe = load_recipe(shipped_recipes()["digits-collapse"])
    assert recipe.loop.modes == ["replace", "accumulate", "mix"]
    assert recipe.loop.generations == 5 and recipe.loop.mix_real_fraction == 0.1
    assert recipe.data.source == "digits"


def test_overrides_parse_toml_values_and_bare_words():
    values = apply_overrides({}, ["loop.generations=3", "loop.modes=['replace']", "generator.preset=smoke",
                                  "loop.mix_real_fraction=0.25"])
    recipe = recipe_from_dict(values)
    assert recipe.loop.generations == 3 and recipe.loop.modes == ["replace"]
    assert recipe.generator.options == {"preset": "smoke"} and recipe.loop.mix_real_fraction == 0.25


@pytest.mark.parametrize("values, message", [
    ({"loop": {"modes": ["replace", "shuffle"]}}, r"unknown mode\(s\) \['shuffle'\]"),
    ({"loop": {"mix_real_fraction": 1.5}}, r"mix_real_fraction must lie in \[0, 1\], got 1.5"),
    ({"loop": {"mix_real_fraction": -0.1}}, r"mix_real_fraction must lie in \[0, 1\]"),
    ({"data": {"source": ""}}, r"\[data\] source is missing"),
    ({"data": {"source": "imagenet"}}, r"source 'imagenet': unknown source"),
    ({"metrics": {"extractors": ["resnet"]}}, r"unknown extractor 'resnet'"),
    ({"loop": {"generations": "five"}}, r"generations = 'five' should be int"),
    ({"loop": {"generationz": 2}}, r"unknown field\(s\) \['generationz'\]"),
    ({"generator": {"kind": "gan"}}, r"kind must be one of"),
    ({"generator": {"kind": "text2image"}}, r"needs a local pipeline path"),
    ({"curate": {"modes": ["fresh"]}}, r"\[curate\] modes \['fresh'\] are not among"),
])
def test_bad_recipes_are_refused_with_the_field_named(values, message):
    with pytest.raises(RecipeError, match=message):
        recipe_from_dict(values)


def test_bad_recipe_file_fails_before_any_work(tmp_path, run_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "bad.toml"
    recipe.write_text('name = "bad"\n[loop]\nmodes = ["replace", "rotate"]\n')
    code, _, err = run_cli("run", recipe)
    assert code == 2
    assert "bad.toml" in err and "rotate" in err
    assert not (tmp_path / "runs").exists()


def test_unknown_run_target_lists_shipped_recipes(tmp_path, run_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli("run", "no-such-recipe")
    assert code == 2 and "digits-collapse" in err


def test_malformed_toml_names_the_file(tmp_path):
    recipe = tmp_path / "broken.toml"
    recipe.write_text("name = \n")
    with pytest.raises(RecipeError, match="broken.toml: not valid TOML"):
        load_recipe(recipe)
