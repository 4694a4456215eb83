"""Recipes are checked field by field before any work: every bad value is one line naming file and field."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imgsynth.experiments import config
from imgsynth.experiments.config import RecipeError, load_recipe, recipe_from_dict
from imgsynth.experiments.recipes import shipped_recipes

BASE = 'name = "ok"\n[data]\nsource = "digits"\n'

# (section, field, value as TOML text, what the message must also say besides the file and the field)
BAD = [
    ("", "name", '".."', "'..'"),
    ("", "name", '"."', "'.'"),
    ("", "name", '""', "''"),
    ("", "name", '"a/b"', "'a/b'"),
    ("", "name", '"a\\\\b"', "a\\\\b"),
    ("", "name", '" lead"', "' lead'"),
    ("", "name", '"trail "', "'trail '"),
    ("", "name", '"a\\u0000b"', "a\\x00b"),
    ("", "seed", "-1", "got -1"),
    ("data", "size", "0", "got 0"),
    ("data", "size", "100000", "[4, 1024], got 100000"),
    ("data", "size", "18", "size = 18"),
    ("data", "mode", '"CMYK"', "'CMYK'"),
    ("data", "test_fraction", "nan", "finite number in (0, 1), got nan"),
    ("data", "split_seed", "-5", "got -5"),
    ("data", "minority_keep", "0", "got 0"),
    ("data", "minority_classes", '["3", "3"]', "repeated ['3']"),
    ("generator", "preset", '"huge"', "'huge'"),
    ("generator", "sample_steps", "0", "got 0"),
    ("generator", "sample_steps", "-4", "got -4"),
    ("generator", "guidance_scale", "nan", "got nan"),
    ("generator", "guidance_scale", "inf", "got inf"),
    ("generator", "guidance_scale", "-1.0", "got -1.0"),
    ("generator", "batch_size", "0", "got 0"),
    ("generator", "sample_batch_size", "0", "got 0"),
    ("generator", "train_steps", "0", "got 0"),
    ("generator", "lr", "nan", "got nan"),
    ("generator", "lr", "0.0", "got 0.0"),
    ("generator", "per_class", "0", "got 0"),
    ("generator", "noise_temperature", "0.0", "got 0.0"),
    ("generator", "noise_temperature", "-inf", "got -inf"),
    ("generator", "lora_steps", "0", "got 0"),
    ("generator", "lora_rank", "0", "got 0"),
    ("generator", "device", '"tpu"', "'tpu'"),
    ("generator", "device", '"cuda:x"', "'cuda:x'"),
    ("generator", "device", '"mps"', "'mps'"),
    ("generator", "classes", '["kitchen", ""]', "empty name"),
    ("loop", "generations", "0", "got 0"),
    ("loop", "mix_real_fraction", "nan", "got nan"),
    ("metrics", "max_per_class", "0", "got 0"),
    ("metrics", "bootstrap", "-1", "got -1"),
    ("metrics", "extractors", '["domain", "domain"]', "repeated ['domain']"),
    ("classifier", "epochs", "0", "got 0"),
    ("classifier", "batch_size", "0", "got 0"),
    ("classifier", "lr", "-0.1", "got -0.1"),
    ("classifier", "arch", '"resnet9000"', "'resnet9000'"),
    ("curate", "dedup", "1.5", "[-1, 1], got 1.5"),
    ("curate", "min_confidence", "2.0", "got 2.0"),
    ("curate", "min_clip_score", "-1.0", "got -1.0"),
    ("curate", "clip_top_fraction", "0.0", "(0, 1], got 0.0"),
    ("curate", "embedding", '"pixels:100000"', "'pixels:100000'"),
]


def _label(section: str, name: str) -> str:
    return f"[{section}] {name}" if section else name


def _recipe_text(section: str, name: str, value: str) -> str:
    if not section:
        return f"{name} = {value}\n" + BASE.replace('name = "ok"\n', "")
    if section == "data":
        return BASE + f"{name} = {value}\n"
    return BASE + f"[{section}]\n{name} = {value}\n"


@pytest.fixture(scope="module", autouse=True)
def classifier_registry_loaded():
    """Checking a non-default classifier arch imports torchvision once; keep that out of the timings."""
    import imgsynth.classifier.architectures  # noqa: F401


def _refused(path: Path, overrides: list[str] = ()) -> str:
    start = time.perf_counter()
    with pytest.raises(RecipeError) as caught:
        load_recipe(path, overrides)
    assert time.perf_counter() - start < 2.0, "validation must not start any work"
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("section, name, value, detail", BAD,
                         ids=[f"{s or 'top'}.{n}={v}" for s, n, v, _ in BAD])
def test_bad_value_in_the_file_is_refused_naming_file_and_field(tmp_path, section, name, value, detail):
    path = tmp_path / "recipe.toml"
    path.write_text(_recipe_text(section, name, value), encoding="utf-8")
    message = _refused(path)
    assert message.startswith(f"{path}: ")
    assert _label(section, name) in message and detail in message


@pytest.mark.parametrize("section, name, value, detail", BAD,
                         ids=[f"{s or 'top'}.{n}={v}" for s, n, v, _ in BAD])
def test_bad_value_given_by_override_is_refused_naming_the_override_and_field(tmp_path, section, name, value,
                                                                              detail):
    path = tmp_path / "recipe.toml"
    path.write_text(BASE, encoding="utf-8")
    key = f"{section}.{name}" if section else name
    message = _refused(path, [f"{key}={value}"])
    assert message.startswith(f"--set {key}={value}: ")  # the command line's mistake, not the file's
    assert _label(section, name) in message and detail in message


@pytest.mark.parametrize("override", ["name=..", "name=.", "name=runs/x"])
def test_bare_word_names_from_the_command_line_are_checked_too(tmp_path, override):
    path = tmp_path / "recipe.toml"
    path.write_text(BASE, encoding="utf-8")
    assert "must be a plain folder name" in _refused(path, [override])


@pytest.mark.parametrize("values", [
    {"name": "my run-1.v2"},
    {"generator": {"device": "cuda:1"}}, {"generator": {"device": "auto"}}, {"generator": {"device": "cpu"}},
    {"generator": {"device": ""}},
    {"generator": {"preset": "smoke", "guidance_scale": 0.0, "sample_steps": 1}},
    {"data": {"size": 32, "mode": "RGB"}, "generator": {"preset": "cifar32-gpu"}},
    # presets describe capacity and schedule; the data decides size and channels
    {"data": {"mode": "RGB"}}, {"data": {"size": 32, "mode": "RGB"}}, {"data": {"size": 8}},
    {"generator": {"options": {"steps": 10, "block_out_channels": [8, 16], "norm_num_groups": 4}}},
    {"data": {"size": 1024, "mode": "RGB"}, "generator": {"kind": "text2image", "model": "m"}},
    {"loop": {"mix_real_fraction": 0.0}}, {"metrics": {"max_per_class": 1}},
    {"curate": {"dedup": -1.0, "min_confidence": 0.0}},
])
def test_values_at_the_edges_of_their_ranges_are_accepted(values):
    recipe_from_dict(values)


@pytest.mark.parametrize("values, message", [
    ({"data": {"size": 18}}, r"\[data\] size = 18, mode = 'L' do not fit the conditional generator: .*image_size 18 "
                               r"must be divisible by patch_size × 2\^\(levels-1\) = 4"),
    ({"generator": {"options": {"stepz": 3}}}, r"unknown option\(s\) \['stepz'\] for generator kind 'conditional'"),
    ({"curate": {"enabled": True, "min_clip_score": 20.0}}, r"\[curate\] min_clip_score needs a CLIP model"),
    ({"loop": {"modes": ["replace+curate"]}, "curate": {"clip_top_fraction": 0.5}},
     r"\[curate\] clip_top_fraction needs a CLIP model: set \[metrics\] clip"),
])
def test_fields_that_must_agree_with_each_other_are_checked_together(values, message):
    with pytest.raises(RecipeError, match=message):
        recipe_from_dict(values)


def test_classifier_use_weights_is_a_declared_boolean_off_by_default():
    assert recipe_from_dict({}).classifier.use_weights is False
    assert recipe_from_dict({"classifier": {"use_weights": True}}).classifier.use_weights is True
    with pytest.raises(RecipeError, match=r"use_weights = 'yes' should be bool"):
        recipe_from_dict({"classifier": {"use_weights": "yes"}})


def test_every_numeric_field_of_every_section_has_a_range():
    sections = {"": config.Recipe, **config._SECTIONS}
    for section, cls in sections.items():
        numeric = {f.name for f in dataclasses.fields(cls)
                   if any(t in str(f.type) for t in ("int", "float")) and "list" not in str(f.type)}
        assert numeric == set(config.RANGES.get(section, {})), section


def test_default_classifier_name_matches_the_registry():
    from imgsynth.classifier.architectures import SMALL_RESNET

    assert config._SMALL_RESNET == SMALL_RESNET == config.ClassifierSettings().arch


@pytest.mark.parametrize("name", ["cpu", "auto", "cuda", "cuda:0", "cuda:7", "mps", "tpu", "cuda:x", "xla", "cuda:"])
def test_recipe_devices_are_those_the_device_module_runs_on(name):
    from imgsynth.compute import resolve_device

    try:
        resolve_device(name)
        runs = True
    except ValueError as exc:
        runs = "CUDA is not available" in str(exc)  # a GPU recipe is valid on a machine without one
    assert bool(config.DEVICE_PATTERN.match(name)) == runs


def test_every_shipped_recipe_validates(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "indoor").mkdir(parents=True)  # kitchen-sd-turbo's real photos are the user's
    recipes = shipped_recipes()
    assert len(recipes) >= 5
    for path in recipes.values():
        load_recipe(path)


def test_checking_a_recipe_imports_no_torch():
    code = ("import sys\n"
            "from imgsynth.experiments.config import RecipeError, recipe_from_dict\n"
            "recipe_from_dict({'curate': {'enabled': True, 'dedup': 0.9, 'embedding': 'pixels:8'}})\n"
            "for bad in ({'generator': {'preset': 'x'}}, {'data': {'size': 0}}, {'name': '..'}):\n"
            "    try:\n        recipe_from_dict(bad)\n    except RecipeError:\n        pass\n"
            "assert 'torch' not in sys.modules, 'recipe validation imported torch'\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.parametrize("text, overrides, field", [
    ('name = ".."\n', [], "name '..'"),
    ('name = "."\n', [], "name '.'"),
    (BASE + "size = 100000\n", [], "[data] size"),
    (BASE + "[generator]\npreset = \"nope\"\n", [], "[generator] preset"),
    (BASE + "[generator]\nguidance_scale = nan\n", [], "[generator] guidance_scale"),
    (BASE, ["classifier.epochs=0"], "[classifier] epochs"),
    (BASE, ["generator.device=tpu"], "[generator] device"),
])
def test_cli_run_refuses_a_bad_recipe_in_one_line_and_creates_no_run_folder(tmp_path, run_cli, monkeypatch,
                                                                              text, overrides, field):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    recipe = tmp_path / "bad.toml"
    recipe.write_text(text, encoding="utf-8")
    args = [arg for o in overrides for arg in ("--set", o)]
    start = time.perf_counter()
    code, out, err = run_cli("run", recipe, *args)
    assert time.perf_counter() - start < 5.0
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err + out
    assert (f"--set {overrides[0]}: " if overrides else f"{recipe}: ") in lines[0] and field in lines[0]
    assert list(work.iterdir()) == [] and not (tmp_path / "runs").exists()
