"""Corpus (issue 21, items 2 and 7): no write follows a link out of its output, and non-ASCII or escaped names
work everywhere.

Each refusal runs ``imgsynth`` in a subprocess with a memory cap and a time limit (``cli_checks.run_limited``)
and asserts one ``error:`` line naming the link or the name, inputs (and whatever a link points at)
unchanged by tree digest, and no hidden leftovers.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_checks import assert_refused_within_limits, leftovers, nothing_written, run_limited, tree_digest
from imgsynth.imageset import ImageSet, ImageSetError, ImageSetWriter, Sample, verify
from imgsynth.safe_paths import LinkedPathError, make_dirs_inside, refuse_links_below, write_file_inside

TINY_RUN = """
name = "tiny-links"
seed = 0

[data]
source = "gaussian:classes=2,per_class=30,mean=128,sigma=20,spacing=40,seed=0"
size = 4
mode = "L"
test_fraction = 0.2

[generator]
kind = "gaussian"
per_class = 5

[loop]
generations = 2
modes = ["replace"]
seeds = [0]

[metrics]
extractors = ["pixels"]
per_class = false

[classifier]
enabled = false
"""


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished two-generation Gaussian run (seconds to make). Read-only: copy it first."""
    from imgsynth.experiments.config import load_recipe
    from imgsynth.experiments.loop import Experiment

    root = tmp_path_factory.mktemp("tiny-run")
    (root / "recipe.toml").write_text(TINY_RUN, encoding="utf-8")
    return Experiment(load_recipe(root / "recipe.toml"), root / "run", progress=False).run()


def _images(folder: Path, classes: list[str], per_class: int = 3) -> Path:
    """A ``folder:`` source: one sub-folder per class name (exactly as given), ``per_class`` small PNGs each."""
    rng = np.random.default_rng(0)
    for name in classes:
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(folder / name / f"{i}.png")
    return folder


def _outside(tmp_path: Path) -> Path:
    """A folder outside every output, with a file a write through a link would change."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me", encoding="utf-8")
    return outside


# --------------------------------------------------------------------------------------------- links

def test_resuming_a_run_whose_mode_folder_is_a_link_out_is_refused(tiny_run: Path, tmp_path: Path) -> None:
    """Issue: a run folder whose ``seed_0/replace`` links elsewhere; resuming wrote generation 1 there."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, symlinks=True)
    shutil.rmtree(run / "seed_0" / "replace")
    outside = _outside(tmp_path)
    (run / "seed_0" / "replace").symlink_to(outside, target_is_directory=True)
    before_run, before_outside = tree_digest(run), tree_digest(outside)

    ran = run_limited("run", run)

    assert_refused_within_limits(ran, str(run / "seed_0" / "replace"), "symbolic link")
    assert tree_digest(outside) == before_outside and sorted(p.name for p in outside.iterdir()) == ["precious.txt"]
    assert tree_digest(run) == before_run
    assert leftovers(run) == [] and leftovers(outside) == []


def test_a_link_inside_a_generation_is_refused_before_any_write(tiny_run: Path, tmp_path: Path) -> None:
    """A link deeper down (generation 1's model folder) is found too: the whole run is checked before resuming."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, symlinks=True)
    generation = run / "seed_0" / "replace" / "gen_1"
    shutil.rmtree(generation / "model")
    (generation / "metrics.json").unlink()  # unfinished: resuming would fit the model again
    outside = _outside(tmp_path)
    (generation / "model").symlink_to(outside, target_is_directory=True)
    before_outside = tree_digest(outside)

    ran = run_limited("run", run)

    assert_refused_within_limits(ran, str(generation / "model"), "symbolic link")
    assert tree_digest(outside) == before_outside
    assert leftovers(run) == []


def test_training_into_a_model_folder_whose_unet_links_out_is_refused(small_digits: ImageSet, tmp_path: Path) -> None:
    """Issue: an unfinished model folder whose ``unet`` links out; ``imgsynth train`` overwrote the weights there."""
    model = tmp_path / "model"
    model.mkdir()
    outside = _outside(tmp_path)
    (outside / "diffusion_pytorch_model.safetensors").write_bytes(b"weights of another model")
    (model / "unet").symlink_to(outside, target_is_directory=True)
    before_data, before_outside = tree_digest(small_digits.root), tree_digest(outside)

    ran = run_limited("train", small_digits.root, model, "--preset", "smoke", "--train-steps", "2")

    assert_refused_within_limits(ran, str(model / "unet"), "symbolic link")
    assert tree_digest(outside) == before_outside
    assert tree_digest(small_digits.root) == before_data
    assert sorted(p.name for p in model.iterdir()) == ["unet"] and leftovers(tmp_path) == []


@pytest.mark.parametrize("kind", ["gaussian", "kde"])
def test_fitting_into_a_model_folder_whose_weights_link_out_is_refused(small_digits: ImageSet, tmp_path: Path,
                                                                        kind: str) -> None:
    """The per-class kinds' model folders: a link where ``model.safetensors`` goes is refused, not replaced."""
    model = tmp_path / "model"
    model.mkdir()
    outside = _outside(tmp_path)
    (model / "model.safetensors").symlink_to(outside / "precious.txt")
    before_outside = tree_digest(outside)

    ran = run_limited("train", small_digits.root, model, "--kind", kind)

    assert_refused_within_limits(ran, str(model / "model.safetensors"), "symbolic link")
    assert tree_digest(outside) == before_outside
    assert (model / "model.safetensors").is_symlink() and leftovers(tmp_path) == []


