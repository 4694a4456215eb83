"""The manifest's generator field: one spelling for new sets, old spellings read in one place."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from imgsynth.generator_record import GeneratorRecord, generator_name, generator_record
from imgsynth.imageset import ImageSet
from imgsynth.pipelines import conditional

FIXTURES = Path(__file__).parent / "fixtures" / "before-generator-record"
ONE_SPELLING = {"kind", "pipeline", "model_path", "weights_sha256", "seed"}
OLD = {"weights_hash", "pipeline_class", "name", "class"}


def _stored(name: str) -> dict:
    return json.loads((FIXTURES / name / "imageset.json").read_text())["generator"]


@pytest.mark.parametrize("name, kind, pipeline", [
    ("conditional_set", "conditional", "ClassConditionalDiffusion"),
    ("gaussian_set", "gaussian", "GaussianGenerator"),
    ("text2image_set", "text2image", "StableDiffusionPipeline"),
])
def test_old_spellings_read_as_the_one_spelling(name, kind, pipeline):
    stored = _stored(name)
    record = generator_record(stored)
    assert ONE_SPELLING <= set(record) and not (OLD & set(record))
    assert record["kind"] == kind and record["pipeline"] == pipeline and generator_name(stored) == pipeline
    digest = stored.get("weights_sha256") or stored.get("weights_hash")
    assert record["weights_sha256"] == digest and len(digest) == 64
    # every other key survives unchanged
    assert {k: v for k, v in stored.items() if k not in OLD | ONE_SPELLING} == \
        {k: v for k, v in record.items() if k not in ONE_SPELLING}
    assert generator_record(record) == record  # reading a new record changes nothing


def test_new_sets_write_only_the_one_spelling(tmp_path):
    model = tmp_path / "model"
    shutil.copytree(FIXTURES / "conditional_model", model)
    written = conditional.sample(model, tmp_path / "set", 1, seed=0, progress=False).manifest["generator"]
    assert list(written)[:5] == ["kind", "pipeline", "model_path", "weights_sha256", "seed"]
    assert not (OLD & set(written)) and generator_record(written) == written


def test_a_set_written_with_old_spellings_is_recognised_as_finished(tmp_path):
    """Resuming with an old set in place returns it (its record read through the compatibility function)."""
    model, out = tmp_path / "model", tmp_path / "set"
    shutil.copytree(FIXTURES / "conditional_model", model)
    shutil.copytree(FIXTURES / "conditional_set", out)
    before = (out / "imageset.json").read_bytes()
    again = conditional.sample(model, out, 2, seed=3, progress=False)
    assert again.root == out.absolute() and (out / "imageset.json").read_bytes() == before
    with pytest.raises(Exception, match="other settings"):
        conditional.sample(model, out, 2, seed=4, progress=False)


def test_settings_may_not_shadow_the_record_fields():
    with pytest.raises(ValueError, match="shadow"):
        GeneratorRecord("k", "P", settings={"weights_hash": "x"}).to_dict()
    assert ImageSet.open(FIXTURES / "text2image_set").manifest["generator"]["pipeline_class"]  # fixture untouched


def test_other_tools_model_spellings_are_read_as_model():
    from imgsynth.generator_record import generator_model

    assert generator_model({"pipeline": "X", "pretrained_model_name_or_path": "org/model"}) == "org/model"
    assert generator_model(_stored("text2image_set")) == _stored("text2image_set")["model"]
    assert generator_model(_stored("conditional_set")) == _stored("conditional_set")["model_path"]
    assert generator_model({}) is None


def test_a_damaged_model_info_file_is_one_error_line_naming_it(tmp_path, run_cli):
    from imgsynth.pipelines.base import MODEL_INFO, build_kind
    from imgsynth.sources import import_source

    real = import_source("gaussian:per_class=10", tmp_path / "real", size=4, mode="L")[0]
    model = build_kind("gaussian").fit(real, tmp_path / "model", seed=0, progress=False)
    (model / MODEL_INFO).write_text('{"kind": "gaussian", ', encoding="utf-8")
    code, _, err = run_cli("generate", model, tmp_path / "out", "--per-class", "1")
    assert code == 2 and err.count("error:") == 1 and "Traceback" not in err
    assert f"{model / MODEL_INFO}: malformed JSON" in err
    assert not (tmp_path / "out").exists()
