"""How errors reach the user: a corpus of bad inputs, each answered by one `error:` line naming the file or
field, exit status 2, no traceback and no half-written output; failures exit 1; notes print as `note:` lines.

Broken PNGs are planted inside a set with their sha256 rewritten in metadata.jsonl (so the decoder, not
the hash check, meets them), and inside a plain folder handed to `imgsynth data import`, which is how a
user would try to make such a set.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import shutil
import sys
import tomllib
import warnings
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from PIL import Image

from imgsynth.cli.app import exit_status, run_app
from imgsynth.distributed.tasks import Task, run_tasks
from imgsynth.errors import TaskFailedError
from imgsynth.imageset import ImageSet, ImageSetWriter, Sample
from imgsynth.notes import Note

from cli_checks import nothing_written, refused, tree_digest


# --------------------------------------------------------------------------------------------- fixtures

# small_digits and small_classifier: tests/conftest.py


BROKEN = {
    "corrupt": lambda png: png[:33] + bytes(len(png) - 33),  # signature and header intact, pixel data zeroed
    "truncated": lambda png: png[: len(png) // 2],
    "zero-byte": lambda png: b"",
}


def plant(image_set: ImageSet, out: Path, kind: str) -> tuple[Path, Path]:
    """A copy of the set whose 4th image is broken as ``kind`` says, metadata vouching for the new bytes."""
    shutil.copytree(image_set.root, out)
    lines = (out / "metadata.jsonl").read_text(encoding="utf-8").splitlines()
    row = json.loads(lines[3])
    bad = out / row["file_name"]
    data = BROKEN[kind](bad.read_bytes())
    bad.write_bytes(data)
    row["sha256"] = hashlib.sha256(data).hexdigest()
    lines[3] = json.dumps(row)
    (out / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    # ... and the manifest's id for the rows (readers check it), so the decoder, not a hash, speaks
    from imgsynth.provenance import content_id

    manifest = json.loads((out / "imageset.json").read_text(encoding="utf-8"))
    manifest["id"] = content_id((r["sha256"], r["label"]) for r in map(json.loads, lines))
    (out / "imageset.json").write_text(json.dumps(manifest), encoding="utf-8")
    return out, bad


# --------------------------------------------------------------------------------------------- broken PNGs

def command(name: str, broken: Path, out: Path, small_digits: ImageSet, small_classifier: Path, tmp_path: Path) -> list:
    return {
        "train": ["train", broken, out, "--preset", "smoke", "--steps", "2", "--no-progress"],
        "metrics": ["metrics", small_digits.root, broken, "--features", f"domain:{small_classifier}", "--out", out,
                    "--cache-dir", tmp_path / "fresh-cache"],
        "classify": ["classify", "train", broken, out, "--epochs", "1", "--no-progress"],
        "curate": ["curate", broken, out, "--dedup", "0.98"],
        "export": ["data", "export", broken, out, "--format", "parquet"],
    }[name]


@pytest.mark.parametrize("name", ["train", "metrics", "classify", "curate", "export"])
@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_a_broken_png_inside_a_set_is_one_line_naming_it(kind, name, small_digits, small_classifier, run_cli, tmp_path):
    broken, bad_file = plant(small_digits, tmp_path / "broken", kind)
    before = tree_digest(broken)
    out = tmp_path / ("metrics.csv" if name == "metrics" else "out")
    line = refused(run_cli(*command(name, broken, out, small_digits, small_classifier, tmp_path)), str(bad_file))
    assert "not a readable image" in line
    assert nothing_written(out)
    assert tree_digest(broken) == before  # the input is left as it was


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_importing_a_folder_with_a_broken_png_makes_no_set(kind, small_digits, run_cli, tmp_path):
    folder = tmp_path / "photos"
    for label in ("0", "1"):
        (folder / label).mkdir(parents=True)
        for i in small_digits.indices_of_class(label):
            (folder / label / f"{i}.png").write_bytes(small_digits.read_bytes(i))
    bad = folder / "1" / "broken.png"
    bad.write_bytes(BROKEN[kind](small_digits.read_bytes(0)))
    out = tmp_path / "imported"
    refused(run_cli("data", "import", f"folder:{folder}", out), "broken.png", "not a readable image")
    assert nothing_written(out)


def test_a_thumbnail_size_that_would_exhaust_memory_is_refused_at_once(small_digits, run_cli, tmp_path):
    out = tmp_path / "curated"
    refused(run_cli("curate", small_digits.root, out, "--dedup", "0.9", "--embedding", "pixels:100000"),
            "embedding 'pixels:100000': pixel embedding size must be at least 2 and at most 1024, got 100000")
    assert nothing_written(out)


# --------------------------------------------------------------------------------------------- metrics

def converted(image_set: ImageSet, out: Path, mode: str, size: int) -> ImageSet:
    """The set with every image converted to ``mode`` and resized to ``size`` px with PIL bicubic."""
    writer = ImageSetWriter(out, image_set.classes, kind="real")
    writer.write_all(Sample(image_set.load_image(i).convert(mode).resize((size, size), Image.Resampling.BICUBIC),
                            r.label, r.caption, r.seed, f"img-{i}") for i, r in enumerate(image_set.records))
    return writer.finalize()


@pytest.mark.parametrize("mode, size, shown", [("L", 32, "32x32 (HxW) L"), ("RGB", 16, "16x16 (HxW) RGB"),
                                               ("RGB", 32, "32x32 (HxW) RGB")])
def test_metrics_refuses_sets_of_another_size_or_mode_naming_both(mode, size, shown, small_digits, small_classifier,
                                                                   run_cli, tmp_path):
    candidate = converted(small_digits, tmp_path / "candidate", mode, size)
    out, cache = tmp_path / "metrics.csv", tmp_path / "cache"
    args = ("metrics", small_digits.root, candidate.root, "--features", f"domain:{small_classifier}", "--out", out,
            "--cache-dir", cache)
    refused(run_cli(*args), f"{candidate.root} holds {shown} images",
            f"{small_digits.root} holds 16x16 (HxW) L images", "--resize")
    assert nothing_written(out) and not cache.exists()


def test_metrics_resize_equals_converting_the_candidate_by_hand(small_digits, small_classifier, run_cli, tmp_path):
    big_rgb = converted(small_digits, tmp_path / "big", "RGB", 32)
    by_hand = converted(big_rgb, tmp_path / "by-hand", "L", 16)  # what --resize promises: convert, bicubic
    results = {}
    for name, candidate, extra in (("resize", big_rgb, ["--resize"]), ("by-hand", by_hand, [])):
        out = tmp_path / f"{name}.csv"
        code, _, err = run_cli("metrics", small_digits.root, candidate.root, "--features",
                               f"domain:{small_classifier}", "--out", out, "--cache-dir", tmp_path / "cache",
                               "--per-class", *extra)
        assert code == 0, err
        results[name] = pd.read_csv(out)
    assert results["resize"][["metric", "class", "n"]].equals(results["by-hand"][["metric", "class", "n"]])
    assert np.allclose(results["resize"]["value"], results["by-hand"]["value"], rtol=1e-5, atol=1e-6)
    # The converted features have a cache entry of their own: the big set's own features stay apart.
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 3


# --------------------------------------------------------------------------------------------- --set

@pytest.mark.parametrize("override, says", [
    ("loop.generationz=3", "unknown field 'generationz' in [loop]"),
    ("loopz.generations=3", "unknown field 'loopz'"),
    ("loop.generations=abc", "generations = 'abc' should be int"),
    ("classifier.epochs=1.5", "epochs = 1.5 should be int"),
    ("loop.modes=3", "modes = 3 should be list"),
    ("loop.generations=0", "[loop] generations must lie in [1, 1000], got 0"),
    ("loop.seeds.x=1", "seeds in [loop] is a field, not a section"),
])
def test_a_bad_override_is_blamed_on_the_override(override, says, run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = refused(run_cli("run", "smoke", "--out", tmp_path / "run", "--set", "loop.seeds=1", "--set", override),
                   f"error: --set {override}: ", says)
    assert "smoke.toml" not in line and "loop.seeds=1" not in line  # neither the file nor the good override
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------------------------- root options

def test_debug_option_and_variable_add_the_traceback_and_keep_the_status(run_cli, tmp_path, monkeypatch):
    missing = tmp_path / "missing"
    for args, env in ((("--debug", "data", "info", missing), None), (("data", "info", missing), "1")):
        if env:
            monkeypatch.setenv("IMGSYNTH_DEBUG", env)
        code, _, err = run_cli(*args)
        assert code == 2 and "Traceback" in err and "ImageSetError" in err
        assert err.rstrip().splitlines()[-1] == f"error: {missing}: no such ImageSet folder"
    monkeypatch.delenv("IMGSYNTH_DEBUG")
    refused(run_cli("data", "info", missing), str(missing))  # --debug of an earlier call does not linger


def test_version_prints_imgsynth_and_torch(run_cli):
    import torch

    import imgsynth

    code, out, err = run_cli("--version")
    assert code == 0, err
    assert out.splitlines() == [f"imgsynth {imgsynth.__version__}", f"torch {metadata.version('torch')}"]
    assert metadata.version("torch").startswith(torch.__version__.split("+")[0])


# --------------------------------------------------------------------------------------------- statuses

def raised(function, *args):
    try:
        function(*args)
    except BaseException as exc:  # noqa: BLE001 - the exception is the result
        return exc
    raise AssertionError(f"{function} raised nothing")


def test_exit_status_of_real_exceptions():
    from safetensors.torch import load as load_safetensors

    user_errors = [
        raised(Image.open, io.BytesIO(b"not a png")),  # PIL.UnidentifiedImageError (an OSError without errno)
        raised(json.loads, "{"), raised(tomllib.loads, "a = "), raised(b"\xff".decode, "utf-8"),
        raised(load_safetensors, b"garbage"), raised(open, "/nonexistent/file"),
        Image.DecompressionBombError("huge"), PermissionError(errno.EACCES, "Permission denied", "/x"),
    ]
    assert [exit_status(e) for e in user_errors] == [2] * len(user_errors)
    failures = [TaskFailedError("chain 3: its worker died"), MemoryError(),
                OSError(errno.ENOSPC, "No space left on device", "/x"), OSError(errno.EIO, "Input/output error")]
    assert [exit_status(e) for e in failures] == [1] * len(failures)
    assert exit_status(KeyError("x")) is None and exit_status(RuntimeError("bug")) is None  # bugs: tracebacks


def test_an_unexpected_exception_keeps_its_traceback(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["imgsynth"])
    bug = typer.Typer()

    @bug.command()
    def crash() -> None:
        {}["missing"]

    with pytest.raises(KeyError):  # run_app lets it through: Python prints the traceback and exits 1
        run_app(bug)


# --------------------------------------------------------------------------------------------- notes

def test_notes_print_as_one_line_each_and_other_warnings_stay_warnings(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["imgsynth"])
    noisy = typer.Typer()

    @noisy.command()
    def warn() -> None:
        warnings.warn("class '7' has no images\nits samples resemble nothing", Note)
        warnings.warn("a library's own remark", UserWarning)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(SystemExit) as done:
            run_app(noisy)
    assert done.value.code == 0
    err = capsys.readouterr().err
    assert err == "note: class '7' has no images\n  its samples resemble nothing\n"
    assert [str(w.message) for w in caught] == ["a library's own remark"]  # handed on as a warning


def test_notes_from_worker_processes_print_as_lines_too(capfd):
    tasks = [Task(f"t{i}", warnings.warn, (f"worker note {i}", Note)) for i in range(2)]
    run_tasks(tasks, workers=2, backend="local")
    err = capfd.readouterr().err
    assert "note: worker note 0\n" in err and "note: worker note 1\n" in err
    assert "Note:" not in err and ".py:" not in err  # not Python's `file:line: Category: message` form
