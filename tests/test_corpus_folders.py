"""The bad-input corpus for model and run folders (issue 21, "model and run folders trusted where sets are
checked"): every damaged folder is refused in one `error:` line naming the file or field, within limits,
changing no input and leaving nothing behind.

Each case copies a fixture, damages the copy, runs ``imgsynth`` in a capped subprocess (``run_limited``)
and checks the refusal; the fixtures themselves stay untouched.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from cli_checks import assert_refused_within_limits, leftovers, nothing_written, run_limited, tree_digest

from imgsynth.imageset import ImageSet

INFO, WEIGHTS = "imgsynth_model_info.json", "model.safetensors"


# ----------------------------------------------------------------------------------------------- helpers

def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _edit_json(path: Path, change: Callable[[Any], Any]) -> None:
    value = json.loads(path.read_text())
    changed = change(value)  # a list returned replaces the whole file (e.g. [payload]); anything else is ignored
    path.write_text(json.dumps(changed if isinstance(changed, list) else value))


def _info(change: Callable[[dict[str, Any]], Any]) -> Callable[[Path], None]:
    return lambda folder: _edit_json(folder / INFO, change)


def _weights(change: Callable[[dict[str, np.ndarray]], None]) -> Callable[[Path], None]:
    """Change the arrays, then record the new file's sha256 as a careful forger would."""
    def apply(folder: Path) -> None:
        from safetensors.numpy import load_file, save_file

        arrays = dict(load_file(str(folder / WEIGHTS)))
        change(arrays)
        save_file(arrays, str(folder / WEIGHTS))
        _edit_json(folder / INFO, lambda d: d.update(weights_sha256=_sha256(folder / WEIGHTS)))
    return apply


def _pickled_weights(folder: Path) -> None:
    (folder / WEIGHTS).write_bytes(pickle.dumps({"0.mean": [1.0, 2.0]}))
    _edit_json(folder / INFO, lambda d: d.update(weights_sha256=_sha256(folder / WEIGHTS)))


def _set(arrays: dict[str, np.ndarray], key: str, value: float) -> None:
    array = arrays[key].copy()
    array.flat[0] = value
    arrays[key] = array


def _pop(key: str) -> Callable[[dict[str, Any]], None]:
    def apply(d: dict[str, Any]) -> None:
        d.pop(key)
    return apply


def _with(**values: Any) -> Callable[[dict[str, Any]], None]:
    return lambda d: d.update(values)


# ------------------------------------------------------------------------------------------------ models

