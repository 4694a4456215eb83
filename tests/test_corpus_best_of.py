"""Bad input to best-of-K curation (`imgsynth curate --best-of/--reward`, a recipe's [curate] best_of/reward): one
`error:` line naming the flag or field, non-zero exit, input unchanged, nothing written."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cli_checks import assert_refused_within_limits, leftovers, run_limited, tree_digest

CURATE_CASES = {
    "best-of zero": (["--best-of", "0"], ["best_of", "got 0"]),
    "best-of huge": (["--best-of", "100000"], ["best_of", "100000"]),
    "unknown reward": (["--best-of", "2", "--reward", "nope"], ["unknown reward 'nope'", "confidence"]),
    "confidence without a classifier": (["--best-of", "2"], ["reward 'confidence'", "--classifier"]),
    "clip without a model": (["--best-of", "2", "--reward", "clip"], ["reward 'clip'", "--clip"]),
}


@pytest.mark.parametrize("name", sorted(CURATE_CASES))
def test_bad_best_of_settings_of_imgsynth_curate_are_refused(name, small_digits, tmp_path):
    args, needles = CURATE_CASES[name]
    source = tmp_path / "set"
    shutil.copytree(small_digits.root, source)
    before = tree_digest(source)
    ran = run_limited("curate", source, tmp_path / "out", *args)
    assert_refused_within_limits(ran, *needles)
    assert tree_digest(source) == before and not (tmp_path / "out").exists() and leftovers(tmp_path) == []


RECIPE = '''name = "bad"
[data]
source = "gaussian:classes=2,per_class=50,mean=128,sigma=20,spacing=40,seed=0"
size = 4
[generator]
kind = "gaussian"
per_class = {per_class}
[loop]
generations = 2
modes = ["replace+curate"]
[metrics]
extractors = ["pixels"]
[classifier]
enabled = false
[curate]
'''
# (An unknown or unusable reward in a recipe is checked in-process: tests/test_best_of_k.py.)
RECIPE_CASES = {
    "best_of zero": ("best_of = 0", ["[curate]", "best_of"]),
    "too many candidates": ("best_of = 900", ["[curate] best_of = 900", "per_class × best_of"], 5000),
}


@pytest.mark.parametrize("name", sorted(RECIPE_CASES))
def test_bad_best_of_fields_of_a_recipe_are_refused_before_anything_is_written(name, tmp_path):
    line, needles, *per_class = RECIPE_CASES[name]
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE.format(per_class=per_class[0] if per_class else 10) + line + "\n", encoding="utf-8")
    ran = run_limited("run", recipe, "--out", tmp_path / "run")
    assert_refused_within_limits(ran, *needles)
    assert not (tmp_path / "run").exists() and leftovers(tmp_path) == []


def test_a_metrics_train_set_that_is_not_a_set_is_refused(small_digits, tmp_path):
    """`imgsynth metrics --train` is a new input: a folder that is no ImageSet is one error naming it."""
    (tmp_path / "nothing").mkdir()
    ran = run_limited("metrics", small_digits.root, small_digits.root, "--features", "pixels", "--out",
                      tmp_path / "m.csv", "--train", tmp_path / "nothing", "--cache-dir", tmp_path / "cache",
                      "--device", "cpu")
    assert_refused_within_limits(ran, "nothing")
    assert not (tmp_path / "m.csv").exists() and leftovers(tmp_path) == []
