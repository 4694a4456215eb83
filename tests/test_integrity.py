"""Integrity under concurrency and tampering: one writer per output folder, bytes checked as they are read.

Every bad case is run through the commands a user would run; each must answer with one `error:` line
naming the file or field, exit non-zero, leave its input as it was and leave no half-written output.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgsynth.imageset import ImageSet, ImageSetWriter, Sample, encode_png, verify
from imgsynth.locking import FolderBusyError, acquire, lock_path, release

from cli_checks import assert_one_error_line, nothing_written, tree_digest

IMGSYNTH = [sys.executable, "-m", "imgsynth"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}


# --------------------------------------------------------------------------------------------- fixtures
# small_digits, small_classifier and smoke_model: tests/conftest.py


def copy_set(image_set: ImageSet, out: Path) -> ImageSet:
    shutil.copytree(image_set.root, out)
    return ImageSet.open(out)


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 120.0) -> None:
    """Wait until ``path`` exists (the other writer holds its lock); fail if the process ends first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"the first writer ended (rc {process.returncode}) before taking its lock: "
                                 f"{process.stderr.read() if process.stderr else ''}")
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


def spawn(*args: str | Path) -> subprocess.Popen:
    return subprocess.Popen([*IMGSYNTH, *map(str, args)], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


# --------------------------------------------------------------------------------------------- locks

def hold_lock_in_subprocess(target: Path) -> subprocess.Popen:
    code = ("import sys, time; from imgsynth.locking import acquire; acquire(sys.argv[1]); "
            "print('held', flush=True); time.sleep(120)")
    process = subprocess.Popen([sys.executable, "-c", code, str(target)], env=ENV, stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_second_writer_is_refused_at_once_with_the_holders_pid_and_a_dead_holders_lock_is_taken_over(
        run_cli, smoke_model, tmp_path):
    out = tmp_path / "samples"
    holder = hold_lock_in_subprocess(out)
    try:
        started = time.monotonic()
        code, _, err = run_cli("generate", smoke_model, out, "--per-class", "2", "--no-progress")
        assert time.monotonic() - started < 30
        assert_one_error_line(code, err, str(out), f"pid {holder.pid}", "is writing this folder")
        assert not out.exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert lock_path(out).exists()  # a killed holder cannot clean up: its lock file stays, unlocked
    code, _, err = run_cli("generate", smoke_model, out, "--per-class", "2", "--no-progress")
    assert code == 0, err
    assert verify(out).ok and not lock_path(out).exists()


def test_the_lock_is_reentrant_in_one_process_and_exclusive_across_processes(tmp_path):
    target = tmp_path / "x"
    first, second = acquire(target), acquire(target)
    assert first is second
    release(first)
    assert lock_path(target).exists()  # still held once
    probe = subprocess.run([sys.executable, "-c", "import sys; from imgsynth.locking import acquire; "
                            "acquire(sys.argv[1])", str(target)], env=ENV, capture_output=True, text=True)
    assert probe.returncode != 0 and "FolderBusyError" in probe.stderr and str(os.getpid()) in probe.stderr
    release(second)
    assert not lock_path(target).exists()


def test_a_writer_never_deletes_the_partial_of_a_live_writer(tmp_path):
    out = tmp_path / "set"
    code = ("import sys, time\nfrom PIL import Image\nfrom imgsynth.imageset import ImageSetWriter, Sample\n"
            "w = ImageSetWriter(sys.argv[1], ['a'], config={'job': 1})\n"
            "w.write_shard(0, [Sample(Image.new('L', (4, 4)), 'a')])\nprint('written', flush=True)\ntime.sleep(120)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(out)], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "written"
        partial = tmp_path / ".set.partial"
        before = tree_digest(partial)
        with pytest.raises(FolderBusyError, match=f"pid {holder.pid}"):
            ImageSetWriter(out, ["a"], config={"job": 2})  # another job: it would have discarded the partial
        assert tree_digest(partial) == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    writer = ImageSetWriter(out, ["a"], config={"job": 1})  # the dead writer's job resumes from its shard
    assert writer.done_shards == {0}
    assert len(writer.finalize()) == 1


@pytest.mark.slow
@pytest.mark.parametrize("command", ["generate", "import", "train", "run"])
def test_two_concurrent_jobs_into_one_folder_one_succeeds_the_other_is_refused_at_once(
        command, run_cli, smoke_model, small_digits, tmp_path):
    out = tmp_path / "out"
    first, second = {
        "generate": (["generate", smoke_model, out, "--per-class", "60", "--seed", "0", "--steps", "8"],
                     ["generate", smoke_model, out, "--per-class", "2", "--seed", "1"]),
        "import": (["data", "import", "digits", out, "--size", "48"], ["data", "import", "digits", out, "--seed", "1"]),
        "train": (["train", small_digits.root, out, "--preset", "smoke", "--steps", "300"],
                  ["train", small_digits.root, out, "--preset", "smoke", "--steps", "2"]),
        "run": (["run", "smoke", "--out", out, "--set", "loop.generations=1"],
                ["run", "smoke", "--out", out, "--set", "seed=1", "--set", "loop.generations=1"]),
    }[command]
    winner = spawn(*first)
    try:
        wait_for(lock_path(out), winner)
        started = time.monotonic()
        code, _, err = run_cli(*second)
        assert time.monotonic() - started < 30, "the second writer must be refused at once, not after working"
        assert_one_error_line(code, err, str(out), f"pid {winner.pid}")
        _, winner_err = winner.communicate(timeout=300)
    finally:
        if winner.poll() is None:
            winner.kill()
    assert winner.returncode == 0, winner_err
    if command == "generate":
        assert verify(out).ok and len(ImageSet.open(out)) == 600
    elif command == "import":
        assert verify(out / "train").ok and verify(out / "test").ok
        assert ImageSet.open(out / "train").image_size == (48, 48)
    elif command == "train":
        info = json.loads((out / "imgsynth_model.json").read_text())
        assert info["training_config"]["steps"] == 300
    else:
        assert (out / "metrics.csv").is_file() and "seed = 0" in (out / "config.toml").read_text()
    assert not lock_path(out).exists()


# --------------------------------------------------------------------------------------------- tampering

def tamper(image_set: ImageSet, count: int) -> Path:
    """Overwrite ``count`` images with other valid PNGs (flipped pixels), metadata untouched; the first one."""
    changed = list(range(3, 3 + count))
    for i in changed:
        flipped = Image.fromarray(255 - np.asarray(image_set.load_image(i)))
        image_set.path_of(i).write_bytes(encode_png(flipped))
    return image_set.path_of(changed[0])


def test_changed_bytes_are_refused_by_every_stage_naming_the_first_bad_file(
        run_cli, small_digits, small_classifier, tmp_path):
    changed = copy_set(small_digits, tmp_path / "changed")
    first_bad = tamper(changed, 25)
    before = tree_digest(changed.root)
    out = tmp_path / "out"
    commands = {
        "metrics": ["metrics", small_digits.root, changed.root, "--features", f"domain:{small_classifier}",
                    "--out", tmp_path / "m.csv", "--cache-dir", tmp_path / "cache"],
        "train": ["train", changed.root, out, "--preset", "smoke", "--steps", "2", "--no-progress"],
        "classify": ["classify", "train", changed.root, out, "--epochs", "1"],
        "curate": ["curate", changed.root, out, "--dedup", "0.98"],
        "export-parquet": ["data", "export", changed.root, out, "--format", "parquet"],
        "export-webdataset": ["data", "export", changed.root, out, "--format", "webdataset"],
    }
    for name, args in commands.items():
        code, _, err = run_cli(*args)
        assert_one_error_line(code, err, str(first_bad), "content changed")
        assert nothing_written(out), name
        assert tree_digest(changed.root) == before, name
    assert not (tmp_path / "m.csv").exists()


def test_the_feature_cache_is_never_poisoned_by_changed_files(run_cli, small_digits, small_classifier, tmp_path):
    candidate = copy_set(small_digits, tmp_path / "candidate")
    cache = tmp_path / "cache"
    args = ["metrics", small_digits.root, candidate.root, "--features", f"domain:{small_classifier}",
            "--metrics", "fid", "--cache-dir", cache]
    code, _, err = run_cli(*args, "--out", tmp_path / "clean.csv")
    assert code == 0, err
    entries = sorted(p.name for p in cache.iterdir())
    originals = {i: candidate.path_of(i).read_bytes() for i in range(3, 8)}
    first_bad = tamper(candidate, 5)
    code, _, err = run_cli(*args, "--out", tmp_path / "changed.csv")  # a cache hit: the files are still checked
    assert_one_error_line(code, err, str(first_bad))
    assert sorted(p.name for p in cache.iterdir()) == entries
    for i, data in originals.items():
        candidate.path_of(i).write_bytes(data)
    code, _, err = run_cli(*args, "--out", tmp_path / "restored.csv")
    assert code == 0, err
    assert (tmp_path / "restored.csv").read_text() == (tmp_path / "clean.csv").read_text()


# --------------------------------------------------------------------------------------------- bad-input corpus

def tiny_set(root: Path, mode: str = "L") -> ImageSet:
    rng = np.random.default_rng(0)
    shape = (16, 16) if mode == "L" else (16, 16, 3)
    writer = ImageSetWriter(root, ["cat", "dog"])
    writer.write_all(Sample(Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)), label, f"a {label}", i,
                            f"{label}-{i}") for i in range(6) for label in ("cat", "dog"))
    return writer.finalize()


def rows_of(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "metadata.jsonl").read_text().splitlines()]


