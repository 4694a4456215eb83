"""What several commands' flags share: a flag under its former name, and ``key=value`` option pairs."""

from __future__ import annotations

import warnings
from typing import TypeVar

from imgsynth.assignments import parse_assignments
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
