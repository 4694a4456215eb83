"""Verify a set on disk completely, reporting every problem rather than stopping at the first."""

from __future__ import annotations

import json
import os
import re
import stat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from imgsynth.dataset_card import CARD, card_classes
from imgsynth.errors import ImageSetError
from imgsynth.image_files import ImageFileError, check_sha256, decode_image, read_regular_file
from imgsynth.imageset.layout import IMAGES, MANIFEST, METADATA, ROOT_FILES, partial_dir
from imgsynth.imageset.metadata import metadata_lines, parse_metadata_line, read_set_file
from imgsynth.provenance import content_id, sha256_bytes
from imgsynth.set_schema import manifest_problems, parse_json


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a set on disk: the file (or ``metadata.jsonl:LINE``) and what is wrong."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass
class VerifyReport:
    """Everything :func:`verify` found; ``ok`` when nothing."""

    root: Path
    problems: list[Problem] = field(default_factory=list)
    images_checked: int = 0
    set_id: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, where: str | os.PathLike, message: str) -> None:
        self.problems.append(Problem(str(where), message))

    def summary(self) -> str:
        if self.ok:
            return f"{self.root}: ok ({self.images_checked} images, id {self.set_id})"
        return f"{self.root}: {len(self.problems)} problem(s) found"

    def raise_for_problems(self) -> None:
        """Raise one ImageSetError listing every problem (for callers that need a valid set)."""
        if self.problems:
            raise ImageSetError("\n".join([self.summary(), *map(str, self.problems)]))


def verify(path: str | os.PathLike) -> VerifyReport:
    """Check a set on disk completely and report every problem rather than stopping at the first.

    Checks the manifest (present, valid JSON, fields, classes), every metadata line (JSON, fields,
    known label, ``file_name`` inside ``images/<label>/``, no repeats), every listed image (present,
    sha256 as recorded, a PNG that decodes to the end, size as in the manifest), files on disk that
    metadata does not list, and the manifest's id and counts against the metadata.
    """
    root = Path(path).absolute()
    report = VerifyReport(root)
    if not root.exists():
        partial = partial_dir(root)
        hint = f" (an unfinished write is in {partial})" if partial.exists() else ""
        report.add(root, f"no such ImageSet folder{hint}")
        return report
    if not root.is_dir():
        report.add(root, "not a folder")
        return report
    if not any(root.iterdir()):
        report.add(root, f"empty folder: no {MANIFEST}, {METADATA} or {IMAGES}/; not an ImageSet")
        return report
    manifest = _verify_manifest(root, report)
    classes = set(manifest["classes"]) if manifest and isinstance(manifest.get("classes"), list) else None
    problems_before = len(report.problems)
    claimed: set[str] = set()
    rows = _verify_metadata_lines(root, classes, report, claimed)
    metadata_whole = len(report.problems) == problems_before
    real_root, folders = os.path.realpath(root), set()
    for where, row in rows:
        _verify_image(root, where, row, manifest, report, real_root, folders)
    _verify_no_strays(root, claimed, report)
    if manifest is not None and isinstance(manifest.get("classes"), list):
        _verify_card(root, manifest["classes"], report)
    # With broken metadata lines the id and counts cannot agree; saying so again would only be noise.
    if manifest is not None and metadata_whole:
        _verify_manifest_agrees(root, manifest, [row for _, row in rows], report)
    report.images_checked = len(rows)
    report.set_id = manifest.get("id") if manifest else None
    return report


def _verify_manifest(root: Path, report: VerifyReport) -> dict[str, Any] | None:
    """The manifest if it parses (its broken fields set to None so later checks skip them), else None."""
    path = root / MANIFEST
    if not path.is_file() and not path.is_symlink():
        report.add(path, "missing; this folder is not a finished ImageSet")
        return None
    try:
        manifest = parse_json(read_set_file(root, MANIFEST), str(path))
    except ImageSetError as exc:
        report.add(path, str(exc).removeprefix(f"{path}: "))
        return None
    problems = manifest_problems(manifest)
    for problem in problems:
        report.add(path, problem)
    if not isinstance(manifest, dict):
        return None
    for key in ("classes", "counts", "image_size", "image_mode"):
        if any(problem.startswith(f"'{key}'") for problem in problems):
            manifest[key] = None
    return manifest


