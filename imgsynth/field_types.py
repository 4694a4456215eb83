"""The one check of a value against a dataclass field's annotation, as written (``"int | None"``,
``"list[str]"``, ``"tuple[int, ...]"``): for values read from TOML or JSON, which carry no types of ours.

Used by the recipe reader and the conditional kind's training config. ``bool`` is an ``int`` subclass in
Python, but a flag where a number belongs is a mistake, not a 0 or 1, so it never passes for a number.
"""

from __future__ import annotations

from typing import Mapping

_SCALARS: dict[str, tuple[type, ...]] = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}
_ELEMENT_NAMES = {"int": "integers", "str": "strings", "float": "numbers"}


def is_int(value: object) -> bool:
    """A whole number that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def type_problem(annotation: str, value: object) -> str | None:
    """Why ``value`` does not fit a field annotated ``annotation``, or None when it does (or when the
    annotation is one this check does not know: the field's own validation covers it)."""
    alternatives = [part.strip() for part in annotation.split("|")]
    if value is None:
        return None if "None" in alternatives else f"should be {annotation}, not null"
    known = False
    list_problem = None
    for alternative in alternatives:
        if alternative.startswith("dict") or alternative.startswith("Mapping"):
            known = True
            if isinstance(value, Mapping):
                return None
        elif alternative.startswith(("list[", "tuple[")):
            known = True
            element = alternative[alternative.index("[") + 1:].rstrip("]").split(",")[0].strip()
            if isinstance(value, (list, tuple)):
                if all(_fits(element, v) for v in value):
                    return None
                list_problem = f"should be a list of {_ELEMENT_NAMES.get(element, element)}"
        elif alternative in _SCALARS:
            known = True
            if _fits(alternative, value):
                return None
    if not known:
        return None
    return list_problem or f"should be {annotation}"


def _fits(scalar: str, value: object) -> bool:
    kinds = _SCALARS.get(scalar)
    if kinds is None:
        return True
    return isinstance(value, kinds) and (scalar == "bool" or not isinstance(value, bool))


def json_kind(value: object) -> str:
    """How a JSON value's type reads in a message ("an integer", "a list", "null")."""
    kinds = ((bool, "true/false"), (int, "an integer"), (float, "a number"), (str, "a string"),
             (list, "a list"), (dict, "an object"), (type(None), "null"))
    return next((name for kind, name in kinds if isinstance(value, kind)), type(value).__name__)