def test_a_set_whose_partial_folder_links_out_is_refused(tmp_path: Path) -> None:
    """A set is written in the hidden ``.<name>.partial``; a link planted there is refused, not written through."""
    outside = _outside(tmp_path)
    out = tmp_path / "digits"
    out.mkdir()
    (out / ".train.partial").symlink_to(outside, target_is_directory=True)
    before_outside = tree_digest(outside)

    ran = run_limited("data", "import", "digits", out, "--size", "8")

    assert_refused_within_limits(ran, str(out / ".train.partial"), "symbolic link")
    assert tree_digest(outside) == before_outside
    assert sorted(p.name for p in out.iterdir()) == [".train.partial"]


def test_a_lock_file_that_links_out_is_refused(tmp_path: Path) -> None:
    """The lock beside an output is written (the holder's pid); a link planted at its name is refused."""
    outside = _outside(tmp_path)
    out = tmp_path / "digits"
    (tmp_path / ".digits.lock").symlink_to(outside / "precious.txt")

    ran = run_limited("data", "import", "digits", out, "--size", "8")

    assert_refused_within_limits(ran, ".digits.lock", "symbolic link")
    assert (outside / "precious.txt").read_text(encoding="utf-8") == "keep me"
    assert not out.exists()


def _sample(label: str, seed: int) -> Sample:
    rng = np.random.default_rng(seed)
    return Sample(Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)), label, "", seed)


def test_resuming_a_set_whose_class_folder_links_out_is_refused(tmp_path: Path) -> None:
    """An unfinished write whose ``images/<label>`` was replaced by a link: the resuming writer refuses it."""
    out = tmp_path / "set"
    writer = ImageSetWriter(out, ["a", "b"])
    writer.write_shard(0, [_sample("a", 0), _sample("b", 1)])
    writer.close()
    outside = _outside(tmp_path)
    shutil.rmtree(writer.partial / "images" / "a")
    (writer.partial / "images" / "a").symlink_to(outside, target_is_directory=True)

    with pytest.raises(LinkedPathError, match=r"images/a: a symbolic link"):
        ImageSetWriter(out, ["a", "b"])
    assert sorted(p.name for p in outside.iterdir()) == ["precious.txt"]


def test_a_link_planted_where_a_set_writes_an_image_is_refused(tmp_path: Path) -> None:
    """Even a link to a single file inside the partial folder, appearing after the writer checked it, is refused
    when the image is opened (``O_NOFOLLOW``), never written through."""
    out = tmp_path / "set"
    writer = ImageSetWriter(out, ["a"])
    outside = _outside(tmp_path)
    writer.write_shard(0, [_sample("a", 0)])
    (writer.partial / "images" / "a" / "000001-00000.png").symlink_to(outside / "precious.txt")
    with pytest.raises(LinkedPathError, match="000001-00000.png: a symbolic link"):
        writer.write_shard(1, [_sample("a", 1)])
    writer.abort()
    assert (outside / "precious.txt").read_text(encoding="utf-8") == "keep me"


