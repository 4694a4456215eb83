"""How much imgsynth says on the terminal: the one verbosity setting, read by everything that prints.

``imgsynth run --quiet`` / ``--verbose`` (and any command that takes them) sets it for the length of the
command with :func:`use_verbosity`; library code asks :func:`verbosity` (or :func:`say` for a progress
line) and never sets it. The levels:

- ``QUIET``: errors, notes (each distinct one once), and the paths of what was written; no progress.
- ``NORMAL`` (the default): the above, a progress display of the run (live on a terminal, one line per
  finished generation otherwise), and the headline findings at the end.
- ``VERBOSE``: also every ``[imgsynth]`` line the loop and its workers log, each repeat of a note, training
  progress bars, and other libraries' own logs (Ray's, for instance).

The setting is process-wide state changed only inside a ``with use_verbosity(...)`` block (never at import),
so an in-process caller (a test, a notebook) gets the default back afterwards.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from typing import Iterator

QUIET, NORMAL, VERBOSE = 0, 1, 2
LEVEL_NAMES = {QUIET: "quiet", NORMAL: "normal", VERBOSE: "verbose"}

_state = {"level": NORMAL}
_lock = threading.Lock()


def verbosity() -> int:
    """The verbosity of the command in progress: ``QUIET``, ``NORMAL`` or ``VERBOSE``."""
    return _state["level"]


@contextlib.contextmanager
def use_verbosity(level: int) -> Iterator[int]:
    """Set the verbosity for the block (restored after it)."""
    if level not in LEVEL_NAMES:
        raise ValueError(f"verbosity must be one of {sorted(LEVEL_NAMES)}, got {level!r}")
    with _lock:
        before, _state["level"] = _state["level"], level
    try:
        yield level
    finally:
        with _lock:
            _state["level"] = before


def level_from_flags(quiet: bool, verbose: bool) -> int:
    """The level that ``--quiet`` and ``--verbose`` ask for (both given is a usage error)."""
    if quiet and verbose:
        raise ValueError("--quiet and --verbose exclude each other; give one")
    return QUIET if quiet else VERBOSE if verbose else NORMAL


def say(message: str, *, level: int = VERBOSE) -> None:
    """Print an ``[imgsynth]`` line on stdout when the verbosity is at least ``level``."""
    if verbosity() >= level:
        print(f"[imgsynth] {message}", file=sys.stdout, flush=True)


__all__ = ["LEVEL_NAMES", "NORMAL", "QUIET", "VERBOSE", "level_from_flags", "say", "use_verbosity", "verbosity"]