# A JSON string literal after "file_name" (escapes included), for lines too broken to parse as a whole.
_FILE_NAME_IN_TEXT = re.compile(rb'"file_name"\s*:\s*("(?:[^"\\]|\\.)*")')


def _claimed_file_name(line: bytes) -> str | None:
    """The ``file_name`` a metadata line names, as its parsed value (never the raw JSON text: ``café`` is
    ``caf\\u00e9`` there), also for a line that does not parse as a whole; None if it names none."""
    try:
        row = json.loads(line)
    except (ValueError, RecursionError):
        row = None
    if isinstance(row, dict):
        name = row.get("file_name")
        return name if isinstance(name, str) else None
    named = _FILE_NAME_IN_TEXT.search(line)
    if not named:
        return None
    try:
        name = json.loads(named.group(1))
    except ValueError:  # e.g. a broken escape or bytes that are not UTF-8
        return None
    return name if isinstance(name, str) else None


def _verify_metadata_lines(root: Path, classes: set[str] | None, report: VerifyReport,
                           claimed: set[str]) -> list[tuple[str, dict[str, Any]]]:
    """Every structurally sound metadata row with its ``file:line``; problems for the others.

    ``claimed`` receives every file name a line mentions, sound or not, so that the files of broken
    lines are not reported a second time as strays.
    """
    path = root / METADATA
    if not path.is_file() and not path.is_symlink():
        report.add(path, "missing")
        return []
    try:
        lines = metadata_lines(root)
    except ImageSetError as exc:
        report.add(path, str(exc).removeprefix(f"{path}: "))
        return []
    rows: list[tuple[str, dict[str, Any]]] = []
    seen: dict[str, str] = {}
    real_root, folders = os.path.realpath(root), set()
    for where, line in lines:
        named = _claimed_file_name(line)
        if named is not None:
            claimed.add(named)
        try:
            row = parse_metadata_line(root, where, line, classes, real_root, folders)
        except ImageSetError as exc:
            report.add(where, str(exc).removeprefix(f"{where}: "))
            continue
        if row["file_name"] in seen:
            report.add(where, f"file_name {row['file_name']!r} already listed at {seen[row['file_name']]}")
            continue
        seen[row["file_name"]] = where
        rows.append((where, row))
    if not lines:
        report.add(path, "no images listed; an ImageSet cannot be empty")
    return rows


def _verify_image(root: Path, where: str, row: Mapping[str, Any], manifest: Mapping[str, Any] | None,
                  report: VerifyReport, real_root: str, known_real_folders: set[str]) -> None:
    """Check one listed image as every reader would read it, then its hash, reporting each problem."""
    path = root / row["file_name"]
    try:
        data = read_regular_file(root, row["file_name"], real_root, known_real_folders)
    except ImageFileError as exc:
        report.add(path, f"{str(exc).split(': ', 1)[1]} (listed at {where})")
        return
    try:
        check_sha256(data, row["sha256"], root, row["file_name"])
    except ImageFileError:
        report.add(path, f"sha256 mismatch: {where} records {str(row['sha256'])[:16]}…, the file hashes to "
                         f"{sha256_bytes(data)[:16]}…")
    manifest = manifest or {}
    try:
        decode_image(data, path, mode=manifest.get("image_mode"), size_hw=manifest.get("image_size"),
                     check_crc=True)
    except ImageSetError as exc:
        report.add(path, str(exc).removeprefix(f"{path}: "))


