"""The schema of an ImageSet's ``imageset.json`` and ``metadata.jsonl``: types, ranges and depth, with locations.

``ImageSet.open`` (stops at the first problem) and ``verify`` (reports them all) share these checks, so
a malformed value is one line naming the file, the field and, for metadata, the line, whichever reads
it first. Nothing here touches pixels.
"""

from __future__ import annotations

import math
import posixpath
import re
from typing import Any, Mapping, Sequence

from imgsynth import structured_files
from imgsynth.errors import ImageSetError

KINDS = ("real", "generated", "curated", "mixed")
SORTED, AS_WRITTEN = "sorted", "as written"  # the two class orders a manifest can have (class_order)
MAX_DEPTH = structured_files.MAX_DEPTH  # deeper JSON is no manifest imgsynth wrote
MAX_INT = (1 << 63) - 1
MAX_SIDE = 1 << 16
_SHA256 = re.compile(r"[0-9a-f]{64}")


def parse_json(data: bytes, where: str) -> Any:
    """Parse JSON bytes, raising one located ``ImageSetError`` for bad UTF-8, bad JSON, huge numbers or deep
    nesting (``structured_files.parse_json``, the one JSON reader, with the set's error type)."""
    return structured_files.parse_json(data, where, ImageSetError)


def _is_int(value: Any, low: int = 0, high: int = MAX_INT) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _has_nul(value: Any) -> bool:
    return isinstance(value, str) and "\x00" in value


def label_problem(label: Any) -> str | None:
    """Why ``label`` cannot name a class folder inside a set, or None."""
    if not isinstance(label, str) or not label.strip():
        return f"label must be a non-empty string, got {label!r}"
    if label in (".", "..") or any(c in label for c in "/\\\x00") or label != label.strip():
        return (f"label {label!r} cannot be a folder name inside the set "
                "(no '/', '\\', '..', NUL or surrounding spaces)")
    return None


def label_order(classes: Sequence[str]) -> list[str]:
    """The order a set's label indices follow: class names sorted by code point, as Python's ``sorted``
    orders the class folders in torchvision's ``ImageFolder`` (``find_classes``), so that every reader
    of ``images/<label>/`` numbers the classes the same way."""
    return sorted(classes)


def class_order(classes: Sequence[str]) -> str:
    """``"sorted"`` when a manifest's classes follow :func:`label_order`, else ``"as written"`` (a set
    written before imgsynth sorted them: its indices stay the order its manifest lists)."""
    return SORTED if list(classes) == label_order(classes) else AS_WRITTEN


def manifest_problems(manifest: Any) -> list[str]:
    """Every schema problem of a parsed ``imageset.json``, each as ``field ...: problem``."""
    if not isinstance(manifest, dict):
        return [f"expected a JSON object, got {type(manifest).__name__}"]
    problems = [f"missing field {key!r}" for key in ("id", "classes", "counts", "kind") if key not in manifest]
    classes = manifest.get("classes")
    if "classes" in manifest:
        if not isinstance(classes, list) or not classes:
            problems.append("'classes' must be a non-empty list of class names")
            classes = None
        else:
            problems.extend(f"'classes': {p}" for p in map(label_problem, classes) if p)
            repeated = sorted({c for c in classes if isinstance(c, str) and classes.count(c) > 1})
            if repeated:
                problems.append(f"'classes': duplicate class name(s) {repeated}")
    display = manifest.get("display_order")
    if display is not None and isinstance(classes, list) and not (
            isinstance(display, list) and all(isinstance(c, str) for c in display)
            and sorted(display) == sorted(c for c in classes if isinstance(c, str))):
        problems.append(f"'display_order' must list the manifest's classes, each once, got {_short(display)}")
    if "id" in manifest and not (isinstance(manifest["id"], str) and _SHA256.fullmatch(manifest["id"])):
        problems.append(f"'id' must be a 64-digit lowercase hex string, got {_short(manifest['id'])}")
    if "kind" in manifest and manifest["kind"] not in KINDS:
        problems.append(f"'kind' must be one of {list(KINDS)}, got {_short(manifest['kind'])}")
    counts = manifest.get("counts")
    if "counts" in manifest:
        if not isinstance(counts, dict):
            problems.append(f"'counts' must be an object of class name -> count, got {type(counts).__name__}")
        else:
            bad = {k: v for k, v in counts.items() if not _is_int(v)}
            if bad:
                problems.append(f"'counts' must map class names to whole numbers ≥ 0, got {_short(bad)}")
            if isinstance(classes, list):
                unknown = sorted(set(counts) - {c for c in classes if isinstance(c, str)})
                if unknown:
                    problems.append(f"'counts' names class(es) {unknown} that are not in 'classes'")
    if "num_images" in manifest and not _is_int(manifest["num_images"]):
        problems.append(f"'num_images' must be a whole number ≥ 0, got {_short(manifest['num_images'])}")
    size = manifest.get("image_size")
    if size is not None and not (isinstance(size, list) and len(size) == 2
                                 and all(_is_int(s, 1, MAX_SIDE) for s in size)):
        problems.append(f"'image_size' must be [height, width] in pixels (1..{MAX_SIDE}) or null, got {_short(size)}")
    mode = manifest.get("image_mode")
    if mode is not None and not (isinstance(mode, str) and mode and not _has_nul(mode)):
        problems.append(f"'image_mode' must be a PIL mode name such as 'L' or 'RGB', got {_short(mode)}")
    parents = manifest.get("parents", [])
    if not isinstance(parents, list):
        problems.append(f"'parents' must be a list of {{id, path, kind}} objects, got {type(parents).__name__}")
    else:
        for i, parent in enumerate(parents):
            if not isinstance(parent, dict) or not isinstance(parent.get("id", ""), str) \
                    or not isinstance(parent.get("path", ""), str):
                problems.append(f"'parents'[{i}] must be an object with string 'id' and 'path', got {_short(parent)}")
    for key in ("generator", "config", "software", "annotations"):
        if manifest.get(key) is not None and not isinstance(manifest[key], dict):
            problems.append(f"{key!r} must be an object, got {type(manifest[key]).__name__}")
    license = manifest.get("license")
    if license is not None and not isinstance(license, (dict, str)):
        problems.append(f"'license' must be an object or a name, got {type(license).__name__}")
    return problems


