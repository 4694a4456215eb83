"""Corpus (issue 21, items 3 and 6): every structured file is read with limits, every count is bounded before
anything is allocated, and devices are checked before any data or weights load.

Each case runs ``imgsynth`` in a subprocess under the corpus limits (``cli_checks.run_limited``: 2 GiB of
private memory, a time limit) and asserts one ``error:`` line naming the file or field, no traceback, its
inputs unchanged (tree digest) and nothing left behind.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from cli_checks import assert_refused_within_limits, leftovers, run_limited, tree_digest
from PIL import Image

# A YAML "billion laughs": nine levels of ten aliases, 10^9 strings once expanded (a few hundred bytes here).
ALIAS_BOMB = "---\nlicense: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"l{i}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 10) + "]\n" for i in range(9)) + "---\n# card\n"
DEEP_YAML = "---\nlicense: " + "[" * 5000 + "]" * 5000 + "\n---\n# card\n"
DEEP_JSON = "[" * 100_000 + "]" * 100_000
DEEP_TOML_VALUE = "[" * 5000 + "]" * 5000


def _copy(source: Path, tmp_path: Path, name: str) -> Path:
    target = tmp_path / name
    shutil.copytree(source, target, symlinks=True)
    return target


def _folder_source(tmp_path: Path, card: str) -> Path:
    """A folder of two classes of PNGs (``data import folder:``) with a dataset card ``README.md``."""
    root = tmp_path / "source"
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((8, 8), 40 * i + (label == "b") * 100, np.uint8)).save(root / label / f"{i}.png")
    (root / "README.md").write_text(card, encoding="utf-8")
    return root


def _refused(args: list, inputs: list[Path], out: Path | None, *needles: str) -> str:
    """Run ``imgsynth ARGS`` under the limits; assert the corpus refusal, inputs unchanged and nothing left."""
    before = {path: tree_digest(path) for path in inputs}
    ran = run_limited(*args)
    line = assert_refused_within_limits(ran, *needles)
    for path, digest in before.items():
        assert tree_digest(path) == digest, f"{path} changed"
        assert not leftovers(path), leftovers(path)
    if out is not None:
        assert not out.exists(), f"{out} was written"
        assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")], list(out.parent.iterdir())
    return line


# --------------------------------------------------------------------------------------------- dataset cards

@pytest.mark.parametrize("card, says", [(ALIAS_BOMB, "aliases"), (DEEP_YAML, "nested too deeply")],
                         ids=["alias-bomb", "deep-yaml"])
def test_a_dataset_card_past_the_limits_is_refused_on_import(card, says, tmp_path):
    source = _folder_source(tmp_path, card)
    out = tmp_path / "out"
    _refused(["data", "import", f"folder:{source}", out, "--size", "8"], [source], out,
             str(source / "README.md"), says)


@pytest.mark.parametrize("card, says", [(ALIAS_BOMB, "aliases"), (DEEP_YAML, "nested too deeply")],
                         ids=["alias-bomb", "deep-yaml"])
def test_a_pipeline_card_past_the_limits_is_refused_by_generate(card, says, tiny_text2image, tmp_path):
    pipeline = _copy(tiny_text2image, tmp_path, "pipeline")
    (pipeline / "README.md").write_text(card, encoding="utf-8")
    out = tmp_path / "out"
    _refused(["generate", pipeline, out, "--per-class", "1", "--classes", "kitchen"], [pipeline], out,
             "README.md", says)


# --------------------------------------------------------------------------------------------- counts

def test_an_absurd_per_class_is_refused_before_anything_is_written(smoke_model, tmp_path):
    out = tmp_path / "out"
    _refused(["generate", smoke_model, out, "--per-class", "1000000000000"], [smoke_model], out,
             "--per-class", "1000000")


def test_absurd_block_out_channels_are_refused_by_train(small_digits, tmp_path):
    out = tmp_path / "model"
    _refused(["train", small_digits.root, out, "--option", "block_out_channels=[100000,100000]"],
             [small_digits.root], out, "block_out_channels=[100000, 100000]", "parameters")


def test_absurd_block_out_channels_are_refused_by_a_recipe(tmp_path):
    recipe = tmp_path / "wide.toml"
    recipe.write_text('name = "wide"\n[generator]\nkind = "conditional"\n'
                      "[generator.options]\nblock_out_channels = [100000, 100000]\n", encoding="utf-8")
    out = tmp_path / "run"
    _refused(["run", recipe, "--out", out], [tmp_path / "wide.toml"], out, str(recipe), "block_out_channels")


def _classifier_with(small_classifier: Path, tmp_path: Path, **model: object) -> Path:
    checkpoint = _copy(small_classifier, tmp_path, "classifier")
    path = checkpoint / "classifier.json"
    metadata = json.loads(path.read_text(encoding="utf-8"))
    metadata["model"].update(model)
    path.write_text(json.dumps(metadata), encoding="utf-8")
    return checkpoint


CLASSIFIER_SIZES = [({"width": 100000}, "width"), ({"num_classes": 10**9}, "num_classes")]


@pytest.mark.parametrize("model, says", CLASSIFIER_SIZES, ids=["width", "num-classes"])
def test_an_absurd_classifier_is_refused_by_classify_eval(model, says, small_classifier, small_digits, tmp_path):
    checkpoint = _classifier_with(small_classifier, tmp_path, **model)
    out = tmp_path / "report"
    _refused(["classify", "eval", checkpoint, small_digits.root, "--out", out], [checkpoint, small_digits.root],
             out, says)


@pytest.mark.parametrize("model, says", CLASSIFIER_SIZES, ids=["width", "num-classes"])
def test_an_absurd_classifier_is_refused_by_metrics(model, says, small_classifier, small_digits, tmp_path):
    checkpoint = _classifier_with(small_classifier, tmp_path, **model)
    out = tmp_path / "metrics.csv"
    _refused(["metrics", small_digits.root, small_digits.root, "--features", f"domain:{checkpoint}", "--out", out,
              "--cache-dir", tmp_path / "cache"], [checkpoint, small_digits.root], out, says)


@pytest.mark.parametrize("model, says", CLASSIFIER_SIZES, ids=["width", "num-classes"])
def test_an_absurd_classifier_is_refused_by_curate(model, says, small_classifier, small_digits, tmp_path):
    checkpoint = _classifier_with(small_classifier, tmp_path, **model)
    out = tmp_path / "curated"
    _refused(["curate", small_digits.root, out, "--min-confidence", "0.5", "--classifier", checkpoint],
             [checkpoint, small_digits.root], out, says)


# --------------------------------------------------------------------------------------------- nesting

def _deep(path: Path) -> None:
    path.write_text(DEEP_JSON, encoding="utf-8")


# (model_index.json is not read to sample a class-conditional model folder: imgsynth_model.json says what it is.)
MODEL_FILES = ["imgsynth_model.json", "unet/config.json", "scheduler/scheduler_config.json"]


@pytest.mark.parametrize("name", MODEL_FILES)
def test_deeply_nested_json_in_a_model_folder_is_refused_naming_it(name, smoke_model, tmp_path):
    model = _copy(smoke_model, tmp_path, "model")
    _deep(model / name)
    out = tmp_path / "out"
    _refused(["generate", model, out, "--per-class", "1"], [model], out, name, "nested too deeply")


@pytest.mark.parametrize("name", ["model_index.json", "unet/config.json"])
def test_deeply_nested_json_of_a_pipeline_is_refused_naming_it(name, tiny_text2image, tmp_path):
    pipeline = _copy(tiny_text2image, tmp_path, "pipeline")
    _deep(pipeline / name)
    out = tmp_path / "out"
    _refused(["generate", pipeline, out, "--per-class", "1", "--classes", "kitchen"], [pipeline], out,
             name, "nested too deeply")


def test_deeply_nested_json_in_a_gaussian_model_is_refused_naming_it(small_digits, tmp_path):
    model = tmp_path / "gaussian"
    ran = run_limited("train", small_digits.root, model, "--kind", "gaussian")
    assert ran.code == 0, ran.err
    _deep(model / "imgsynth_model_info.json")
    out = tmp_path / "out"
    _refused(["generate", model, out, "--per-class", "1"], [model], out, "imgsynth_model_info.json",
             "nested too deeply")


def _make_run(root: Path) -> Path:
    """A hand-made finished run folder of one mode and two generations (as tests/test_reports.py makes)."""
    from imgsynth.experiments.config import dump_recipe, recipe_from_dict
    from imgsynth.imageset import ImageSetWriter, Sample

    run = root / "run"
    run.mkdir(parents=True)
    recipe = recipe_from_dict({"name": "run", "loop": {"modes": ["replace"], "generations": 2}})
    (run / "config.toml").write_text(dump_recipe(recipe), encoding="utf-8")
    for k in range(2):
        folder = run / "gen_0" if k == 0 else run / "replace" / f"gen_{k}"
        writer = ImageSetWriter(folder / "samples", ["a", "b"], kind="generated")
        writer.write_all(Sample(Image.fromarray(np.full((4, 4), 20 * k + 10 * i, np.uint8)), label, seed=i,
                                image_id=f"{label}-{i:06d}") for label in ("a", "b") for i in range(3))
        writer.finalize()
        rows = [{"metric": "fid", "class_name": "all", "value": 1.0 + k, "ci_low": None, "ci_high": None, "n": 6,
                 "extractor": "domain"}]
        (folder / "metrics.json").write_text(json.dumps({"mode": "replace" if k else "base", "generation": k,
                                                         "rows": rows}), encoding="utf-8")
    return run


RUN_FILES: dict[str, Callable[[Path], Path]] = {
    "metrics.json": lambda run: run / "replace" / "gen_1" / "metrics.json",
    "run.json": lambda run: run / "run.json",
    "reference.json": lambda run: run / "real" / "reference.json",
}


@pytest.mark.parametrize("damage, says", [(DEEP_JSON, "nested too deeply"), ('{"rows": [1,}', "malformed JSON")],
                         ids=["deep", "malformed"])
@pytest.mark.parametrize("name", list(RUN_FILES))
def test_a_damaged_run_file_is_refused_by_dashboard_naming_it(name, damage, says, tmp_path):
    run = _make_run(tmp_path)
    RUN_FILES[name](run).parent.mkdir(parents=True, exist_ok=True)
    RUN_FILES[name](run).write_text(damage, encoding="utf-8")
    out = tmp_path / "report"
    _refused(["dashboard", run, "--out", out], [run], out, name, says)


def test_a_deeply_nested_recipe_is_refused_naming_it(tmp_path):
    recipe = tmp_path / "deep.toml"
    recipe.write_text(f'name = "deep"\n[loop]\nseeds = {DEEP_TOML_VALUE}\n', encoding="utf-8")
    out = tmp_path / "run"
    _refused(["run", recipe, "--out", out], [recipe], out, str(recipe), "nested too deeply")


def test_a_deeply_nested_set_override_is_refused_naming_the_field(tmp_path):
    recipe = tmp_path / "fine.toml"
    recipe.write_text('name = "fine"\n', encoding="utf-8")
    out = tmp_path / "run"
    _refused(["run", recipe, "--out", out, "--set", f"loop.seeds={DEEP_TOML_VALUE}"], [recipe], out,
             "--set", "loop.seeds", "nested too deeply")


def test_a_deeply_nested_option_is_refused_naming_the_flag(small_digits, tmp_path):
    out = tmp_path / "model"
    _refused(["train", small_digits.root, out, "--option", f"block_out_channels={DEEP_TOML_VALUE}"],
             [small_digits.root], out, "--option", "block_out_channels", "nested too deeply")


def test_an_option_without_a_value_is_one_error_line(small_digits, tmp_path):
    out = tmp_path / "model"
    _refused(["train", small_digits.root, out, "--option", "steps"], [small_digits.root], out,
             "--option", "'steps'", "key=value")


def test_a_dataset_card_of_a_set_past_the_limits_fails_verify_naming_it(small_digits, tmp_path):
    image_set = _copy(small_digits.root, tmp_path, "set")
    (image_set / "README.md").write_text(ALIAS_BOMB.replace("# card", "<!-- written by imgsynth: the features "
                                         "above follow imageset.json; edit the manifest, not them -->"),
                                         encoding="utf-8")
    before = tree_digest(image_set)
    ran = run_limited("data", "verify", image_set)
    assert ran.code == 1 and "Traceback" not in ran.err + ran.out, ran.err
    assert "README.md" in ran.err + ran.out and "aliases" in ran.err + ran.out, ran.err + ran.out
    assert tree_digest(image_set) == before and ran.seconds < 30


# --------------------------------------------------------------------------------------------- devices

DEVICE_COMMANDS = {
    "classify-train": lambda p: ["classify", "train", p / "no-set", p / "out"],
    "classify-eval": lambda p: ["classify", "eval", p / "no-checkpoint", p / "no-set"],
    "metrics": lambda p: ["metrics", p / "no-set", p / "no-set", "--features", "pixels", "--out", p / "out.csv"],
    "features": lambda p: ["features", p / "no-set", "--features", "pixels"],
    "train": lambda p: ["train", p / "no-set", p / "out"],
    "generate": lambda p: ["generate", p / "no-model", p / "out", "--per-class", "1"],
    "finetune": lambda p: ["finetune", p / "no-pipeline", p / "no-set", p / "out"],
}


@pytest.mark.parametrize("name", list(DEVICE_COMMANDS))
def test_an_unknown_device_is_refused_first(name, tmp_path):
    # The inputs do not exist: a command that looked at them before the device would name them instead.
    ran = run_limited(*DEVICE_COMMANDS[name](tmp_path), "--device", "tpu")
    assert_refused_within_limits(ran, "--device", "'tpu'")
    assert not (tmp_path / "out").exists()


def test_a_recipe_device_this_machine_lacks_is_refused_before_the_run_starts(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    recipe = tmp_path / "gpu.toml"
    recipe.write_text('name = "gpu"\n[generator]\nkind = "conditional"\n[generator.options]\ndevice = "cuda"\n',
                      encoding="utf-8")
    out = tmp_path / "run"
    _refused(["run", recipe, "--out", out], [recipe], out, "[generator.options] device", "CUDA is not available")


# --------------------------------------------------------------------------------------------- malformed files

def test_a_malformed_training_checkpoint_json_is_refused_naming_it(small_digits, tmp_path):
    from safetensors.numpy import save_file

    out = tmp_path / "model"
    step = out / "checkpoints" / "step-00000001"
    step.mkdir(parents=True)
    save_file({"model.x": np.zeros(1, np.float32)}, str(step / "weights.safetensors"))
    (step / "checkpoint.json").write_text('{"training_set": 1,}', encoding="utf-8")
    _refused(["train", small_digits.root, out, "--option", "preset=smoke"], [small_digits.root, out], None,
             "checkpoint.json", "malformed JSON")


def test_a_malformed_lora_json_is_refused_naming_it(tiny_text2image, tmp_path):
    from safetensors.numpy import save_file

    lora = tmp_path / "lora"
    lora.mkdir()
    save_file({"x": np.zeros(1, np.float32)}, str(lora / "pytorch_lora_weights.safetensors"))
    (lora / "imgsynth_lora.json").write_text('{"rank": 4,}', encoding="utf-8")
    out = tmp_path / "out"
    _refused(["generate", tiny_text2image, out, "--per-class", "1", "--classes", "kitchen", "--lora", lora],
             [lora], out, "imgsynth_lora.json", "malformed JSON")


# --------------------------------------------------------------------------------------------- the reader itself

def test_the_reader_refuses_fifos_large_files_and_names_them(tmp_path):
    import os

    from imgsynth.structured_files import LimitExceeded, read_json, read_toml, read_yaml

    fifo = tmp_path / "config.json"
    os.mkfifo(fifo)
    with pytest.raises(LimitExceeded, match=f"{fifo}: not a regular file"):
        read_json(fifo)  # returns at once: opening never waits for a writer
    big = tmp_path / "big.toml"
    big.write_text("a = 1\n" * 100, encoding="utf-8")
    with pytest.raises(LimitExceeded, match=f"{big}: 600 bytes, larger than the 100 bytes"):
        read_toml(big, max_bytes=100)
    card = tmp_path / "card.yaml"
    card.write_text("a: &x [1, 2]\nb: *x\nc: *x\n", encoding="utf-8")
    assert read_yaml(card) == {"a": [1, 2], "b": [1, 2], "c": [1, 2]}  # a few aliases are fine


@pytest.mark.parametrize("text, says", [
    ("a: &a [*a]\n", "refers to itself"),
    ("a: !!python/object/apply:os.system ['true']\n", "not valid YAML"),
    ("".join(f"k{i}: &a{i} 1\n" for i in range(200)) + "l: [" + ", ".join(f"*a{i}" for i in range(200)) + "]\n",
     "more than 100 aliases"),
], ids=["recursive", "python-tag", "many-aliases"])
def test_yaml_is_loaded_safely_and_bounded(text, says):
    from imgsynth.structured_files import StructuredFileError, parse_yaml

    with pytest.raises(StructuredFileError, match=says):
        parse_yaml(text, "card.md")


def test_command_line_values_are_bounded_and_bare_words_stay_strings():
    from imgsynth.assignments import parse_assignment

    assert parse_assignment("sampler=ddim") == ("sampler", "ddim")
    assert parse_assignment("seeds=[[1], [2]]") == ("seeds", [[1], [2]])
    with pytest.raises(ValueError, match="'seeds'=…: value nested too deeply"):
        parse_assignment(f"seeds={DEEP_TOML_VALUE}")
    with pytest.raises(ValueError, match="expected key=value"):
        parse_assignment("steps")


LIBRARY_CHECKS = """
import sys
from pathlib import Path

