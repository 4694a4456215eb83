"""Error types shared by the layers that read and write sets (kept apart so those modules need not import each other)."""

from __future__ import annotations


class ImageSetError(ValueError):
    """A set on disk (or a request to write one) is invalid; the message names the file and the problem."""


class TaskFailedError(RuntimeError):
    """A task of a parallel job could not finish (its worker died); the message names it and how to resume."""
