"""Checks the bad-input and integrity tests share: one `error:` line, no output left behind, inputs unchanged.

Imported by test files as ``from cli_checks import ...`` (pytest puts tests/ on the import path: it has no
``__init__.py``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path


def tree_digest(root: Path) -> str:
    """A hash over every path, link target and file's bytes below ``root`` (to prove inputs are unchanged)."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(os.fsencode(path.relative_to(root)))  # names need not be UTF-8
        if path.is_symlink():
            digest.update(os.fsencode(os.readlink(path)))
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


# --------------------------------------------------------------------------------------------- the corpus

MEMORY_LIMIT = 2 << 30  # bytes of private writable memory (RLIMIT_DATA) a refused command may reach
TIME_LIMIT = 30.0  # seconds a refused command may take


@dataclasses.dataclass
class Ran:
    """What one ``imgsynth`` subprocess did: exit code, its two streams, and how long it took."""

    code: int
    out: str
    err: str
    seconds: float


def run_limited(*args: str | Path, cwd: Path | None = None, timeout: float = 120.0,
                memory: int = MEMORY_LIMIT, env: dict[str, str] | None = None) -> Ran:
    """Run ``python -m imgsynth ARGS`` in a subprocess whose private memory is capped at ``memory`` bytes
    (``RLIMIT_DATA``: heap and anonymous maps, so a runaway allocation fails instead of swapping) and whose
    wall time is capped at ``timeout`` (a hang is a test failure, reported with the command)."""
    import resource
    import subprocess
    import sys
    import time

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_DATA, (memory, memory))

    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", "imgsynth", *map(str, args)], cwd=cwd, env=environment,
                              capture_output=True, text=True, timeout=timeout, preexec_fn=limit)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"imgsynth {' '.join(map(str, args))} ran past {timeout} s") from exc
    return Ran(done.returncode, done.stdout, done.stderr, time.perf_counter() - start)


def assert_refused_within_limits(ran: Ran, *needles: str) -> str:
    """A refusal as the corpus wants it: non-zero exit, no traceback, one ``error:`` line holding every needle,
    within :data:`TIME_LIMIT` seconds (the memory cap is the subprocess's own); returns the error line."""
    assert ran.code != 0, (ran.out, ran.err)
    assert "Traceback" not in ran.err + ran.out, ran.err
    errors = [line for line in ran.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, ran.err
    for needle in needles:
        assert needle in errors[0], (needle, ran.err)
    assert ran.seconds < TIME_LIMIT, f"took {ran.seconds:.1f} s: {ran.err}"
    return errors[0]


def leftovers(folder: Path) -> list[Path]:
    """Hidden temporary or partial files and folders anywhere below ``folder`` (``.x.tmp``, ``.x.partial``)."""
    return sorted(p for p in folder.rglob(".*") if p.name.endswith((".tmp", ".partial")) or ".tmp" in p.name)
