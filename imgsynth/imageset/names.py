"""Checks on the names a set is made of: labels (folder names), image ids (file names), metadata paths."""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path
from typing import Any, Sequence

from imgsynth.errors import ImageSetError
from imgsynth.imageset.layout import IMAGES
from imgsynth.set_schema import label_problem


def check_label(label: Any, where: str) -> str:
    """Return ``label`` if a new set may use it as a class name (a folder inside the set), else raise naming
    ``where``.

    Names are kept exactly as given and compared exactly, code point by code point: ``café`` is the
    folder's own name, in whatever Unicode normalisation form the source spelled it (NFC or NFD), so
    imgsynth, ImageFolder and ``datasets`` agree on every file. Besides the folder-name rules every
    reader applies (:func:`imgsynth.set_schema.label_problem`), a *new* name may hold no control
    character (newline, tab, …): it would split the one-line messages, CSV rows and card lines that
    show class names; nor bytes that are not UTF-8 (a folder name from another encoding), which no
    manifest or card can hold. Sets written before this rule still open.
    """
    problem = label_problem(label)
    if problem:
        raise ImageSetError(f"{where}: {problem}")
    for character in label:
        category = unicodedata.category(character)
        if category == "Cc":
            raise ImageSetError(f"{where}: class name {label!r} holds the control character "
                                f"U+{ord(character):04X}; class names are folder names and must be printable "
                                "(rename it)")
        if category == "Cs":  # how Python spells a file name's bytes that are not UTF-8
            raise ImageSetError(f"{where}: class name {label!r} is not valid UTF-8; manifests, metadata and cards "
                                "are UTF-8 (rename it)")
    return label


def check_labels(labels: Sequence[Any], where: str) -> list[str]:
    """Every name as :func:`check_label` checks it, none twice, and no two the same after Unicode NFC
    normalisation: those look identical, and a normalisation-insensitive file system (macOS) makes them
    one folder."""
    given = [check_label(label, where) for label in labels]
    if len(set(given)) != len(given):
        raise ImageSetError(f"{where}: duplicate class names in {given}")
    seen: dict[str, str] = {}
    for label in given:
        other = seen.setdefault(unicodedata.normalize("NFC", label), label)
        if other != label:
            raise ImageSetError(f"{where}: class names {ascii(other)} and {ascii(label)} differ only in Unicode "
                                "normalisation (NFC/NFD); they look the same and would share one folder on "
                                "some file systems — rename one")
    return given


def check_image_id(image_id: str, where: str) -> str:
    if not image_id or image_id in (".", "..") or any(c in image_id for c in "/\\\x00"):
        raise ImageSetError(f"{where}: image id {image_id!r} is not a plain file name")
    return image_id


def resolve_inside(root: Path, file_name: Any, where: str, real_root: str | None = None,
                   known_real_folders: set[str] | None = None) -> Path:
    """The path a metadata ``file_name`` names, refusing names that escape the set or pass a symbolic link.

    ``real_root`` is ``os.path.realpath(root)`` when the caller knows it (it is the same for every row);
    ``known_real_folders`` remembers folders already found free of links, so a set's few class folders
    are resolved once and each file costs one ``lstat``.
    """
    if not isinstance(file_name, str) or not file_name or "\x00" in file_name:
        raise ImageSetError(f"{where}: file_name must be a non-empty string without NUL, got {file_name!r}")
    if file_name.startswith(("/", "\\")) or os.path.isabs(file_name) or "\\" in file_name:
        raise ImageSetError(f"{where}: file_name {file_name!r} is absolute; it must be relative to the set")
    parts = Path(file_name).parts
    if ".." in parts or not parts or parts[0] != IMAGES:
        raise ImageSetError(f"{where}: file_name {file_name!r} escapes the set's {IMAGES}/ folder")
    real_root = real_root or os.path.realpath(root)
    lexical = os.path.normpath(os.path.join(real_root, file_name))
    folder = os.path.dirname(lexical)
    linked = False
    if known_real_folders is None or folder not in known_real_folders:
        linked = os.path.realpath(folder) != folder
        if not linked and known_real_folders is not None:
            known_real_folders.add(folder)
    if linked or os.path.islink(lexical):
        # A link could point anywhere, and torchvision's ImageFolder would follow it too.
        real = os.path.realpath(lexical)
        where_to = "that resolves outside the set" if not real.startswith(real_root + os.sep) else "inside the set"
        raise ImageSetError(f"{where}: file_name {file_name!r} is a symbolic link (or lies behind one) {where_to}; "
                            "an ImageSet holds regular files only")
    return root / file_name
