"""Sets and model folders written before issue 20 (tests/fixtures/before-one-seam, see its README.md) still
open, verify, keep their ids, and sample the same bytes through the command line; a finished set or fit is
still recognised as finished and one made with other settings still refused.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from imgsynth.imageset import ImageSet
from imgsynth.testing import png_without_xmp

FIXTURE = Path(__file__).parent / "fixtures" / "before-one-seam"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text(encoding="utf-8"))
SETS = sorted(EXPECTED["sets"])
MODELS = sorted(EXPECTED["models"])


def _digests(set_dir: Path) -> dict[str, str]:
    opened = ImageSet.open(set_dir)
    return {record.file_name: hashlib.sha256(opened.path_of(i).read_bytes()).hexdigest()
            for i, record in enumerate(opened.records)}


def _sampled_again_as_then(set_dir: Path, want: dict) -> None:
    """Issue 25: a generated image now carries an XMP marker; without that one chunk its bytes are exactly those
    sampled before (same pixels, same encoding), so the set's id is the old one with the marker taken out."""
    from imgsynth.provenance import content_id

    opened = ImageSet.open(set_dir)
    stripped = {r.file_name: hashlib.sha256(png_without_xmp(opened.path_of(i).read_bytes())).hexdigest()
                for i, r in enumerate(opened.records)}
    assert stripped == want["images"]
    assert content_id((stripped[r.file_name], r.label) for r in opened.records) == want["id"]
    assert all(png_without_xmp(opened.path_of(i).read_bytes()) != opened.path_of(i).read_bytes()
               for i in range(len(opened)))  # every image carries the marker


@pytest.fixture(scope="module")
def old(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the fixture folder (sampling and resuming must not write into the repository)."""
    root = tmp_path_factory.mktemp("old") / "before-one-seam"
    shutil.copytree(FIXTURE, root, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    return root


def test_the_fixture_holds_every_kind_of_folder():
    kinds = {EXPECTED["sets"][name]["kind"] for name in SETS}
    assert kinds == {"real", "generated", "curated"}
    assert set(EXPECTED["models_kind"].values()) == {"conditional", "gaussian", "kde"}


@pytest.mark.parametrize("name", SETS)
def test_an_old_set_opens_verifies_and_keeps_its_id(name, run_cli):
    want = EXPECTED["sets"][name]
    opened = ImageSet.open(FIXTURE / name)
    assert opened.id == want["id"] and opened.kind == want["kind"] and len(opened) == want["num_images"]
    assert _digests(FIXTURE / name) == want["images"]
    report = opened.verify()
    assert report.ok, report.summary()
    assert report.set_id == want["id"]
    code, out, err = run_cli("data", "verify", FIXTURE / name)
    assert code == 0, err
    assert want["id"] in out


@pytest.mark.parametrize("model", MODELS)
def test_an_old_model_folder_samples_the_same_bytes(model, old, tmp_path, run_cli):
    want = EXPECTED["models"][model]
    out = tmp_path / "again"
    code, _, err = run_cli("generate", old / model, out, *want["args"], "--no-progress")
    assert code == 0, err
    again = ImageSet.open(out)
    assert again.manifest["generator"]["kind"] == EXPECTED["models_kind"][model]
    assert want["id"] == EXPECTED["sets"][want["set"]]["id"]
    _sampled_again_as_then(out, want)
    assert again.verify().ok


@pytest.mark.parametrize("model", MODELS)
def test_an_old_finished_set_is_recognised_and_other_settings_refused(model, old, tmp_path, run_cli):
    want = EXPECTED["models"][model]
    out = tmp_path / "set"
    shutil.copytree(old / want["set"], out)
    before = (out / "imageset.json").read_bytes()
    code, _, err = run_cli("generate", old / model, out, *want["args"], "--no-progress")
    assert code == 0, err
    assert (out / "imageset.json").read_bytes() == before and _digests(out) == want["images"]

    args = list(want["args"])
    args[args.index("--seed") + 1] = "9"
    code, _, err = run_cli("generate", old / model, out, *args, "--no-progress")
    assert code == 2 and err.count("error:") == 1 and "Traceback" not in err
    assert str(out) in err
    assert (out / "imageset.json").read_bytes() == before and _digests(out) == want["images"]


def _tree(folder: Path) -> dict[str, tuple[str, int]]:
    """Each file's sha256 and modification time below ``folder`` (a rewrite changes the time)."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("model", MODELS)
def test_an_old_model_folder_is_a_finished_fit_and_other_settings_are_refused(model, old, tmp_path, run_cli):
    training = EXPECTED["training"]
    folder, train_set = tmp_path / model, tmp_path / training["set"]
    shutil.copytree(old / model, folder)  # beside its training set, as written (the fit records where it is)
    shutil.copytree(old / training["set"], train_set)
    before = _tree(folder)
    code, _, err = run_cli("train", train_set, folder, *training[model], "--no-progress")
    assert code == 0, err
    assert _tree(folder) == before  # recognised as finished: nothing trained or written again

    args = list(training[model])
    if "--option" in args:
        key, value = args[args.index("--option") + 1].split("=")
        args[args.index("--option") + 1] = f"{key}={'mle' if key == 'estimator' else '7.0'}"
    else:
        args[args.index("--steps") + 1] = "5"
    code, _, err = run_cli("train", train_set, folder, *args, "--no-progress")
    assert code == 2 and err.count("error:") == 1 and "Traceback" not in err, err
    assert folder.name in err
    assert _tree(folder) == before


def test_the_old_text2image_set_is_sampled_again_with_the_models_own_defaults(tiny_text2image, tmp_path, run_cli):
    """The pipeline is imgsynth.testing's tiny one (conftest ``tiny_text2image``, built as make.py built it); no
    steps or guidance given, so the model-aware defaults decide, as they did then."""
    want = EXPECTED["text2image"]
    assert want["pipeline"] == {"sample_size": 8, "seed": 0}  # tiny_text2image_pipeline's defaults
    out = tmp_path / "again"
    code, _, err = run_cli("generate", tiny_text2image, out, *want["args"], "--no-progress")
    assert code == 0, err
    again, then = ImageSet.open(out), ImageSet.open(FIXTURE / want["set"])
    assert again.manifest["generator"]["weights_sha256"] == then.manifest["generator"]["weights_sha256"]
    assert again.manifest["generator"]["kind"] == "text2image"
    for key in ("steps", "guidance_scale", "negative_prompt", "prompt_bank"):
        assert again.manifest["generator"].get(key) == then.manifest["generator"].get(key), key
    assert want["id"] == EXPECTED["sets"][want["set"]]["id"]
    _sampled_again_as_then(out, want)