def write_rows(root: Path, rows: list[dict]) -> None:
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def set_manifest(root: Path, **fields) -> None:
    manifest = json.loads((root / "imageset.json").read_text())
    manifest.update(fields)
    (root / "imageset.json").write_text(json.dumps(manifest))


def relisted(root: Path, data: bytes) -> None:
    """Make metadata vouch for the new bytes of the first image, and the manifest's id for the rows (readers
    check it), so the decoder, not a hash, speaks."""
    from imgsynth.provenance import content_id

    rows = rows_of(root)
    rows[0]["sha256"] = hashlib.sha256(data).hexdigest()
    write_rows(root, rows)
    set_manifest(root, id=content_id((r["sha256"], r["label"]) for r in rows))


def damage(case: str, root: Path, outside: Path) -> str:
    """Damage the set at ``root`` as ``case`` says; returns the text the error line must contain."""
    first = root / rows_of(root)[0]["file_name"]
    if case == "corrupt-png":
        first.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
        relisted(root, first.read_bytes())
        return f"{first}: not a readable image"
    if case == "truncated-png":
        first.write_bytes(first.read_bytes()[:40])
        relisted(root, first.read_bytes())
        return f"{first}: not a readable image"
    if case == "zero-byte-png":
        first.write_bytes(b"")
        relisted(root, b"")
        return f"{first}: not a readable image (empty file)"
    if case == "directory-as-image":
        first.unlink()
        first.mkdir()
        return f"{first}: a folder"
    if case == "symlink-as-image":
        outside.write_bytes(first.read_bytes())
        first.unlink()
        first.symlink_to(outside)
        return "metadata.jsonl:1: file_name 'images/cat/cat-0.png' is a symbolic link (or lies behind one)"
    if case == "images-folder-symlink":
        shutil.copytree(root / "images", outside)
        shutil.rmtree(root / "images")
        (root / "images").symlink_to(outside)
        return "metadata.jsonl:1: file_name 'images/cat/cat-0.png' is a symbolic link (or lies behind one)"
    if case == "metadata-symlink":
        shutil.copy(root / "metadata.jsonl", outside)
        (root / "metadata.jsonl").unlink()
        (root / "metadata.jsonl").symlink_to(outside)
        return f"{root / 'metadata.jsonl'}: a symbolic link"
    if case == "rgb-in-l-set":
        first.write_bytes(encode_png(Image.new("RGB", (16, 16), (1, 2, 3))))
        relisted(root, first.read_bytes())
        return f"{first}: image mode RGB, but the set's manifest says L"
    if case == "wrong-size":
        first.write_bytes(encode_png(Image.new("L", (17, 16))))
        relisted(root, first.read_bytes())
        return f"{first}: image is 16x17"
    if case == "dot-segment":
        rows = rows_of(root)
        rows[1]["file_name"] = rows[0]["file_name"].replace("images/", "images/./")
        write_rows(root, rows)
        return "metadata.jsonl:2: file_name 'images/./cat/cat-0.png' is not in normal form"
    if case == "double-slash":
        rows = rows_of(root)
        rows[1]["file_name"] = rows[0]["file_name"].replace("images/", "images//")
        write_rows(root, rows)
        return "metadata.jsonl:2: file_name 'images//cat/cat-0.png' is not in normal form"
    if case == "duplicate-classes":
        set_manifest(root, classes=["cat", "dog", "cat"])
        return "duplicate class name(s) ['cat']"
    if case == "counts-list":
        set_manifest(root, counts=[6, 6])
        return "imageset.json: 'counts' must be an object"
    if case == "image-size-int":
        set_manifest(root, image_size=8)
        return "imageset.json: 'image_size' must be [height, width]"
    if case == "parents-dict":
        set_manifest(root, parents={"id": "x"})
        return "imageset.json: 'parents' must be a list"
    if case == "deep-manifest":
        (root / "imageset.json").write_text("[" * 200_000 + "]" * 200_000)
        return "imageset.json: JSON nested too deeply"
    if case == "deep-metadata-line":
        lines = (root / "metadata.jsonl").read_text().splitlines()
        lines[2] = '{"file_name": ' + "[" * 200_000 + "]" * 200_000 + "}"
        (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
        return "metadata.jsonl:3: JSON nested too deeply"
    if case == "nul-in-caption":
        rows = rows_of(root)
        rows[3]["caption"] = "a\x00cat"
        write_rows(root, rows)
        return "metadata.jsonl:4: caption must be a string without NUL"
    if case == "huge-integer":
        lines = (root / "metadata.jsonl").read_text().splitlines()
        lines[4] = lines[4].replace('"seed": 2', '"seed": ' + "9" * 5000)
        (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
        return "metadata.jsonl:5: unreadable JSON value"
    if case == "invalid-utf8":
        data = (root / "metadata.jsonl").read_bytes().splitlines(keepends=True)
        data[5] = data[5].replace(b"a dog", b"a \xff\xfe dog")
        (root / "metadata.jsonl").write_bytes(b"".join(data))
        return "metadata.jsonl:6: not UTF-8 text"
    raise AssertionError(case)


FILE_CASES = {"corrupt-png", "truncated-png", "zero-byte-png", "directory-as-image", "rgb-in-l-set", "wrong-size"}
MANIFEST_CASES = {"duplicate-classes", "counts-list", "image-size-int", "parents-dict", "deep-manifest"}
CASES = ["corrupt-png", "truncated-png", "zero-byte-png", "directory-as-image", "symlink-as-image",
         "images-folder-symlink", "metadata-symlink", "rgb-in-l-set", "wrong-size", "dot-segment", "double-slash",
         "duplicate-classes", "counts-list", "image-size-int", "parents-dict", "deep-manifest",
         "deep-metadata-line", "nul-in-caption", "huge-integer", "invalid-utf8"]


@pytest.mark.parametrize("case", CASES)
def test_every_command_answers_a_bad_set_with_one_line(case, run_cli, small_digits, small_classifier, tmp_path):
    root = tiny_set(tmp_path / "set").root
    expected = damage(case, root, tmp_path / "outside")
    before = tree_digest(root)
    code, out, err = run_cli("data", "verify", root)
    assert code == 1 and expected in out, (out, err)
    out_path = tmp_path / "out"
    # `data info` reads the manifest and metadata only: it must refuse their damage, not the pixels'.
    commands = [
        *([] if case in FILE_CASES else [["data", "info", root]]),
        *([["lineage", root]] if case in MANIFEST_CASES else []),  # lineage reads manifests alone
        ["metrics", small_digits.root, root, "--features", f"domain:{small_classifier}", "--out", tmp_path / "m.csv",
         "--cache-dir", tmp_path / "cache"],
        ["train", root, out_path, "--preset", "smoke", "--steps", "2", "--no-progress"],
        ["classify", "train", root, out_path, "--epochs", "1"],
        ["curate", root, out_path, "--dedup", "0.98"],
        ["data", "export", root, out_path, "--format", "webdataset"],
        ["data", "export", root, out_path, "--format", "parquet"],
    ]
    for args in commands:
        code, _, err = run_cli(*args)
        assert code == 2, (args, err)
        assert_one_error_line(code, err, expected.split(": ", 1)[-1] if expected.startswith("metadata") else expected)
        assert nothing_written(out_path), args
        assert tree_digest(root) == before, args
    assert not (tmp_path / "m.csv").exists()


def test_a_fifo_listed_as_an_image_does_not_hang_any_reader(tmp_path):
    root = tiny_set(tmp_path / "set").root
    first = root / rows_of(root)[0]["file_name"]
    first.unlink()
    os.mkfifo(first)
    for args in (["data", "export", root, tmp_path / "out", "--format", "webdataset"], ["data", "verify", root]):
        done = subprocess.run([*IMGSYNTH, *map(str, args)], env=ENV, capture_output=True, text=True, timeout=120)
        assert done.returncode != 0 and "Traceback" not in done.stderr
        assert f"{first}: not a regular file" in done.stdout + done.stderr
    assert not (tmp_path / "out").exists()


def test_verify_reports_an_unlisted_symlinked_folder_inside_images(run_cli, tmp_path):
    root = tiny_set(tmp_path / "set").root
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "x.png").write_bytes(encode_png(Image.new("L", (16, 16))))
    (root / "images" / "cat" / "more").symlink_to(elsewhere)
    code, out, _ = run_cli("data", "verify", root)
    assert code == 1 and f"{root / 'images' / 'cat' / 'more'}: a symbolic link to a folder" in out


def test_a_full_disk_is_one_line_and_the_partial_stays_resumable(run_cli, smoke_model, tmp_path, monkeypatch):
    import errno

    from imgsynth.imageset import sets as imageset  # the module whose writer commits shards

    out = tmp_path / "samples"
    calls = {"n": 0}
    real_write = imageset.write_text_atomic

    def fill_up(path: Path, text: str) -> None:
        calls["n"] += 1
        if path.name.startswith("shard-") and calls["n"] > 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_write(path, text)

    monkeypatch.setattr(imageset, "write_text_atomic", fill_up)
    code, _, err = run_cli("generate", smoke_model, out, "--per-class", "20", "--no-progress")
    assert_one_error_line(code, err, "no space left on the device", "shard-", status=1)  # not the input's fault
    done = len(list((tmp_path / ".samples.partial" / "shards").glob("shard-*.jsonl")))
    assert done >= 1
    monkeypatch.setattr(imageset, "write_text_atomic", real_write)
    code, _, err = run_cli("generate", smoke_model, out, "--per-class", "20", "--no-progress")
    assert code == 0, err
    fresh = tmp_path / "fresh"
    code, _, err = run_cli("generate", smoke_model, fresh, "--per-class", "20", "--no-progress")
    assert ImageSet.open(out).id == ImageSet.open(fresh).id
