"""The one registry idiom behind every seam: generator kinds, metrics, loop modes and export formats.

A :class:`Registry` maps a name to an entry. Built-in entries are registered as ``"module:attribute"``
strings, imported only when the entry is first used, so listing names (for ``--help``, recipe checks)
costs no imports of torch or diffusers. Anything else (a plugin, a throwaway entry in a test) registers
the object itself, or with the :meth:`Registry.register` decorator, the way timm's ``@register_model``
does::

    @METRICS.register("my_metric")
    class MyMetric: ...

Registering a name that is taken is refused, naming both entries, unless ``replace=True`` says so: a
plugin that silently shadowed ``fid`` would change every number a run reports. A test that registers a
throwaway entry uses :meth:`Registry.registered` so the entry is gone after it.
"""

from __future__ import annotations

import contextlib
import importlib
from typing import Callable, Generic, Iterator, TypeVar, overload

T = TypeVar("T")


class RegistryError(ValueError):
    """An unknown name, or a name registered twice."""


class Registry(Generic[T]):
    """Names → entries of one kind (``what`` names the kind in messages: "generator kind", "metric")."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._targets: dict[str, str | T] = {}
        self._loaded: dict[str, T] = {}

    # ------------------------------------------------------------------------------------------- writing
    @overload
    def register(self, name: str, target: str | T, *, replace: bool = False) -> None: ...

    @overload
    def register(self, name: str, target: None = None, *, replace: bool = False) -> Callable[[T], T]: ...

    def register(self, name: str, target: str | T | None = None, *,
                 replace: bool = False) -> Callable[[T], T] | None:
        """Register ``target`` (an object, or ``"module:attribute"`` imported on first use) as ``name``.

        Without ``target`` this is a decorator. A taken name is a :class:`RegistryError` naming both
        entries unless ``replace`` is true.
        """
        if target is None:
            def decorate(entry: T) -> T:
                self.register(name, entry, replace=replace)
                return entry

            return decorate
        if not name or not isinstance(name, str):
            raise RegistryError(f"a {self.what} needs a non-empty name, got {name!r}")
        if name in self._targets and not replace and self._targets[name] != target:
            raise RegistryError(f"{self.what} {name!r} is already registered as {_describe(self._targets[name])}; "
                                f"refusing to replace it with {_describe(target)} (pass replace=True to mean it)")
        self._targets[name] = target
        self._loaded.pop(name, None)
        return None

    def unregister(self, name: str) -> None:
        """Remove ``name`` (no error when it is not there)."""
        self._targets.pop(name, None)
        self._loaded.pop(name, None)

    @contextlib.contextmanager
    def registered(self, name: str, target: str | T) -> Iterator[T]:
        """Register ``target`` as ``name`` for the duration of a ``with`` block (tests' throwaway entries)."""
        self.register(name, target)
        try:
            yield self[name]
        finally:
            self.unregister(name)

    # ------------------------------------------------------------------------------------------- reading
    def __getitem__(self, name: str) -> T:
        """The entry registered as ``name`` (imported on first use); unknown names list the known ones."""
        if name in self._loaded:
            return self._loaded[name]
        if name not in self._targets:
            raise RegistryError(f"unknown {self.what} {name!r}; registered: {', '.join(self.names())}")
        target = self._targets[name]
        entry = _import(target) if isinstance(target, str) else target
        self._loaded[name] = entry
        return entry

    def __contains__(self, name: object) -> bool:
        return name in self._targets

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._targets))

    def __len__(self) -> int:
        return len(self._targets)

    def names(self) -> list[str]:
        """Registered names, in registration order (built-ins first, in the order their module lists them)."""
        return list(self._targets)

    def items(self) -> list[tuple[str, T]]:
        """(name, entry) pairs in registration order; imports every lazily registered entry."""
        return [(name, self[name]) for name in self._targets]

    def target(self, name: str) -> str:
        """Where ``name``'s entry lives, as ``"module:attribute"`` (without importing it)."""
        return _describe(self._targets[name])


def _describe(target: object) -> str:
    if isinstance(target, str):
        return target
    module = getattr(target, "__module__", type(target).__module__)
    name = getattr(target, "__qualname__", type(target).__qualname__)
    return f"{module}:{name}"


def _import(target: str) -> object:
    module, _, attribute = target.partition(":")
    found: object = importlib.import_module(module)
    for part in attribute.split("."):
        found = getattr(found, part)
    return found
