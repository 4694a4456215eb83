"""One advisory lock per output folder, so two writers never share (and corrupt) one target.

Every command that writes a set, a model, a run or an export holds ``folder_lock(target)`` for as long
as it writes. The lock is a file beside the target (``<parent>/.<name>.lock``) locked with ``flock``
and holding the owner's pid: a second writer is refused at once with one line naming the folder and
that pid. The kernel drops an ``flock`` when its process dies, however it dies, so a lock left by a
killed writer is simply free and the next writer takes it over; no pid guessing is needed.

Within one process the lock is re-entrant (a counter per path), so a writer that resumes a write its
own process started (a test, a retry after an exception) is not refused by itself. Workers of one job
(Ray actors, ``accelerate`` ranks) write into the partial folder their driver locked; they do not take
the lock themselves (``ImageSetWriter(..., locked_by_driver=True)``).
"""

from __future__ import annotations

import errno
import fcntl
import functools
import inspect
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from imgsynth.safe_paths import open_no_follow

LOCK_SUFFIX = ".lock"


class FolderBusyError(RuntimeError):
    """Another live process is writing the folder; the message names it and the holder's pid."""


def lock_path(target: str | os.PathLike) -> Path:
    """Where the lock for ``target`` lives: a hidden file beside it, never inside it."""
    target = Path(target).absolute()
    return target.parent / f".{target.name}{LOCK_SUFFIX}"


class FolderLock:
    """A held lock on one target folder (or file); ``release()`` gives it back.

    Use :func:`acquire` or :func:`folder_lock` rather than constructing one directly.
    """

    def __init__(self, target: Path, path: Path, descriptor: int) -> None:
        self.target, self.path, self._descriptor = target, path, descriptor
        self.owner_pid = os.getpid()

    def release(self) -> None:
        """Remove the lock file and unlock; the order matters (see ``_open_locked``)."""
        # A forked child inherits the descriptor but not the ownership: only the locking process
        # may remove the file, or the parent would be left holding a lock on an unlinked file.
        if self._descriptor < 0 or os.getpid() != self.owner_pid:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self._descriptor)  # closing the last descriptor drops the flock
        self._descriptor = -1


_HELD: dict[Path, tuple[FolderLock, int]] = {}
_HELD_GUARD = threading.Lock()


def _holder_pid(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError:
        return "unknown"
    return text if text.isdigit() else "unknown"


def _open_locked(target: Path, path: Path) -> int:
    """Open and ``flock`` the lock file, retrying if a releasing holder unlinked it under us.

    A holder unlinks the file before unlocking, so a waiter that locked a file no longer at ``path``
    holds a lock nobody else can see; it must start again on the new file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        descriptor = open_no_follow(path, os.O_RDWR | os.O_CREAT, "its lock file")
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(descriptor)
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise FolderBusyError(
                f"{target}: another imgsynth process (pid {_holder_pid(path)}) is writing this folder; "
                f"wait for it to finish or choose another folder (lock: {path})") from None
        try:
            same = os.fstat(descriptor).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(descriptor, 0)
            os.write(descriptor, f"{os.getpid()}\n".encode())
            return descriptor
        os.close(descriptor)


def acquire(target: str | os.PathLike) -> FolderLock:
    """Lock ``target`` for this process (re-entrant); raise :class:`FolderBusyError` if another holds it."""
    target = Path(target).absolute()
    with _HELD_GUARD:
        if target in _HELD and _HELD[target][0].owner_pid == os.getpid():
            lock, count = _HELD[target]
            _HELD[target] = (lock, count + 1)
            return lock
        path = lock_path(target)
        lock = FolderLock(target, path, _open_locked(target, path))
        _HELD[target] = (lock, 1)
        return lock


def release(lock: FolderLock) -> None:
    """Give back one :func:`acquire` of ``lock``; the file is unlocked when the last one is given back."""
    with _HELD_GUARD:
        held = _HELD.get(lock.target)
        if held is None or held[0] is not lock:
            return
        if held[1] > 1:
            _HELD[lock.target] = (lock, held[1] - 1)
            return
        del _HELD[lock.target]
        lock.release()


@contextmanager
def folder_lock(target: str | os.PathLike) -> Iterator[FolderLock]:
    """Hold the lock on ``target`` for the ``with`` block."""
    lock = acquire(target)
    try:
        yield lock
    finally:
        release(lock)


_Function = TypeVar("_Function", bound=Callable[..., Any])


def locks_output(parameter: str) -> Callable[[_Function], _Function]:
    """Decorator: hold the lock on the folder the function's ``parameter`` argument names while it runs."""
    def decorate(function: _Function) -> _Function:
        signature = inspect.signature(function)

        @functools.wraps(function)
        def locked(*args: Any, **kwargs: Any) -> Any:
            target = signature.bind(*args, **kwargs).arguments[parameter]
            with folder_lock(target):
                return function(*args, **kwargs)
        return locked  # type: ignore[return-value]
    return decorate
