"""The one reader of ``key=value`` text from a command line (``--option``, ``--set``): values are TOML, and a
bare word that is not TOML is taken as a string, so ``sampler=ddim`` needs no quotes."""

from __future__ import annotations

import sys
from typing import Iterable

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def parse_assignment(text: str) -> tuple[str, object]:
    """(key, value) of one ``key=value``; ``ValueError`` naming the text when there is no ``=`` or no key."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"{text!r}: expected key=value")
    try:
        value: object = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # bare strings need no quotes on the command line
    return key.strip(), value


def parse_assignments(pairs: Iterable[str]) -> dict[str, object]:
    """Several ``key=value`` texts as one mapping (a later key wins)."""
    return dict(parse_assignment(pair) for pair in pairs)
