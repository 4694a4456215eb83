"""Notes: what a person running imgsynth should know about their data or results, as warnings of one category.

Library code raises them with ``warnings.warn(message, Note)``, so a caller can record, filter or turn
them into errors as any warning. Where a person reads them (the CLI, and the worker processes it starts,
whose warnings never reach it), ``print_notes_as_lines`` shows each as one ``note: <message>`` line on
stderr instead of Python's ``file:line: Category: message`` form with a source line.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any, Callable, TextIO


class Note(UserWarning):
    """Something to know about the data or results (a skipped metric, a biased estimate, a class left empty)."""


ShowWarning = Callable[..., None]


def note_lines(original: ShowWarning) -> ShowWarning:
    """A ``warnings.showwarning`` that prints a Note as ``note: <message>`` (further lines indented) and
    hands every other warning to ``original``."""
    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: TextIO | None = None, line: str | None = None) -> None:
        if not issubclass(category, Note):
            original(message, category, filename, lineno, file, line)
            return
        stream: Any = file if file is not None else sys.stderr
        first, *rest = str(message).splitlines() or [""]
        stream.write("".join([f"note: {first}\n", *(f"  {extra}\n" for extra in rest)]))
        stream.flush()
    return show


def print_notes_as_lines() -> None:
    """Show Notes as ``note:`` lines from now on in this process (the entry of a worker process)."""
    warnings.showwarning = note_lines(warnings.showwarning)
