"""Issue 25, item 2: signed C2PA manifests on request, read back with c2pa-python's own Reader; a tampered
image fails validation. The signing chain is made in the test (tests/c2pa_test_chain.py)."""

from __future__ import annotations

import io
import json

import c2pa
import pytest
from c2pa_test_chain import make_chain

from imgsynth.audit import audit
from imgsynth.imageset import ImageSet
from imgsynth.pipelines.base import build_kind

IPTC_TAM = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"


@pytest.fixture(scope="module")
def signed(small_digits, tmp_path_factory) -> ImageSet:
    from imgsynth.cli.generate import sample_model
    from imgsynth.provenance.markers import Marking

    root = tmp_path_factory.mktemp("c2pa")
    chain, key = make_chain(root / "credentials")
    model = build_kind("gaussian").fit(small_digits, root / "model", seed=0, progress=False)
    marking = Marking.of(c2pa_cert=str(chain), c2pa_key=str(key))
    return sample_model(model, root / "set", 1, 0, {}, classes=["0", "1", "2"], progress=False, marking=marking)


def test_every_manifest_reads_back_valid_with_the_created_action(signed, small_digits):
    for index, record in enumerate(signed.records):
        with c2pa.Reader("image/png", io.BytesIO(signed.read_bytes(index))) as reader:
            assert reader.get_validation_state() in ("Valid", "Trusted")
            store = json.loads(reader.json())
        active = store["manifests"][store["active_manifest"]]
        assertions = {a["label"]: a["data"] for a in active["assertions"]}
        actions = next(v for k, v in assertions.items() if k.startswith("c2pa.actions"))["actions"]
        created = [a for a in actions if a["action"] == "c2pa.created"]
        assert created and created[0]["digitalSourceType"] == IPTC_TAM
        assert created[0]["softwareAgent"]["name"] == "imgsynth"
        ours = assertions["org.imgsynth.image"]
        assert ours["generatorKind"] == "gaussian" and ours["seed"] == record.seed
        assert ours["parent_set_ids"] == [small_digits.id]
        assert "thumbnail" not in active  # offline, minimal: no thumbnail, no timestamp authority
    assert signed.manifest["markers"]["c2pa"]["cert_sha256"]
    assert signed.verify().ok


def test_a_tampered_image_fails_validation(signed, tmp_path):
    folder = tmp_path / "copies"
    folder.mkdir()
    data = bytearray(signed.read_bytes(0))
    (folder / "intact.png").write_bytes(bytes(data))
    idat = data.index(b"IDAT")
    data[idat + 6] ^= 0xFF  # one byte of the pixel data
    (folder / "tampered.png").write_bytes(bytes(data))
    rows = {r.file_name: r for r in audit(folder, watermarks=False).rows}
    assert rows["intact.png"].c2pa == "valid" and rows["intact.png"].synthetic
    assert rows["tampered.png"].c2pa == "invalid" and rows["tampered.png"].synthetic


def test_half_a_credential_is_refused(small_digits, tmp_path, run_cli):
    model = build_kind("gaussian").fit(small_digits, tmp_path / "model", seed=0, progress=False)
    code, _, err = run_cli("generate", model, tmp_path / "out", "--per-class", "1", "--c2pa-cert", tmp_path / "x.pem")
    assert code == 2 and err.count("error:") == 1 and "--c2pa-key" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_a_recipe_provenance_section_is_checked(tmp_path):
    from imgsynth.experiments.config import RecipeError, load_recipe

    chain, key = make_chain(tmp_path / "credentials")
    recipe_file = tmp_path / "r.toml"
    recipe_file.write_text(f'[provenance]\nwatermark = true\nc2pa_cert = "{chain}"\n', encoding="utf-8")
    with pytest.raises(RecipeError, match=r"\[provenance\] c2pa_cert and c2pa_key go together"):
        load_recipe(recipe_file)
    recipe_file.write_text(f'[provenance]\nc2pa_cert = "{chain}"\nc2pa_key = "{key}"\n', encoding="utf-8")
    marking = load_recipe(recipe_file).provenance.marking()
    assert marking.c2pa is not None and marking.c2pa.key == str(key) and not marking.watermark
    from imgsynth.experiments.config import Recipe

    assert "provenance" not in Recipe().to_dict()  # a recipe that never asks stays as it was


def test_a_loop_with_a_provenance_section_signs_every_generations_images(tmp_path):
    from imgsynth.experiments.config import load_recipe
    from imgsynth.experiments.loop import Experiment
    from imgsynth.experiments.recipes import shipped_recipes
    from imgsynth.provenance.markers.c2pa_signing import read_c2pa

    chain, key = make_chain(tmp_path / "credentials")
    recipe = load_recipe(shipped_recipes()["gaussian-theory"],
                         ["loop.seeds=1", "loop.generations=2", "loop.modes=['replace']", "generator.per_class=3",
                          f'provenance.c2pa_cert="{chain}"', f'provenance.c2pa_key="{key}"'])
    Experiment(recipe, tmp_path / "run", progress=False).run()
    samples = sorted((tmp_path / "run").rglob("samples/imageset.json"))
    assert samples
    for manifest in samples:
        image_set = ImageSet.open(manifest.parent)
        assert image_set.manifest["markers"]["c2pa"] is not None
        assert all(read_c2pa(image_set.read_bytes(i)).state == "valid" for i in range(len(image_set)))


def test_the_accelerate_launch_form_of_generate_takes_the_same_marks(signed, small_digits, tmp_path):
    """`accelerate launch -m imgsynth.cli.accelerate_launch` (here its single-process form, no launcher) signs
    and marks like `imgsynth generate`: the same pixels and XMP fields, a valid manifest in every image; half a
    credential is the same one-line refusal, before any model loads and with nothing written."""
    import os
    import subprocess
    import sys

    from PIL import Image

    from imgsynth.provenance.markers.c2pa_signing import read_c2pa
    from imgsynth.provenance.markers.reading import read_markers

    chain, key = make_chain(tmp_path / "credentials")
    model = build_kind("gaussian").fit(small_digits, tmp_path / "model", seed=0, progress=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "imgsynth.cli.accelerate_launch", str(model), str(tmp_path / "launched"),
               "--per-class", "1", "--classes", "0,1,2", "--c2pa-cert", str(chain), "--c2pa-key", str(key)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    launched = ImageSet.open(tmp_path / "launched")
    assert launched.manifest["markers"]["c2pa"] is not None
    assert [r.seed for r in launched.records] == [r.seed for r in signed.records]
    for index in range(len(launched)):
        assert read_c2pa(launched.read_bytes(index)).state == "valid"
        ours, theirs = (Image.open(io.BytesIO(s.read_bytes(index))) for s in (launched, signed))
        assert ours.tobytes() == theirs.tobytes()  # signatures are randomised; the pixels are not
        fields = [read_markers(s.read_bytes(index), watermark=False, c2pa=False).xmp for s in (launched, signed)]
        assert fields[0] is not None and fields[0] == fields[1]
    half = subprocess.run([*command[:4], str(tmp_path / "half"), *command[5:-2]], env=env, capture_output=True,
                          text=True, timeout=300)
    assert half.returncode == 2 and half.stderr.count("error:") == 1 and "--c2pa-key" in half.stderr
    assert "Traceback" not in half.stderr and not (tmp_path / "half").exists()