def test_safe_paths_refuse_links_and_files_where_folders_go(tmp_path: Path) -> None:
    root = tmp_path / "out"
    assert make_dirs_inside(root, "a/b/c") == root / "a" / "b" / "c" and (root / "a" / "b" / "c").is_dir()
    outside = _outside(tmp_path)
    (root / "a" / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(LinkedPathError, match=r"a/link: a symbolic link \(to .*outside\)"):
        make_dirs_inside(root, "a/link/new")
    assert not (outside / "new").exists()
    (root / "file").write_text("x")
    with pytest.raises(LinkedPathError, match="file: exists and is not a folder"):
        make_dirs_inside(root, "file/sub")
    with pytest.raises(LinkedPathError, match="not a path inside"):
        make_dirs_inside(root, "../escape")
    with pytest.raises(LinkedPathError, match="a/link"):
        refuse_links_below(root)
    # The output root itself may be a link (a run folder on another disk): only what lies below it is checked.
    linked_root = tmp_path / "linked-root"
    linked_root.symlink_to(root / "a" / "b", target_is_directory=True)
    assert make_dirs_inside(linked_root, "d").is_dir()
    refuse_links_below(linked_root)


def test_write_file_inside_never_writes_through_a_link_or_into_a_fifo(tmp_path: Path) -> None:
    outside = _outside(tmp_path)
    (tmp_path / "link.png").symlink_to(outside / "precious.txt")
    with pytest.raises(LinkedPathError, match="link.png: a symbolic link"):
        write_file_inside(tmp_path / "link.png", b"new")
    os.mkfifo(tmp_path / "fifo.png")
    with pytest.raises(LinkedPathError, match="fifo.png: not a regular file"):  # at once, not a hang
        write_file_inside(tmp_path / "fifo.png", b"new")
    assert (outside / "precious.txt").read_text(encoding="utf-8") == "keep me"
    write_file_inside(tmp_path / "plain.png", b"longer content")
    write_file_inside(tmp_path / "plain.png", b"new")
    assert (tmp_path / "plain.png").read_bytes() == b"new"


# --------------------------------------------------------------------------------------------- names

NFD_CREME = unicodedata.normalize("NFD", "crème")
GOOD_NAMES = {
    "cafe-nfc": ["café", "plain"],
    "creme-nfd": [NFD_CREME, "plain"],
    "quotes": ['say "cheese"', "it's"],
    "json-escapes": ['é"mixed"', "{a}[b]:#, <&>"],
    "cjk-and-emoji": ["日本", "🐱 cat"],
}


@pytest.mark.parametrize("case", sorted(GOOD_NAMES))
def test_a_set_with_non_ascii_or_escaped_class_names_imports_and_verifies(tmp_path: Path, case: str) -> None:
    """Issue: a ``café`` class failed ``verify`` (every image a "stray file": the stray check matched file names
    against the raw JSON text, where ``café`` is ``caf\\u00e9``), also straight after ``data import folder:``."""
    classes = GOOD_NAMES[case]
    source = _images(tmp_path / "source", classes)
    before = tree_digest(source)
    out = tmp_path / "out"

    imported = run_limited("data", "import", f"folder:{source}", out, "--size", "8")
    assert imported.code == 0, imported.err
    for part in ("train", "test"):
        checked = run_limited("data", "verify", out / part)
        assert checked.code == 0, checked.out + checked.err
        image_set = ImageSet.open(out / part)
        # Names are kept exactly as given (no Unicode normalisation): the folders on disk are the classes.
        assert image_set.classes == sorted(classes)
        assert sorted(p.name for p in (out / part / "images").iterdir()) == sorted(classes)
        assert all(image_set.read_bytes(i) for i in range(len(image_set)))
    assert tree_digest(source) == before and leftovers(tmp_path) == []


def test_verify_reads_file_names_of_broken_lines_as_json_values(tmp_path: Path) -> None:
    """A metadata line too broken to parse still claims its (escaped) file, which is then not also a stray."""
    out = tmp_path / "set"
    writer = ImageSetWriter(out, ["café", 'a"b'])
    writer.write_all([_sample("café", 0), _sample('a"b', 1), _sample("café", 2)])
    writer.finalize()
    assert verify(out).ok
    lines = (out / "metadata.jsonl").read_text(encoding="utf-8").splitlines()
    assert "\\u00e9" in lines[0] and '\\"' in lines[1]  # the escaped spellings the old check missed
    lines[0] = lines[0][:-1] + ', "extra": }'
    lines[1] = lines[1][:-1] + ', "extra": }'
    (out / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    problems = [str(p) for p in verify(out).problems]
    assert not [p for p in problems if "stray" in p], problems
    assert sum("metadata.jsonl:" in p for p in problems) == 2, problems


BAD_NAMES = {
    "newline": (["two\nlines", "plain"], "U+000A"),
    "nfc-and-nfd": (["café", unicodedata.normalize("NFD", "café")], "Unicode normalisation"),
    "backslash": (["back\\slash", "plain"], "cannot be a folder name"),
    "not-utf8": ([b"caf\xe9".decode("utf-8", "surrogateescape"), "plain"], "not valid UTF-8"),
}


def _bytes_digest(root: Path) -> str:
    """``tree_digest`` for trees whose names need not be UTF-8 (paths hashed as the bytes on disk)."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(os.fsencode(path.relative_to(root)))
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.mark.parametrize("case", sorted(BAD_NAMES))
def test_a_class_name_no_set_can_hold_is_refused_in_one_line(tmp_path: Path, case: str) -> None:
    """Names imgsynth decides not to accept (control characters, names equal up to NFC/NFD, ``\\``, bytes
    that are not UTF-8) are one ``error:`` line naming the source folder, before anything is written."""
    classes, needle = BAD_NAMES[case]
    source = _images(tmp_path / "source", classes)
    before = _bytes_digest(source)
    out = tmp_path / "out"

    ran = run_limited("data", "import", f"folder:{source}", out, "--size", "8")

    assert_refused_within_limits(ran, str(source), needle)
    assert _bytes_digest(source) == before and nothing_written(out)


def test_the_writer_refuses_names_equal_up_to_normalisation() -> None:
    with pytest.raises(ImageSetError, match="Unicode normalisation"):
        ImageSetWriter("/nonexistent/never-written", [unicodedata.normalize("NFC", "é"), unicodedata.normalize("NFD", "é")])


@pytest.mark.parametrize("name", ["README.md", "croissant.json"])
def test_verify_refuses_a_set_file_that_is_a_fifo(small_digits: ImageSet, tmp_path: Path, name: str) -> None:
    """Issue: ``verify`` passed a set whose ``README.md`` is a FIFO; every file a set holds must be regular."""
    out = tmp_path / "set"
    shutil.copytree(small_digits.root, out)
    (out / name).unlink(missing_ok=True)
    os.mkfifo(out / name)

    ran = run_limited("data", "verify", out)

    assert ran.code != 0 and "Traceback" not in ran.err + ran.out and ran.seconds < 30
    assert f"{out / name}: not a regular file" in ran.out + ran.err, ran.out + ran.err
    assert json.loads((out / "imageset.json").read_text(encoding="utf-8"))["id"] == small_digits.id


def test_generating_a_set_at_a_link_to_an_empty_folder_is_refused_before_sampling(tiny_run: Path,
                                                                                    tmp_path: Path) -> None:
    """A set is renamed into place, which would replace the link: refused up front, naming it (it was a bare
    "Not a directory" after sampling)."""
    target = tmp_path / "empty"
    target.mkdir()
    link = tmp_path / "samples"
    link.symlink_to(target, target_is_directory=True)

    ran = run_limited("generate", tiny_run / "seed_0" / "gen_0" / "model", link, "--per-class", "2")

    assert_refused_within_limits(ran, str(link), "symbolic link")
    assert list(target.iterdir()) == [] and link.is_symlink() and leftovers(tmp_path) == []


def test_an_export_whose_partial_folder_is_a_link_discards_the_link_not_its_target(small_digits: ImageSet,
                                                                                   tmp_path: Path) -> None:
    """An export starts over in a fresh hidden partial folder: a link left at that name is removed (it was a bare
    "File exists"), what it points at is untouched, and the export is written where it was asked for."""
    outside = _outside(tmp_path)
    out = tmp_path / "export"
    (tmp_path / ".export.partial").symlink_to(outside, target_is_directory=True)
    before = tree_digest(outside)

    ran = run_limited("data", "export", small_digits.root, out, "--format", "parquet")

    assert ran.code == 0, ran.err
    assert tree_digest(outside) == before
    assert sorted(p.suffix for p in out.iterdir()) == [".parquet"] and leftovers(tmp_path) == []


def test_a_run_on_classes_with_non_ascii_and_quoted_names_verifies_and_reports_them(tmp_path: Path) -> None:
    """Non-ASCII and escaped class names through a whole run: every set it writes verifies, and the per-class
    metrics name the classes exactly as the source folders spelled them (NFD kept NFD)."""
    import pandas as pd

    classes = ["café", 'say "cheese"', NFD_CREME]
    source = _images(tmp_path / "source", classes, per_class=12)
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(TINY_RUN.replace('source = "gaussian:classes=2,per_class=30,mean=128,sigma=20,spacing=40,seed=0"',
                                       f'source = "folder:{source.as_posix()}"')
                      .replace("per_class = false", "per_class = true"), encoding="utf-8")
    run = tmp_path / "run"

    ran = run_limited("run", recipe, "--out", run, timeout=300)

    assert ran.code == 0, ran.err
    sets = sorted(p.parent for p in run.rglob("imageset.json"))
    assert len(sets) >= 4
    for folder in sets:
        assert verify(folder).ok, verify(folder).summary()
    metrics = pd.read_csv(run / "metrics.csv", keep_default_na=False)
    assert set(classes) <= set(metrics["class"])
