"""The class-conditional model as a diffusers pipeline, and model folders and sets of the older formats.

`DiffusionPipeline.from_pretrained(model_dir)` must give the images `imgsynth generate` writes for the same
seeds; `save_pretrained` must round-trip; a model folder of the flat layout (written before the pipeline
layout, kept under tests/fixtures) must still load and sample the bytes it sampled then.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from imgsynth.imageset import ImageSet
from imgsynth.pipelines import conditional
from imgsynth.pipelines.work import balanced_work
from imgsynth.testing import png_without_xmp

FIXTURES = Path(__file__).parent / "fixtures" / "before-generator-record"


def _arrays_by_item(image_set: ImageSet) -> dict[tuple[str, int], np.ndarray]:
    return {(r.label, r.seed): np.asarray(image_set.load_image(i)) for i, r in enumerate(image_set.records)}


def _pipeline_images(pipe, classes: list[str], per_class: int, seed: int) -> dict[tuple[str, int], np.ndarray]:
    work = balanced_work(classes, per_class, seed)  # the order (one batch) `imgsynth generate` samples in
    images = pipe(class_labels=[item.label for item in work],
                  generator=[torch.Generator().manual_seed(item.seed) for item in work]).images
    return {(item.label, item.seed): np.asarray(image) for item, image in zip(work, images)}


def test_diffusion_pipeline_from_pretrained_samples_what_generate_writes(smoke_model, tmp_path, run_cli):
    from diffusers import DiffusionPipeline

    from imgsynth.pipelines.conditional import ClassConditionalPipeline  # noqa: F401 (makes the class known)

    code, _, err = run_cli("generate", smoke_model, tmp_path / "set", "--per-class", "2", "--seed", "5",
                           "--no-progress")
    assert code == 0, err
    written = ImageSet.open(tmp_path / "set")
    pipe = DiffusionPipeline.from_pretrained(smoke_model)
    assert type(pipe).__name__ == "ClassConditionalPipeline"
    assert pipe.config.class_names == written.classes
    got = _pipeline_images(pipe, written.classes, 2, 5)
    want = _arrays_by_item(written)
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=str(key))
    # and the guidance argument matters (the comparison above is not vacuous)
    other = pipe(class_labels=[written.classes[0]], guidance_scale=0.0,
                 generator=[torch.Generator().manual_seed(written.records[0].seed)]).images[0]
    assert other.size == (16, 16)


def test_save_pretrained_round_trips(smoke_model, tmp_path):
    from diffusers import DiffusionPipeline

    pipe = conditional.ClassConditionalPipeline.from_pretrained(smoke_model)
    pipe.save_pretrained(tmp_path / "copy")
    again = DiffusionPipeline.from_pretrained(tmp_path / "copy")
    public = lambda config: {k: v for k, v in config.items() if not k.startswith('_')}  # noqa: E731
    assert public(again.config) == public(pipe.config)
    classes = list(pipe.config.class_names)[:3]
    a, b = _pipeline_images(pipe, classes, 1, 0), _pipeline_images(again, classes, 1, 0)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_pipeline_refuses_unknown_classes_and_mismatched_generators(smoke_model):
    pipe = conditional.ClassConditionalPipeline.from_pretrained(smoke_model)
    with pytest.raises(ValueError, match="not classes of this model"):
        pipe(class_labels=["cat"])
    with pytest.raises(ValueError, match="one per image"):
        pipe(class_labels=["0", "1"], generator=[torch.Generator()])


def test_flat_layout_model_folder_still_loads_and_samples_identically(tmp_path):
    legacy = tmp_path / "model"
    shutil.copytree(FIXTURES / "conditional_model", legacy)
    assert not (legacy / conditional.PIPELINE_FILE).exists()  # the old flat layout
    info, _, _ = conditional.check_model_dir(legacy)
    assert info["format_version"] == 1
    out = conditional.sample(legacy, tmp_path / "again", 2, seed=3, progress=False)
    before = ImageSet.open(FIXTURES / "conditional_set")
    # Generated PNGs now carry an XMP marker (issue 25); without that one chunk the bytes are those sampled then.
    again = {r.file_name: hashlib.sha256(png_without_xmp(out.path_of(i).read_bytes())).hexdigest()
             for i, r in enumerate(out.records)}
    assert again == {r.file_name: r.sha256 for r in before.records}
    assert np.array_equal(out.as_array(), before.as_array())


def test_sets_written_before_the_change_open_and_verify():
    ids = json.loads((FIXTURES / "ids.json").read_text())
    assert len(ids) >= 4
    for name, set_id in ids.items():
        image_set = ImageSet.open(FIXTURES / name)
        assert image_set.id == set_id, name
        report = image_set.verify()
        assert not report.problems, (name, report.problems)


def test_more_sampling_steps_than_the_schedule_has_is_refused_before_any_work(tmp_path, run_cli):
    legacy = tmp_path / "model"
    shutil.copytree(FIXTURES / "conditional_model", legacy)
    code, _, err = run_cli("generate", legacy, tmp_path / "out", "--per-class", "1", "--steps", "100000")
    assert code == 2 and err.count("error:") == 1 and "steps = 100000" in err and "at most 1000" in err
    assert not (tmp_path / "out").exists()