@pytest.fixture(scope="module")
def per_class_models(small_digits: ImageSet, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A gaussian and a kde model fitted to ``small_digits`` (default options). Read-only: cases copy them."""
    from imgsynth.pipelines.base import build_kind

    root = tmp_path_factory.mktemp("per-class-models")
    return {kind: build_kind(kind).fit(small_digits, root / kind, seed=0, progress=False) for kind in ("gaussian", "kde")}


# (id, kind, damage, needles of the one error line)
PER_CLASS = [
    ("classes-missing", "gaussian", _info(_pop("classes")), [INFO, "'classes'"]),
    ("classes-string", "gaussian", _info(_with(classes="0123456789")), [INFO, "classes = '0123456789'"]),
    ("classes-not-names", "kde", _info(_with(classes=[0, 1, 2, 3, 4, 5, 6, 7, 8, 9])), [INFO, "classes"]),
    ("class-missing-from-info", "gaussian", _info(lambda d: d.update(classes=d["classes"][:9])), [WEIGHTS, "tensor"]),
    ("options-missing", "gaussian", _info(_pop("options")), [INFO, "'options'"]),
    ("options-list", "kde", _info(_with(options=[1])), [INFO, "options"]),
    ("options-wrong-type", "gaussian", _info(lambda d: d["options"].update(rank="2")), [INFO, "rank"]),
    ("options-unknown", "gaussian", _info(lambda d: d["options"].update(depth=3)), [INFO, "depth"]),
    ("negative-bandwidth", "kde", _info(lambda d: d["options"].update(bandwidth=-1.0)), [INFO, "bandwidth"]),
    ("parent-missing", "gaussian", _info(_pop("parent")), [INFO, "'parent'"]),
    ("parent-string", "kde", _info(_with(parent="../real")), [INFO, "parent"]),
    ("shape-missing", "gaussian", _info(_pop("image_shape")), [INFO, "'image_shape'"]),
    ("shape-string", "gaussian", _info(_with(image_shape="16x16")), [INFO, "image_shape"]),
    ("shape-disagrees-with-weights", "kde", _info(_with(image_shape=[8, 8])), [WEIGHTS, "shape"]),
    ("kind-not-a-name", "gaussian", _info(_with(kind=5)), [INFO, "kind"]),
    ("hash-not-a-digest", "gaussian", _info(_with(weights_sha256=7)), [INFO, "weights_sha256"]),
    ("info-a-list", "gaussian", lambda f: (f / INFO).write_text("[1, 2]"), [INFO]),
    ("nan-weights", "gaussian", _weights(lambda a: _set(a, "0.mean", float("nan"))), [WEIGHTS, "NaN"]),
    ("huge-negative-weights", "gaussian", _weights(lambda a: _set(a, "3.factor", -1e308)), [WEIGHTS, "'factor'"]),
    ("mean-out-of-range", "gaussian", _weights(lambda a: _set(a, "1.mean", -1e308)), [WEIGHTS, "'mean'"]),
    ("array-missing", "gaussian", _weights(lambda a: a.pop("2.factor")), [WEIGHTS, "class '2'"]),
    ("stray-tensor", "kde", _weights(lambda a: a.update({"12.points": a["0.points"]})), [WEIGHTS, "12.points"]),
    ("negative-bandwidth-array", "kde", _weights(lambda a: _set(a, "0.bandwidth", -1e308)), [WEIGHTS, "bandwidth"]),
    ("nan-bandwidth", "kde", _weights(lambda a: _set(a, "4.bandwidth", float("nan"))), [WEIGHTS, "bandwidth"]),
    ("points-not-pixels", "kde", _weights(lambda a: a.update({"0.points": a["0.points"].astype(np.float64)})),
     [WEIGHTS, "points"]),
    ("pickle-as-safetensors", "gaussian", _pickled_weights, [WEIGHTS, "safetensors"]),
]


@pytest.mark.parametrize("kind, damage, needles", [c[1:] for c in PER_CLASS], ids=[c[0] for c in PER_CLASS])
def test_generate_refuses_a_damaged_per_class_model(per_class_models, tmp_path, kind, damage, needles):
    model = tmp_path / "model"
    shutil.copytree(per_class_models[kind], model)
    damage(model)
    before = tree_digest(model)
    out = tmp_path / "out"
    ran = run_limited("generate", model, out, "--per-class", "2", "--seed", "0", "--no-progress")
    assert_refused_within_limits(ran, *needles)
    assert tree_digest(model) == before
    assert nothing_written(out) and not leftovers(tmp_path)


def test_an_untampered_per_class_model_still_samples(per_class_models, tmp_path):
    for kind, model in per_class_models.items():
        ran = run_limited("generate", model, tmp_path / kind, "--per-class", "2", "--seed", "0", "--no-progress")
        assert ran.code == 0, ran.err
        assert ImageSet.open(tmp_path / kind).verify().ok


@pytest.mark.parametrize("kind", ["gaussian", "kde"])
def test_training_into_a_finished_model_with_tampered_weights_is_refused(per_class_models, small_digits, tmp_path,
                                                                         kind):
    model = tmp_path / "model"
    shutil.copytree(per_class_models[kind], model)
    ran = run_limited("train", small_digits.root, model, "--kind", kind)
    assert ran.code == 0, ran.err  # the finished fit is recognised ...
    data = bytearray((model / WEIGHTS).read_bytes())
    data[-1] ^= 1
    (model / WEIGHTS).write_bytes(bytes(data))
    before = tree_digest(model)
    ran = run_limited("train", small_digits.root, model, "--kind", kind)
    assert_refused_within_limits(ran, str(model / WEIGHTS), "sha256")  # ... but not with other weights
    assert tree_digest(model) == before and not leftovers(tmp_path)


# ------------------------------------------------------------------------------------- conditional models

def test_a_conditional_model_without_its_info_file_is_not_taken_for_a_text2image_pipeline(smoke_model, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(smoke_model, model)
    (model / "imgsynth_model.json").unlink()
    before = tree_digest(model)
    out = tmp_path / "out"
    ran = run_limited("generate", model, out, "--per-class", "1", "--no-progress")
    line = assert_refused_within_limits(ran, str(model), "not a complete conditional model folder",
                                        "imgsynth_model.json")
    assert "give the classes" not in line
    assert tree_digest(model) == before and nothing_written(out) and not leftovers(tmp_path)


def test_training_into_a_finished_conditional_model_with_tampered_weights_is_refused(smoke_model, digits_sets,
                                                                                     tmp_path):
    from imgsynth.pipelines import conditional

    model = tmp_path / "model"
    shutil.copytree(smoke_model, model)
    assert conditional.train(digits_sets[0], model, conditional.preset("smoke"), progress=False) == model.absolute()
    weights = model / conditional.WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    before = tree_digest(model)
    with pytest.raises(ValueError, match="does not match the sha256"):
        conditional.train(digits_sets[0], model, conditional.preset("smoke"), progress=False)
    assert tree_digest(model) == before


def test_train_cli_into_a_finished_conditional_model_with_tampered_weights_is_refused(smoke_model, digits_sets,
                                                                                      tmp_path):
    from imgsynth.pipelines import conditional

    model = tmp_path / "model"
    shutil.copytree(smoke_model, model)
    ran = run_limited("train", digits_sets[0].root, model, "--preset", "smoke", "--no-progress")
    assert ran.code == 0, ran.err  # the finished model is recognised ...
    weights = model / conditional.WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    before = tree_digest(model)
    ran = run_limited("train", digits_sets[0].root, model, "--preset", "smoke", "--no-progress")
    assert_refused_within_limits(ran, str(weights), "sha256")  # ... but not with other weights
    assert tree_digest(model) == before and not leftovers(tmp_path)


def test_a_training_checkpoint_without_ema_is_refused_naming_the_file(smoke_model, digits_sets, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    from imgsynth.pipelines import conditional

    model = tmp_path / "model"
    shutil.copytree(smoke_model, model)
    info = json.loads((model / conditional.MODEL_FILE).read_text())
    (model / conditional.MODEL_FILE).unlink()  # an unfinished training run, with one checkpoint
    step = model / "checkpoints" / "step-00000001"
    step.mkdir(parents=True)
    unet = load_file(str(model / conditional.WEIGHTS_FILE))
    tensors = {f"model.{k}": v for k, v in unet.items()}
    tensors.update({f"ema.{i:05d}": v.clone() for i, v in enumerate(unet.values())})
    save_file(tensors, str(step / "weights.safetensors"))
    torch.save({"step": 1, "optimizer": {}, "lr_scheduler": {}, "rng": {"torch": torch.get_rng_state()}},
               step / "training_state.pt")
    (step / "checkpoint.json").write_text(json.dumps({"training_set": info["parent"]["id"],
                                                      "config": info["config_fingerprint"], "step": 1}))
    before = tree_digest(step)
    with pytest.raises(ValueError) as refused:
        conditional.train(digits_sets[0], model, conditional.preset("smoke"), progress=False)
    assert str(step / "training_state.pt") in str(refused.value) and "'ema'" in str(refused.value)
    assert tree_digest(step) == before


def test_a_malformed_checkpoint_json_is_refused_naming_the_file(smoke_model, digits_sets, tmp_path):
    from imgsynth.pipelines import conditional

    model = tmp_path / "model"
    shutil.copytree(smoke_model, model)
    (model / conditional.MODEL_FILE).unlink()
    step = model / "checkpoints" / "step-00000001"
    step.mkdir(parents=True)
    shutil.copy(model / conditional.WEIGHTS_FILE, step / "weights.safetensors")
    (step / "checkpoint.json").write_text("{nope")
    with pytest.raises(ValueError, match=f"{step / 'checkpoint.json'}: malformed JSON"):
        conditional.train(digits_sets[0], model, conditional.preset("smoke"), progress=False)


# ------------------------------------------------------------------------------------------- classifiers

def _metadata(change: Callable[[dict[str, Any]], Any]) -> Callable[[Path], None]:
    return lambda folder: _edit_json(folder / "classifier.json", change)


CLASSIFIER = [
    ("image-size-string-classes-string",
     _metadata(lambda d: [d["config"].update(image_size="16"), d.update(classes="0123456789")] and None), ["classes"]),
    ("config-image-size-string", _metadata(lambda d: d["config"].update(image_size="16")), ["config.image_size"]),
    ("preprocessing-size-strings", _metadata(lambda d: d["preprocessing"].update(image_size=["16", "16"])),
     ["preprocessing.image_size"]),
    ("mean-not-a-number", _metadata(lambda d: d["preprocessing"].update(mean=["x"])), ["preprocessing.mean"]),
    ("std-zero", _metadata(lambda d: d["preprocessing"].update(std=[0.0])), ["preprocessing.std"]),
    ("classes-repeated", _metadata(lambda d: d.update(classes=["0"] * len(d["classes"]))), ["classes"]),
    ("num-classes-disagrees", _metadata(lambda d: d["model"].update(num_classes=3)), ["model.num_classes"]),
    ("in-channels-disagree", _metadata(lambda d: d["model"].update(in_channels=3)), ["preprocessing.mode"]),
    ("model-a-list", _metadata(lambda d: d.update(model=[1])), ["model"]),
    ("not-an-object", lambda f: (f / "classifier.json").write_text('"classes"'), ["JSON object"]),
]


@pytest.mark.parametrize("damage, needles", [c[1:] for c in CLASSIFIER], ids=[c[0] for c in CLASSIFIER])
def test_classify_eval_refuses_a_damaged_classifier(small_classifier, small_digits, tmp_path, damage, needles):
    clf = tmp_path / "clf"
    shutil.copytree(small_classifier, clf)
    damage(clf)
    before, data = tree_digest(clf), tree_digest(small_digits.root)
    out = tmp_path / "report"
    ran = run_limited("classify", "eval", clf, small_digits.root, "--out", out, "--device", "cpu")
    assert_refused_within_limits(ran, "classifier.json", *needles)
    assert tree_digest(clf) == before and tree_digest(small_digits.root) == data
    assert nothing_written(out) and not leftovers(tmp_path)


def test_a_pickle_saved_as_a_classifier_weights_file_is_refused_naming_it(small_classifier, small_digits, tmp_path):
    clf = tmp_path / "clf"
    shutil.copytree(small_classifier, clf)
    (clf / WEIGHTS).write_bytes(pickle.dumps({"weight": [1.0]}))
    ran = run_limited("classify", "eval", clf, small_digits.root, "--device", "cpu")
    assert_refused_within_limits(ran, str(clf / WEIGHTS))


# -------------------------------------------------------------------------------------------- run folders

def _make_run(root: Path) -> Path:
    """A hand-made finished run (one mode, two generations, a reference and run.json) that reports accept."""
    from PIL import Image

    from imgsynth.experiments.config import dump_recipe, recipe_from_dict
    from imgsynth.imageset import ImageSetWriter, Sample

    run = root / "run"
    run.mkdir(parents=True)
    recipe = recipe_from_dict({"name": "run", "loop": {"modes": ["replace"], "generations": 2}})
    (run / "config.toml").write_text(dump_recipe(recipe))
    for k, folder in enumerate([run / "gen_0", run / "replace" / "gen_1"]):
        writer = ImageSetWriter(folder / "samples", ["a", "b"], kind="generated")
        writer.write_all(Sample(Image.fromarray(np.full((4, 4), 20 * k + 10 * i, np.uint8)), label, seed=i,
                                image_id=f"{label}-{i:06d}") for label in "ab" for i in range(3))
        writer.finalize()
        rows = [{"metric": "fid", "class_name": "all", "value": 1.0 + k, "ci_low": None, "ci_high": None, "n": 6,
                 "extractor": "pixels"}]
        (folder / "metrics.json").write_text(json.dumps({"mode": "replace" if k else "base", "generation": k,
                                                         "rows": rows, "stage_seconds": {"train": 1.0}}))
    (run / "real").mkdir()
    (run / "real" / "reference.json").write_text(json.dumps({"rows": [
        {"metric": "fid", "class_name": "all", "value": 0.5, "ci_low": None, "ci_high": None, "n": 6,
         "extractor": "pixels"}]}))
    (run / "run.json").write_text(json.dumps({"seeds": [0], "workers": 1, "backend": "local", "machine": {},
                                              "software": {}, "stages_last_invocation": {"train": 1.0}}))
    return run


METRICS = "replace/gen_1/metrics.json"
RUN_FILES = [
    ("rows-a-dict", METRICS, lambda d: d.update(rows={"metric": "fid"}), ["rows"]),
    ("row-a-list", METRICS, lambda d: d.update(rows=[[1, 2]]), ["rows[0]"]),
    ("value-a-string", METRICS, lambda d: d["rows"][0].update(value="x"), ["rows[0].value"]),
    ("metric-a-number", METRICS, lambda d: d["rows"][0].update(metric=3), ["rows[0].metric"]),
    ("row-without-value", METRICS, lambda d: _pop("value")(d["rows"][0]), ["rows[0]", "'value'"]),
    ("stage-seconds-strings", METRICS, lambda d: d.update(stage_seconds={"train": "1"}), ["stage_seconds"]),
    ("metrics-a-list", METRICS, lambda d: [d], ["should hold a JSON object"]),
    ("run-json-a-list", "run.json", lambda d: [d], ["should hold a JSON object"]),
    ("run-json-machine-string", "run.json", lambda d: d.update(machine="x"), ["machine"]),
    ("reference-rows-a-dict", "real/reference.json", lambda d: d.update(rows={}), ["rows"]),
]


@pytest.mark.parametrize("name, change, needles", [c[1:] for c in RUN_FILES], ids=[c[0] for c in RUN_FILES])
def test_dashboard_refuses_a_damaged_run_file(tmp_path, name, change, needles):
    run = _make_run(tmp_path)
    _edit_json(run / name, change)
    before = tree_digest(run)
    out = tmp_path / "report"
    ran = run_limited("dashboard", run, "--out", out)
    assert_refused_within_limits(ran, str(run / name), *needles)
    assert tree_digest(run) == before and nothing_written(out) and not leftovers(tmp_path)


@pytest.mark.parametrize("name", ["replace/gen_1/metrics.json", "run.json", "real/reference.json"])
def test_a_malformed_run_file_is_named(tmp_path, name):
    run = _make_run(tmp_path)
    (run / name).write_text('{"rows": [1,}')
    ran = run_limited("dashboard", run, "--out", tmp_path / "report")
    assert_refused_within_limits(ran, str(run / name), "malformed JSON")


def test_the_hand_made_run_is_accepted(tmp_path):
    run = _make_run(tmp_path)
    ran = run_limited("dashboard", run, "--out", tmp_path / "report")
    assert ran.code == 0, ran.err


# ------------------------------------------------------------------------------------------------- sets

def _manifest(change: Callable[[dict[str, Any]], Any]) -> Callable[[Path], None]:
    return lambda folder: _edit_json(folder / "imageset.json", change)


SETS = [
    ("wrong-id", _manifest(lambda d: d.update(id="0" * 64)), ["imageset.json", "id 0000000000000000"]),
    ("wrong-num-images", _manifest(lambda d: d.update(num_images=d["num_images"] + 1)), ["imageset.json", "num_images"]),
]


@pytest.mark.parametrize("damage, needles", [c[1:] for c in SETS], ids=[c[0] for c in SETS])
def test_readers_check_the_manifest_id_and_count(small_digits, tmp_path, damage, needles):
    data = tmp_path / "data"
    shutil.copytree(small_digits.root, data)
    damage(data)
    before = tree_digest(data)
    ran = run_limited("data", "info", data)
    assert_refused_within_limits(ran, str(data / "imageset.json"), *needles[1:])
    assert tree_digest(data) == before and not leftovers(tmp_path)


def test_data_info_shows_a_license_given_as_a_name(small_digits, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(small_digits.root, data)
    _edit_json(data / "imageset.json", lambda d: d.update(license="MIT"))
    ran = run_limited("data", "info", data)
    assert ran.code == 0, ran.err
    assert "license   MIT" in ran.out


# ------------------------------------------------------------------------------------------ feature cache

def test_a_poisoned_feature_cache_entry_is_refused_naming_it(small_digits, tmp_path):
    import torch
    from safetensors.torch import load_file, safe_open, save_file

    cache = tmp_path / "cache"
    ran = run_limited("metrics", small_digits.root, small_digits.root, "--features", "pixels", "--out",
                      tmp_path / "first.csv", "--cache-dir", cache, "--device", "cpu")
    assert ran.code == 0, ran.err
    (entry,) = cache.iterdir()
    with safe_open(str(entry), framework="pt") as handle:
        metadata = handle.metadata()
    features = load_file(str(entry))["features"]
    save_file({"features": torch.zeros(features.shape[0], 5)}, str(entry), metadata=metadata)
    out = tmp_path / "second.csv"
    ran = run_limited("metrics", small_digits.root, small_digits.root, "--features", "pixels", "--out", out,
                      "--cache-dir", cache, "--device", "cpu")
    assert_refused_within_limits(ran, str(entry), "5-dimensional")
    assert nothing_written(out)
