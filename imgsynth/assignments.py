"""The one reader of ``key=value`` text from a command line (``--option``, ``--set``): values are TOML, and a
bare word that is not TOML is taken as a string, so ``sampler=ddim`` needs no quotes."""

from __future__ import annotations

from typing import Iterable

from imgsynth.structured_files import NOT_TOML, parse_toml_value


def parse_assignment(text: str) -> tuple[str, object]:
    """(key, value) of one ``key=value``; ``ValueError`` naming the text when there is no ``=`` or no key, or
    when the value is too long or too deeply nested (``structured_files.parse_toml_value``'s limits)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"{_short(text)}: expected key=value")
    value = parse_toml_value(raw, f"{_short(key.strip())}=…")
    # bare strings need no quotes on the command line
    return key.strip(), raw if value is NOT_TOML else value


def _short(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")


def parse_assignments(pairs: Iterable[str]) -> dict[str, object]:
    """Several ``key=value`` texts as one mapping (a later key wins)."""
    return dict(parse_assignment(pair) for pair in pairs)
