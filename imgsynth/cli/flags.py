"""What several commands' flags share: a flag under its former name, ``key=value`` option pairs, and the
``--resize-mode`` option of the commands that extract features."""

from __future__ import annotations

import warnings
from typing import Any, Optional, TypeVar

import typer

from imgsynth.assignments import parse_assignments
from imgsynth.metrics.extractors.registry import DEFAULT_RESIZE_MODE, RESIZE_MODES
from imgsynth.notes import Note

T = TypeVar("T")


def renamed_flag(old: str, old_value: T | None, new: str, new_value: T | None) -> T | None:
    """The value of a flag given under its former name ``old`` (with a note) or its name ``new``; both is an
    error naming them."""
    if old_value is None:
        return new_value
    if new_value is not None:
        raise ValueError(f"{old} is the former name of {new}; give one of them")
    warnings.warn(f"{old} is now called {new}; {old} still works", Note, stacklevel=2)
    return old_value


def option_pairs(pairs: list[str], flag: str = "--option") -> dict[str, object]:
    """``key=value`` pairs (values read as TOML, bare words as strings) for a kind's options; a malformed pair
    (no ``=``, a value too long or too deeply nested) is one ``error:`` line naming ``flag`` (a ``ValueError``:
    the pairs are read in the command's body, where a usage error would print a usage box instead)."""
    try:
        return parse_assignments(pairs)
    except ValueError as exc:
        raise ValueError(f"{flag} {exc}") from None


def _known_resize_mode(value: Optional[str]) -> Optional[str]:
    # A ValueError, not typer.BadParameter: one ``error:`` line instead of a usage box, before anything loads.
    if value is not None and value not in RESIZE_MODES:
        raise ValueError(f"--resize-mode {value!r} is not a resize mode; choose one of {', '.join(RESIZE_MODES)}")
    return value


def resize_mode_option() -> Any:
    """``--resize-mode clean|pytorch-fid|torch-fidelity`` (None when not given: the extractor's default), for
    every command that extracts features: ``resize_mode: Optional[str] = resize_mode_option()``, then pass
    it to ``create_extractor(..., resize_mode=resize_mode)``."""
    return typer.Option(
        None, "--resize-mode", callback=_known_resize_mode, metavar="|".join(RESIZE_MODES),
        help=f"How inception resizes images to 299 px, as the tool whose FID numbers you want to reproduce "
             f"does: clean (clean-fid's PIL bicubic; the default), pytorch-fid (its bilinear tensor resize) or "
             f"torch-fidelity (its TensorFlow-1 bilinear resize). For inception; default "
             f"{DEFAULT_RESIZE_MODE}.")
