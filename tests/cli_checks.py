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
    """Run ``imgsynth ARGS`` as a process of its own whose private memory is capped at ``memory`` bytes
    (``RLIMIT_DATA``: heap and anonymous maps, so a runaway allocation fails instead of swapping) and whose
    wall time is capped at ``timeout`` (a hang is a test failure, reported with the command).

    The process is forked from a server that imported torch and the CLI once (``multiprocessing``'s
    forkserver with those modules preloaded; it never computes, so no OpenMP threads are forked): each case
    costs its own work, not a fresh interpreter's imports. Its streams go to files read back here."""
    import tempfile
    import time

    context = _forkserver()
    with tempfile.TemporaryDirectory(prefix="imgsynth-case-") as streams:
        out_path, err_path = Path(streams) / "out", Path(streams) / "err"
        environment = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})}
        process = context.Process(target=_run_case, args=([str(a) for a in args], str(cwd) if cwd else None,
                                                          environment, memory, str(out_path), str(err_path)))
        start = time.perf_counter()
        process.start()
        process.join(timeout)
        if process.is_alive():
            process.kill()
            process.join()
            raise AssertionError(f"imgsynth {' '.join(map(str, args))} ran past {timeout} s")
        seconds = time.perf_counter() - start
        code = process.exitcode if process.exitcode is not None else -1
        return Ran(code if code >= 0 else 128 - code, out_path.read_text(errors="replace"),
                   err_path.read_text(errors="replace"), seconds)


_CONTEXT = None


def _forkserver():  # noqa: ANN202 - multiprocessing's context type is private
    """The forkserver context, its server preloading torch and the CLI (started on first use)."""
    global _CONTEXT
    if _CONTEXT is None:
        import multiprocessing

        _CONTEXT = multiprocessing.get_context("forkserver")
        # What most cases import anyway: torch, the CLI, the diffusion models' and pipelines' code.
        _CONTEXT.set_forkserver_preload(["torch", "imgsynth.cli.app", "cli_checks", "diffusers",
                                         "imgsynth.pipelines.conditional.sampling",
                                         "imgsynth.pipelines.conditional.training", "imgsynth.pipelines.text2image",
                                         "diffusers.pipelines.auto_pipeline"])
    return _CONTEXT


def _run_case(args: list[str], cwd: str | None, environment: dict[str, str], memory: int, out: str,
              err: str) -> None:
    """The forked case: cap memory, point fds 1 and 2 at the files, run the CLI as ``imgsynth`` would."""
    import resource
    import sys

    resource.setrlimit(resource.RLIMIT_DATA, (memory, memory))
    os.environ.update(environment)
    if cwd is not None:
        os.chdir(cwd)
    for fd, path in ((1, out), (2, err)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)
    sys.stdout = open(1, "w", encoding="utf-8", errors="replace", closefd=False)
    sys.stderr = open(2, "w", encoding="utf-8", errors="replace", closefd=False)
    sys.argv = ["imgsynth", *args]
    from imgsynth.cli.app import main

    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # a bug: keep its traceback on stderr, as the interpreter would
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


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