def _verify_no_strays(root: Path, listed: set[str], report: VerifyReport) -> None:
    """Files metadata does not list would be read by ImageFolder/imagefolder but not by ImageSet; links
    would let either read files outside the set."""
    for entry in sorted(root.iterdir()):
        if entry.is_symlink():
            report.add(entry, f"a symbolic link (to {os.readlink(entry)}); an ImageSet holds regular files only")
        elif entry.name == IMAGES and entry.is_dir():
            continue
        elif entry.name not in ROOT_FILES:
            report.add(entry, f"stray {'folder' if entry.is_dir() else 'file'}: not part of an ImageSet")
        elif entry.name not in (MANIFEST, METADATA):  # those two are read, and so checked, above
            _verify_regular_file(entry, report)
    images = root / IMAGES
    if images.is_symlink() or not images.is_dir():
        if listed and not images.is_symlink():
            report.add(images, "missing")
        return
    for folder, dirs, files in os.walk(images):
        dirs.sort()
        for name in list(dirs):
            if (Path(folder) / name).is_symlink():
                report.add(Path(folder) / name, "a symbolic link to a folder; ImageFolder would read files "
                                                "outside the set")
                dirs.remove(name)
        if not dirs and not files:
            report.add(folder, "empty folder (torchvision ImageFolder fails on empty class folders)")
        for name in sorted(files):
            relative = (Path(folder) / name).relative_to(root).as_posix()
            if (Path(folder) / name).is_symlink() and relative not in listed:
                report.add(Path(folder) / name, "a symbolic link; an ImageSet holds regular files only")
            elif relative not in listed:
                report.add(Path(folder) / name, f"stray file: on disk but not listed in {METADATA}")


def _verify_regular_file(path: Path, report: VerifyReport) -> None:
    """A file a set holds must be a regular file, as its images must (a FIFO would hang whoever reads it)."""
    mode = path.lstat().st_mode
    if not stat.S_ISREG(mode):
        what = "a folder" if stat.S_ISDIR(mode) else "not a regular file (a FIFO, socket or device)"
        report.add(path, f"{what}; an ImageSet holds regular files only")


def _verify_card(root: Path, classes: Sequence[str], report: VerifyReport) -> None:
    """The dataset card imgsynth wrote must name the manifest's classes in its order, or ``datasets``
    would give images other label indices than every other reader (a user's own card is not checked)."""
    path = root / CARD
    if not path.is_file() or path.is_symlink():
        return  # sets written before cards existed have none; a link is reported as one above
    try:
        declared = card_classes(read_set_file(root, CARD).decode("utf-8", "replace"))
    except ImageSetError as exc:
        report.add(path, str(exc).removeprefix(f"{path}: "))
        return
    except ValueError as exc:
        report.add(path, str(exc))
        return
    if declared is not None and declared != list(classes):
        report.add(path, f"declares label classes {declared}, but {MANIFEST} has {list(classes)}; "
                         "datasets would give images other label indices")


def _verify_manifest_agrees(root: Path, manifest: Mapping[str, Any], rows: Sequence[Mapping[str, Any]],
                            report: VerifyReport) -> None:
    path = root / MANIFEST
    if not rows:
        return
    actual_id = content_id((str(r["sha256"]), r["label"]) for r in rows)
    if "id" in manifest and manifest["id"] != actual_id:
        report.add(path, f"id {str(manifest['id'])[:16]}… does not match the content listed in {METADATA} "
                         f"(which hashes to {actual_id[:16]}…)")
    counts = Counter(r["label"] for r in rows)
    if isinstance(manifest.get("counts"), dict):
        try:
            expected = {c: int(n) for c, n in manifest["counts"].items() if int(n)}
        except (TypeError, ValueError):
            report.add(path, f"'counts' must map class names to integers, got {manifest['counts']}")
        else:
            if dict(counts) != expected:
                report.add(path, f"counts {expected} disagree with {METADATA}, which lists {dict(sorted(counts.items()))}")
    if "num_images" in manifest and manifest["num_images"] != len(rows):
        report.add(path, f"num_images {manifest['num_images']} but {METADATA} lists {len(rows)} valid rows")