import pytest

from imgsynth.classifier.architectures import ClassifierError, build_model
from imgsynth.pipelines.base import kind_for_model
from imgsynth.pipelines.conditional import preset
from imgsynth.pipelines.work import balanced_work

model, out = Path(sys.argv[1]), Path(sys.argv[2])
with pytest.raises(ValueError, match="per_class must be at most 1000000"):
    balanced_work(["a"], 10**12, 0)
with pytest.raises(ValueError, match="per_class must be at most"):
    kind_for_model(model).sample(model, out, 10**12, 0, progress=False)
assert not out.exists() and not list(out.parent.iterdir())
with pytest.raises(ValueError, match="parameters, more than imgsynth loads"):
    preset("smoke", block_out_channels=(100000, 100000))
with pytest.raises(ClassifierError, match="width must be at most"):
    build_model("resnet18_small", 10, 1, width=100000)
with pytest.raises(ClassifierError, match="num_classes must be at most"):
    build_model("resnet18", 10**9, 3)
assert build_model("resnet18_small", 10, 1, width=4).fc.out_features == 10
"""


def test_library_entry_points_bound_counts_before_allocating(smoke_model, tmp_path):
    # In a subprocess under the corpus memory cap: without the bounds these calls allocate without end.
    import os
    import resource
    import subprocess
    import sys

    from cli_checks import MEMORY_LIMIT

    (tmp_path / "empty").mkdir()
    done = subprocess.run([sys.executable, "-c", LIBRARY_CHECKS, str(smoke_model), str(tmp_path / "empty" / "out")],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_DATA, (MEMORY_LIMIT, MEMORY_LIMIT)))
    assert done.returncode == 0, done.stderr
