"""Notes: what a person running imgsynth should know about their data or results, as warnings of one category.

Library code raises them with ``warnings.warn(message, Note)``, so a caller can record, filter or turn
them into errors as any warning. Where a person reads them (the CLI, and the worker processes it starts,
whose warnings never reach it), ``print_notes_as_lines`` shows each as one ``note: <message>`` line on
stderr instead of Python's ``file:line: Category: message`` form with a source line.

A long command raises the same note many times (once per generation, in several worker processes):
``NoteBoard`` prints each distinct note once and counts the rest. Notes raised in a loop's worker processes
(local or Ray) travel to the parent through the run folder's event files (:mod:`imgsynth.progress`) and are
raised again there, so they reach the parent's board (or the caller's own warning filters) like its own.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import warnings
from typing import Any, Callable, Iterator, TextIO


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
        stream.write(note_text(message))
        stream.flush()
    return show


def print_notes_as_lines() -> None:
    """Show Notes as ``note:`` lines from now on in this process (the entry of a worker process)."""
    warnings.showwarning = note_lines(warnings.showwarning)


def note_text(message: Warning | str) -> str:
    """A note as its ``note:`` lines (further lines indented), ending in a newline."""
    first, *rest = str(message).splitlines() or [""]
    return "".join([f"note: {first}\n", *(f"  {extra}\n" for extra in rest)])


SUMMARY_WIDTH = 110


class NoteBoard:
    """Each distinct note of a command once: printed the first time it is raised, counted after that.

    ``imgsynth run`` raises the same note once per generation (and its worker processes raise theirs); the
    board prints it once, and :meth:`summary_lines` says how many more times it applied. With ``repeat``
    (``--verbose``) every occurrence prints. Thread-safe: worker notes arrive from a monitor thread.
    """

    def __init__(self, stream: TextIO | None = None, *, repeat: bool = False) -> None:
        self._stream = stream
        self.repeat = repeat
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, message: Warning | str) -> None:
        """Count a note; print it when it is new (or always, with ``repeat``)."""
        text = str(message)
        with self._lock:
            seen = self.counts.get(text, 0)
            self.counts[text] = seen + 1
            if seen and not self.repeat:
                return
            stream: Any = self._stream if self._stream is not None else sys.stderr
            stream.write(note_text(text))
            stream.flush()

    def summary_lines(self) -> list[str]:
        """One line per note raised more than once: how many more times it applied, and its start."""
        lines = []
        for text, count in self.counts.items():
            if count > 1:
                first = text.splitlines()[0] if text else ""
                short = first if len(first) <= SUMMARY_WIDTH else first[:SUMMARY_WIDTH - 1] + "…"
                lines.append(f"note: ({count - 1} more time{'s' if count > 2 else ''}) {short}")
        return lines

    @contextlib.contextmanager
    def collecting(self) -> Iterator[NoteBoard]:
        """Within the block, every Note raised in this process goes to the board (other warnings are shown as
        before); Python's once-per-place filtering is off for Notes, so each occurrence is counted."""
        with warnings.catch_warnings():
            original = warnings.showwarning
            warnings.simplefilter("always", Note)

            def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                     file: TextIO | None = None, line: str | None = None) -> None:
                if issubclass(category, Note):
                    self.add(message)
                else:
                    original(message, category, filename, lineno, file, line)

            warnings.showwarning = show
            yield self
