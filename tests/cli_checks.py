"""Checks the bad-input and integrity tests share: one `error:` line, no output left behind, inputs unchanged.

Imported by test files as ``from cli_checks import ...`` (pytest puts tests/ on the import path: it has no
``__init__.py``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def tree_digest(root: Path) -> str:
    """A hash over every path, link target and file's bytes below ``root`` (to prove inputs are unchanged)."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_symlink():
            digest.update(os.readlink(path).encode())
        elif path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def assert_one_error_line(code: int, err: str, *needles: str, status: int = 2) -> str:
    """One ``error:`` line holding every needle, no traceback, exit ``status`` (2: bad input, 1: a failure);
    returns that line."""
    assert code == status, err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    for needle in needles:
        assert needle in errors[0], (needle, err)
    return errors[0]


def refused(result: tuple[int, str, str], *needles: str) -> str:
    """``run_cli``'s (code, out, err) of a refused command: exit 2, no traceback on either stream, exactly one
    ``error:`` line holding every needle; returns that line."""
    code, out, err = result
    assert "Traceback" not in out, out
    return assert_one_error_line(code, err, *needles)


def nothing_written(out: Path) -> bool:
    """Neither ``out`` nor a temporary or partial sibling of it (``.<name>...``) exists."""
    return not out.exists() and not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]
