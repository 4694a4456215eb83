"""What kind of thing a folder is, and the one check every writing command makes of its output first.

``claim_output(out, kind, inputs)`` runs before any work. It resolves real paths and refuses, in one line
naming both, an output that

- is, contains or lies inside one of the command's inputs (a set, a model, a classifier, a cache …);
- lies inside an ImageSet, a model folder, a classifier or a run folder (those are only ever written by
  the command that makes them, into themselves: a run's generations are the loop's own, written through
  the library, never claimed here);
- is an existing folder of another kind (a set where a model is asked for, a model where a run is …).

Writing into an existing folder of the same kind is allowed: resuming or finishing it is the writer's
business, and its own check ("finished with the same settings": ``pipelines/sharding.finished_set``, a
kind's ``fit``, the loop's recipe check) decides whether it is the same thing.

Report files never replace a file imgsynth did not write: a single ``--out`` file is replaced only when
its first line is the header the same command writes (a binary file, which has none, when the command
recognises it as its own: ``imgsynth stats`` reads the npz's imgsynth header); a report folder (``dashboard --out DIR``,
``classify eval --out DIR``) holds a small :data:`REPORT_MARKER` listing the files imgsynth wrote there,
and only those may be replaced.

A command that fails leaves nothing behind unless it is resumable work: the CLI calls
:func:`discard_abandoned` on an error, which removes what a claimed output gained in this process and
cannot be resumed (a set's partial folder without a committed shard, a folder it created that holds
nothing but empty folders and the report marker).

This module sits low (it may use ``imageset.layout`` and ``atomic_files``); the marker file names of the
other kinds are spelled here and kept in step with their modules by ``tests/test_corpus_outputs.py``.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from imgsynth.atomic_files import partial_folder, write_json_atomic
from imgsynth.imageset.layout import JOB, MANIFEST
from imgsynth.locking import FolderBusyError, folder_lock

# What a folder is, in the words the error lines use.
IMAGESET = "ImageSet"
CONDITIONAL_MODEL = "class-conditional model folder"
PER_CLASS_MODEL = "model folder"
PIPELINE = "diffusers pipeline folder"
LORA = "LoRA folder"
CLASSIFIER = "classifier checkpoint"
RUN = "run folder"
IMPORTED = "imported data folder (train/ and test/ sets)"
REPORTS = "report folder"
FEATURE_CACHE = "feature cache folder"
EXPORT = "export folder"
FILE = "file"

# The file that marks each kind, first match first (a class-conditional model folder is also a diffusers
# pipeline folder). Spelled as the owning modules spell them (imageset/layout.py MANIFEST,
# pipelines/conditional/folder.py MODEL_FILE, pipelines/base.py MODEL_INFO, pipelines/finetune.py INFO_FILE,
# classifier/checkpoint.py METADATA, experiments/run.py CONFIG_FILE); a test keeps them equal.
REPORT_MARKER = "imgsynth_reports.json"
MARKERS: tuple[tuple[str, str], ...] = (
    (MANIFEST, IMAGESET),
    ("imgsynth_model.json", CONDITIONAL_MODEL),
    ("imgsynth_model_info.json", PER_CLASS_MODEL),
    ("imgsynth_lora.json", LORA),
    ("classifier.json", CLASSIFIER),
    ("model_index.json", PIPELINE),
    ("config.toml", RUN),
    (REPORT_MARKER, REPORTS),
)
MODEL_KINDS = frozenset({CONDITIONAL_MODEL, PER_CLASS_MODEL})
# Folders nothing else may be written inside: each is written whole by the command that makes it.
CONTAINERS = frozenset({IMAGESET, CONDITIONAL_MODEL, PER_CLASS_MODEL, PIPELINE, LORA, CLASSIFIER, RUN})


class OutputError(ValueError):
    """An output that would destroy or change an input or a folder of another kind (a user error)."""


def folder_kind(path: str | os.PathLike[str], *, unfinished: bool = True) -> str | None:
    """What ``path`` is (one of this module's kind names), ``FILE`` for a file, None for an unknown folder or
    nothing. With ``unfinished``, an ImageSet still being written (its hidden partial folder holds the job)
    counts as an ImageSet."""
    path = Path(path)
    if path.is_file():
        return FILE
    if unfinished and (partial_folder(path) / JOB).is_file():
        return IMAGESET
    if not path.is_dir():
        return None
    for marker, kind in MARKERS:
        if (path / marker).is_file():
            return kind
    if (path / "train" / MANIFEST).is_file() and (path / "test" / MANIFEST).is_file():
        return IMPORTED
    return None


def _real(path: str | os.PathLike[str]) -> Path:
    return Path(path).expanduser().resolve()


def _inside(path: Path, folder: Path) -> bool:
    return path != folder and folder in path.parents


def _a(kind: str) -> str:
    return f"an {kind}" if kind[0] in "AEIOUaeiou" else f"a {kind}"


@dataclass
class _Claim:
    """What an output looked like when it was claimed, to tell afterwards what this process added."""

    path: Path  # as the writers name it (absolute, links not resolved): their partial and lock sit beside it
    existed: bool
    partial_existed: bool


_CLAIMS: list[_Claim] = []


def claim_output(out: str | os.PathLike[str], kind: str, inputs: Iterable[str | os.PathLike[str] | None] = (),
                 *, accepts: Iterable[str] = (), header: str | None = None,
                 recognise: Callable[[Path], bool] | None = None) -> Path:
    """Check, before any work, that ``out`` may receive ``kind`` (see the module docstring); returns its real
    path. ``inputs``: everything the command reads (None and names that are no path, e.g. a Hub id, are
    skipped). ``accepts``: other existing kinds ``out`` may already be (a model folder of another generator
    kind is still a model folder). ``header``: for a ``FILE`` output, the first line the command writes; an
    existing file is replaced only when it starts with it. ``recognise``: for a binary ``FILE`` output, which
    has no first line, whether an existing file is one the command wrote (and so may be replaced). Raises
    :class:`OutputError` naming both paths."""
    real = _real(out)
    for given in inputs:
        if given is None or not Path(given).expanduser().exists():
            continue
        source = _real(given)
        if real == source:
            raise OutputError(f"{out}: the output is the input {given}; choose another output")
        if _inside(real, source):
            raise OutputError(f"{out}: the output lies inside the input {given}; choose an output outside it")
        if _inside(source, real):
            raise OutputError(f"{out}: the output contains the input {given}; choose an output that does not")
    for folder in real.parents:
        around = folder_kind(folder, unfinished=False)
        if around in CONTAINERS:
            raise OutputError(f"{out}: the output lies inside {_a(around)}, {folder}; only the command that "
                              "makes it writes there: choose an output outside it")
    existing = folder_kind(real)
    allowed = {kind, *accepts}
    if existing == FILE and kind != FILE:
        raise OutputError(f"{out}: is a file, not {_a(kind)}; choose a folder")
    if existing is not None and existing != FILE and existing not in allowed:
        raise OutputError(f"{out}: is {_a(existing)}, not {_a(kind)}; choose another folder")
    if kind == FILE:
        _check_report_file(out, real, header, recognise)
    given = Path(out).expanduser().absolute()
    _CLAIMS.append(_Claim(given, given.exists(), partial_folder(given).exists()))
    return real


def _check_report_file(out: str | os.PathLike[str], real: Path, header: str | None,
                       recognise: Callable[[Path], bool] | None) -> None:
    if real.is_dir():
        raise OutputError(f"{out}: is a folder; give a file name for the output")
    if not real.exists():
        return
    if not (recognise(real) if recognise is not None else _starts_with(real, header)):
        raise OutputError(f"{out}: already exists and was not written by this command; remove it or choose "
                          "another file")


def _starts_with(path: Path, header: str | None) -> bool:
    """Whether the text file ``path`` begins with the line ``header`` (never, without a header)."""
    if header is None:
        return False
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            first = handle.readline(len(header) + 2).rstrip("\r\n")
    except (OSError, UnicodeDecodeError):
        return False
    return first == header


def claim_report_folder(out: str | os.PathLike[str], names: Sequence[str],
                        inputs: Iterable[str | os.PathLike[str] | None] = ()) -> Path:
    """Claim ``out`` for report files ``names`` and record them in its :data:`REPORT_MARKER` (before writing,
    so a second attempt may replace what a failed one left): a file among ``names`` already there is
    replaced only when an earlier report listed it. Returns the folder's real path."""
    real = claim_output(out, REPORTS, inputs)
    marker = real / REPORT_MARKER
    listed: list[str] = []
    if marker.is_file():
        try:
            recorded = json.loads(marker.read_text(encoding="utf-8"))
            listed = [n for n in recorded.get("files", []) if isinstance(n, str)]
        except (OSError, ValueError, AttributeError):
            raise OutputError(f"{marker}: not a report marker imgsynth wrote; remove it or choose another "
                              "folder") from None
    foreign = [n for n in names if n not in listed and ((real / n).exists() or (real / n).is_symlink())]
    if foreign:
        raise OutputError(f"{Path(out) / foreign[0]}: already exists and was not written by imgsynth; remove "
                          "it or choose another folder")
    real.mkdir(parents=True, exist_ok=True)
    write_json_atomic(marker, {"written_by": "imgsynth", "files": sorted({*listed, *names})}, indent=2)
    return real


def _resumable(partial: Path) -> bool:
    """Whether a partial folder holds work a rerun continues from: a committed shard or a checkpoint."""
    return any(partial.glob("shards/shard-*.jsonl")) or any(p.name.startswith("checkpoint")
                                                            for p in partial.rglob("*") if p.is_file())


def _holds_nothing(folder: Path) -> bool:
    return all(p.is_dir() or p.name == REPORT_MARKER for p in folder.rglob("*"))


def discard_abandoned() -> list[Path]:
    """After a command failed: remove what its claimed outputs gained in this process that no rerun resumes
    from (a partial folder without committed work, a folder it created holding nothing); returns them."""
    removed: list[Path] = []
    while _CLAIMS:
        claim = _CLAIMS.pop()
        partial = partial_folder(claim.path)
        doomed = []
        if not claim.partial_existed and partial.is_dir() and not partial.is_symlink() and not _resumable(partial):
            doomed.append(partial)
        if not claim.existed and claim.path.is_dir() and not claim.path.is_symlink() and _holds_nothing(claim.path):
            doomed.append(claim.path)
        if not doomed:
            continue
        try:
            # Another process may have started writing the same output meanwhile: its work is not ours.
            with folder_lock(claim.path):
                for path in doomed:
                    shutil.rmtree(path, ignore_errors=True)
                    removed.append(path)
        except FolderBusyError:
            continue
    return removed


def forget_claims() -> None:
    """Start a command with no claims recorded (the CLI calls this first: tests run many in one process)."""
    _CLAIMS.clear()