def row_problems(row: Any, classes: set[str] | None) -> list[str]:
    """Every schema problem of one parsed ``metadata.jsonl`` row (paths are checked against the disk elsewhere)."""
    if not isinstance(row, dict):
        return [f"expected a JSON object, got {type(row).__name__}"]
    missing = [key for key in ("file_name", "label", "sha256") if key not in row]
    if missing:
        return [f"missing field(s) {missing}"]
    problems: list[str] = []
    label = row["label"]
    problem = label_problem(label)
    if problem:
        problems.append(problem)
    elif classes is not None and label not in classes:
        problems.append(f"label {label!r} is not one of the manifest's classes {sorted(classes)}")
    file_name = row["file_name"]
    if not isinstance(file_name, str) or not file_name or _has_nul(file_name):
        problems.append(f"file_name must be a non-empty string without NUL, got {_short(file_name)}")
    elif posixpath.normpath(file_name) != file_name:
        problems.append(f"file_name {file_name!r} is not in normal form (write it as "
                        f"{posixpath.normpath(file_name)!r}); the same file could be listed twice")
    elif not problem and len(file_name.split("/")) >= 2 and file_name.split("/")[1] != label:
        problems.append(f"file {file_name!r} is not in the folder of its label {label!r}")
    if not (isinstance(row["sha256"], str) and _SHA256.fullmatch(row["sha256"])):
        problems.append(f"sha256 must be 64 lowercase hex digits, got {_short(row['sha256'])}")
    seed = row.get("seed")
    if seed is not None and not _is_int(seed, -MAX_INT - 1):
        problems.append(f"seed must be a whole number within 64 bits or null, got {_short(seed)}")
    caption = row.get("caption")
    if caption is not None and (not isinstance(caption, str) or _has_nul(caption)):
        problems.append(f"caption must be a string without NUL or null, got {_short(caption)}")
    weight = row.get("weight")  # a training weight (imageset.records.WEIGHT_COLUMN)
    if weight is not None and not (isinstance(weight, (int, float)) and not isinstance(weight, bool)
                                   and math.isfinite(weight) and weight >= 0):
        problems.append(f"weight must be a finite number ≥ 0 or null, got {_short(weight)}")
    return problems


def _short(value: Any, limit: int = 60) -> str:
    """A value for a message: its repr, cut so a 5000-digit number or a huge object stays one short line."""
    text = repr(value) if not isinstance(value, int) or value.bit_length() < 200 else f"<{value.bit_length()}-bit integer>"
    return text if len(text) <= limit else text[:limit] + "…"


def check_manifest(manifest: Any, where: str) -> Mapping[str, Any]:
    """Return ``manifest`` if its schema is sound, else raise naming ``where`` and the first problem."""
    problems = manifest_problems(manifest)
    if problems:
        raise ImageSetError(f"{where}: {problems[0]}")
    return manifest
