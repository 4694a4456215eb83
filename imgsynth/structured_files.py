"""The one reader of structured text a user can hand imgsynth: JSON, TOML and YAML files and values.

Manifests, model info and configs, run files, recipes, dataset cards and ``--set``/``--option`` values are
all read here, with limits: a file must be a regular file no larger than ``max_bytes`` (a FIFO or a device
is refused instead of blocking or reading forever), nesting deeper than :data:`MAX_DEPTH` is refused
(Python's parsers would recurse until ``RecursionError``), and YAML is loaded safely with alias expansion
bounded (an alias "bomb" of a few hundred bytes otherwise grows to gigabytes once walked or printed).
Every problem is one :class:`StructuredFileError` line naming the file (or value) and the problem.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from typing import Any

from imgsynth.field_types import json_kind

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# Deeper nesting is in no file imgsynth or diffusers writes; the limit keeps every later walk (copies,
# comparisons, printing) far from Python's recursion limit.
MAX_DEPTH = 32
# Structured files are configs and manifests, not data: 64 MiB is far past any real one.
MAX_FILE_BYTES = 64 << 20
# A command-line value (``--set``, ``--option``) is typed by hand.
MAX_VALUE_CHARS = 1 << 16
# A YAML document may refer to anchors at most this many times, and hold at most this many nodes: cards
# imgsynth or the Hub writes use few or no aliases, and an alias bomb needs many.
MAX_YAML_ALIASES = 100
MAX_YAML_NODES = 100_000


class StructuredFileError(ValueError):
    """A JSON, TOML or YAML file or value that cannot be read within the limits; the message names it."""


class LimitExceeded(StructuredFileError):
    """A file or value past a limit (size, nesting, YAML aliases), or not a regular file: refused even by
    readers that skip a merely malformed file (a license found in a card is optional; a bomb is not)."""


def read_bytes(path: str | os.PathLike, max_bytes: int = MAX_FILE_BYTES, what: str = "file") -> bytes:
    """The bytes of the regular file ``path``, at most ``max_bytes`` of them; one error naming the path for
    anything else (a FIFO, a device, a folder, a file too large). Opening never blocks on a FIFO."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except IsADirectoryError:
        raise StructuredFileError(f"{path}: is a folder, expected a {what}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise LimitExceeded(f"{path}: not a regular file (a FIFO, device or socket); expected a {what}")
        if info.st_size > max_bytes:
            raise LimitExceeded(f"{path}: {info.st_size} bytes, larger than the {max_bytes} bytes a {what} "
                                      "may have")
        with os.fdopen(fd, "rb", closefd=True) as file:
            fd = -1
            data = file.read(max_bytes + 1)
    finally:
        if fd >= 0:
            os.close(fd)
    if len(data) > max_bytes:  # grew while we read it
        raise LimitExceeded(f"{path}: larger than the {max_bytes} bytes a {what} may have")
    return data


def decode_text(data: bytes, where: str, error: type[ValueError] = StructuredFileError) -> str:
    """``data`` as UTF-8 text, or one error naming ``where`` and the first bad byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{where}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None


def nesting_depth(value: Any, limit: int = MAX_DEPTH) -> int:
    """Nesting depth of parsed lists and mappings, computed without recursion; stops counting past ``limit``."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > limit:
            return depth
        children = item.values() if isinstance(item, dict) else item if isinstance(item, (list, tuple)) else ()
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _limit(error: type[ValueError]) -> type[ValueError]:
    """The error type for a limit: :class:`LimitExceeded` unless the caller asked for its own type."""
    return LimitExceeded if error is StructuredFileError else error


def _check_depth(value: Any, where: str, language: str, error: type[ValueError]) -> Any:
    if nesting_depth(value) > MAX_DEPTH:
        raise _limit(error)(f"{where}: {language} nested too deeply (limit {MAX_DEPTH} levels)")
    return value


# --------------------------------------------------------------------------------------------- JSON

def parse_json(data: bytes | str, where: str, error: type[ValueError] = StructuredFileError) -> Any:
    """Parse JSON, raising one ``error`` naming ``where`` for bad UTF-8, bad JSON, huge numbers or deep nesting."""
    text = decode_text(data, where, error) if isinstance(data, bytes) else data
    try:
        value = json.loads(text)
    except RecursionError:
        raise _limit(error)(f"{where}: JSON nested too deeply (limit {MAX_DEPTH} levels)") from None
    except json.JSONDecodeError as exc:
        raise error(f"{where}: malformed JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise error(f"{where}: unreadable JSON value ({exc})") from None
    return _check_depth(value, where, "JSON", error)


def read_json(path: str | os.PathLike, max_bytes: int = MAX_FILE_BYTES) -> Any:
    """The parsed JSON file ``path``, within the limits (see the module docstring)."""
    return parse_json(read_bytes(path, max_bytes, "JSON file"), str(path))


def read_json_object(path: str | os.PathLike, max_bytes: int = MAX_FILE_BYTES) -> dict[str, Any]:
    """:func:`read_json` of a file that must hold a JSON object."""
    value = read_json(path, max_bytes)
    if not isinstance(value, dict):
        raise StructuredFileError(f"{path}: should hold a JSON object, found {json_kind(value)}")
    return value


# --------------------------------------------------------------------------------------------- TOML

def parse_toml(text: str, where: str, error: type[ValueError] = StructuredFileError) -> dict[str, Any]:
    """Parse a TOML document, raising one ``error`` naming ``where`` for bad TOML or deep nesting."""
    try:
        value = tomllib.loads(text)
    except RecursionError:
        raise _limit(error)(f"{where}: TOML nested too deeply (limit {MAX_DEPTH} levels)") from None
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{where}: not valid TOML ({exc})") from None
    return _check_depth(value, where, "TOML", error)


def read_toml(path: str | os.PathLike, max_bytes: int = MAX_FILE_BYTES,
              error: type[ValueError] = StructuredFileError) -> dict[str, Any]:
    """The parsed TOML file ``path``, within the limits (see the module docstring)."""
    try:
        data = read_bytes(path, max_bytes, "TOML file")
    except LimitExceeded as exc:
        raise _limit(error)(str(exc)) from None
    return parse_toml(decode_text(data, str(path), error), str(path), error)


def parse_toml_value(text: str, where: str | None = None) -> Any:
    """One TOML value as typed on a command line (``--set``, ``--option``): the value, or ``NOT_TOML`` when
    the text is no TOML value (a bare word, which callers take as a string); too long or too deeply nested a
    value is one error naming ``where`` (default: the text)."""
    where = where if where is not None else repr(text if len(text) <= 60 else text[:60] + "…")
    if len(text) > MAX_VALUE_CHARS:
        raise LimitExceeded(f"{where}: a value of {len(text)} characters, more than {MAX_VALUE_CHARS}")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except RecursionError:
        raise LimitExceeded(f"{where}: value nested too deeply (limit {MAX_DEPTH} levels)") from None
    except tomllib.TOMLDecodeError:
        return NOT_TOML
    if nesting_depth(value) > MAX_DEPTH:
        raise LimitExceeded(f"{where}: value nested too deeply (limit {MAX_DEPTH} levels)")
    return value


class _NotToml:
    """The answer of :func:`parse_toml_value` for text that is no TOML value."""

    def __repr__(self) -> str:
        return "NOT_TOML"


NOT_TOML: Any = _NotToml()


# --------------------------------------------------------------------------------------------- YAML

def parse_yaml(text: str, where: str) -> Any:
    """One YAML document, loaded safely (plain data only), with at most :data:`MAX_YAML_ALIASES` alias uses,
    :data:`MAX_YAML_NODES` nodes and :data:`MAX_DEPTH` levels; one error naming ``where`` otherwise."""
    import yaml

    loader = _bounded_loader(yaml)(text)
    try:
        node = loader.get_single_node()
        _check_expansion(node, yaml)
        value = None if node is None else loader.construct_document(node)
    except _YamlLimit as exc:
        raise LimitExceeded(f"{where}: {exc}") from None
    except RecursionError:
        raise LimitExceeded(f"{where}: YAML nested too deeply (limit {MAX_DEPTH} levels)") from None
    except yaml.YAMLError as exc:
        problem = " ".join(str(exc).split())
        raise StructuredFileError(f"{where}: not valid YAML ({problem[:200]})") from None
    finally:
        loader.dispose()
    return value


def read_yaml(path: str | os.PathLike, max_bytes: int = MAX_FILE_BYTES) -> Any:
    """The parsed YAML file ``path``, within the limits (see :func:`parse_yaml`)."""
    return parse_yaml(decode_text(read_bytes(path, max_bytes, "YAML file"), str(path)), str(path))


def front_matter(text: str, where: str) -> Any:
    """The YAML front matter of a Markdown card (between a first line ``---`` and the next ``---``), parsed
    by :func:`parse_yaml`; None when the card has none."""
    if not text.startswith("---"):
        return None
    end = text.find("\n---", 3)
    if end < 0:
        return None
    return parse_yaml(text[3:end], f"{where} front matter")


def read_card(path: str | os.PathLike, max_bytes: int = MAX_FILE_BYTES) -> str:
    """A Markdown card's text (a regular file within ``max_bytes``; undecodable bytes replaced, as cards are
    prose)."""
    return read_bytes(path, max_bytes, "card").decode("utf-8", errors="replace")


def _check_expansion(root: Any, yaml: Any) -> None:
    """Refuse a node graph that, with every alias expanded, holds more than :data:`MAX_YAML_NODES` nodes or
    :data:`MAX_DEPTH` levels, or refers to itself. Sizes are memoised per node, so the walk costs the
    distinct nodes only (ten aliases of ten aliases … are counted, not expanded)."""
    if root is None:
        return
    sizes: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded nodes, depth)
    on_path: set[int] = set()
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        else:
            children = []
        if not children_done:
            if key in sizes:
                continue
            if key in on_path:
                raise _YamlLimit("YAML refers to itself through an alias (a recursive structure)")
            on_path.add(key)
            stack.append((node, True))
            for child in children:
                if id(child) in on_path:
                    raise _YamlLimit("YAML refers to itself through an alias (a recursive structure)")
                if id(child) not in sizes:
                    stack.append((child, False))
            continue
        on_path.discard(key)
        total = 1 + sum(sizes[id(child)][0] for child in children)
        depth = 1 + max((sizes[id(child)][1] for child in children), default=0)
        if total > MAX_YAML_NODES:
            raise _YamlLimit(f"YAML expands to more than {MAX_YAML_NODES} values once its aliases (*name) are "
                             "followed")
        if depth > MAX_DEPTH:
            raise _YamlLimit(f"YAML nested too deeply (limit {MAX_DEPTH} levels)")
        sizes[key] = (total, depth)


class _YamlLimit(Exception):
    """A YAML document past the alias, node or depth budget."""


_LOADER: Any = None


def _bounded_loader(yaml: Any) -> Any:
    """A ``SafeLoader`` whose composer counts nodes, alias uses and depth while it builds the node graph,
    before anything is constructed (so a bomb stops after a few hundred events, not gigabytes later)."""
    global _LOADER
    if _LOADER is not None:
        return _LOADER

    class BoundedSafeLoader(yaml.SafeLoader):
        def __init__(self, stream: Any) -> None:
            super().__init__(stream)
            self._nodes = self._aliases = self._depth = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                self._aliases += 1
                if self._aliases > MAX_YAML_ALIASES:
                    raise _YamlLimit(f"YAML uses more than {MAX_YAML_ALIASES} aliases (*name); a card or config "
                                     "needs few, and expanding many can take unbounded memory")
            self._nodes += 1
            if self._nodes > MAX_YAML_NODES:
                raise _YamlLimit(f"YAML has more than {MAX_YAML_NODES} nodes")
            self._depth += 1
            try:
                if self._depth > MAX_DEPTH:
                    raise _YamlLimit(f"YAML nested too deeply (limit {MAX_DEPTH} levels)")
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1

    _LOADER = BoundedSafeLoader
    return _LOADER
