"""The generator contract and the ``GENERATORS`` registry: a new generator is one file plus one line here.

A generator kind is a class with an ``Options`` dataclass (its recipe table ``[generator.options]``,
checked field by field: an unknown option is an error naming the option and the kind) and two methods,
``fit(train_set, out, seed, progress) -> model folder`` and ``sample(model_dir, out, per_class, seed,
generation, progress) -> ImageSet``; both resume or return at once when their output is already there.
The registry maps a kind to ``"module:Class"``, imported only when the kind is used, so listing kinds
costs no imports. The class-conditional diffusion and text-to-image generators keep their own entry
points for now (the loop calls them directly); every other kind goes through this registry.
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from typing import Any, ClassVar, Mapping, Protocol

from imgsynth.imageset import ImageSet

GENERATORS: dict[str, str] = {
    "gaussian": "imgsynth.pipelines.gaussian:GaussianGenerator",
}


class Generator(Protocol):
    """What the loop and the CLI need from a generator kind (see the module docstring)."""

    kind: ClassVar[str]
    Options: ClassVar[type]

    def fit(self, train_set: ImageSet, out: Path, seed: int, progress: bool = True) -> Path: ...

    def sample(self, model_dir: Path, out: Path, per_class: int, seed: int, generation: int | None = None,
               progress: bool = True) -> ImageSet: ...


def register_generator(kind: str, target: str | type) -> None:
    """Add a kind (``"module:Class"`` or a class, e.g. a throwaway generator in a test)."""
    GENERATORS[kind] = target if isinstance(target, str) else f"{target.__module__}:{target.__qualname__}"


def generator_class(kind: str) -> type:
    """The class registered for ``kind``; an unknown kind is a ``ValueError`` listing the known ones."""
    if kind not in GENERATORS:
        raise ValueError(f"unknown generator kind {kind!r}; registered: {sorted(GENERATORS)}")
    module, _, name = GENERATORS[kind].partition(":")
    found: Any = importlib.import_module(module)
    for part in name.split("."):
        found = getattr(found, part)
    return found


def options_from_dict(kind: str, values: Mapping[str, Any], where: str = "[generator.options]") -> Any:
    """The kind's options dataclass from a recipe table, refusing unknown names and wrong types in one line."""
    options_type = generator_class(kind).Options
    known = {f.name: f for f in dataclasses.fields(options_type)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown option(s) {unknown} for generator kind {kind!r}; known: {sorted(known)}")
    try:
        return options_type(**dict(values)).validate()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from None


def build_generator(kind: str, options: Mapping[str, Any] | None = None) -> Generator:
    """An instance of ``kind`` with validated options."""
    return generator_class(kind)(options_from_dict(kind, options or {}))
