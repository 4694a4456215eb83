"""Where imgsynth may write inside an output: never through a symbolic link, at any level below the output.

An output folder (a set's partial folder, a model folder, a run folder, an export) is the user's choice,
and so is where it lies: the folder itself may be a link (a run folder on another disk). Everything
*below* it is imgsynth's, and a symbolic link there (``seed_0/replace`` pointing at another folder, a
model folder's ``unet`` pointing at other weights) would make a write land outside the output, changing
files the user never pointed imgsynth at. So every folder and file created below an output root goes
through this module:

* :func:`make_dirs_inside` creates folders one level at a time and refuses a link (or a file) where a
  folder is expected, naming it;
* :func:`refuse_links_below` checks a whole existing output before it is resumed or finished (walking it
  costs one ``readdir`` per folder: link-ness comes with the directory entry);
* :func:`write_file_inside` opens a file with ``O_NOFOLLOW``, so a link planted where the file goes is an
  error, never a write through it.

``os.replace``/``os.rename`` onto a path replace a link there rather than write through it, so the atomic
writers of :mod:`imgsynth.atomic_files` need only their parent folder checked.

Each refusal is a :class:`LinkedPathError` (a ``ValueError``: one ``error:`` line in the CLI).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path, PurePosixPath


class LinkedPathError(ValueError):
    """A symbolic link (or a non-folder) lies where imgsynth would write inside an output; the message names it."""


def _link_message(path: Path, root: Path) -> str:
    try:
        target = os.readlink(path)
    except OSError:
        target = "?"
    return (f"{path}: a symbolic link (to {target}) inside the output {root}; imgsynth never writes through "
            "links — remove the link or choose another output folder")


def _relative_parts(root: Path, relative: str | os.PathLike[str]) -> tuple[str, ...]:
    parts = PurePosixPath(Path(relative).as_posix()).parts
    if Path(relative).is_absolute() or ".." in parts:
        raise LinkedPathError(f"{root / relative}: not a path inside the output {root}")
    return tuple(part for part in parts if part != ".")


def make_dirs_inside(root: str | os.PathLike[str], relative: str | os.PathLike[str] = ".") -> Path:
    """Create ``root/relative`` folder by folder (``root`` and its parents as ``mkdir -p`` would) and return it.

    Below ``root`` no level may be a symbolic link or a non-folder: each is refused naming it, so nothing
    written into the returned folder can land outside ``root``.
    """
    root = Path(root).absolute()
    root.mkdir(parents=True, exist_ok=True)
    current = root
    for part in _relative_parts(root, relative):
        current = current / part
        try:
            os.mkdir(current)
        except FileExistsError:
            pass
        info = os.lstat(current)
        if stat.S_ISLNK(info.st_mode):
            raise LinkedPathError(_link_message(current, root))
        if not stat.S_ISDIR(info.st_mode):
            raise LinkedPathError(f"{current}: exists and is not a folder (inside the output {root}); "
                                  "remove it or choose another output folder")
    return current


def refuse_links_below(root: str | os.PathLike[str]) -> None:
    """Raise naming the first symbolic link anywhere below ``root`` (sorted order); nothing if ``root`` is absent.

    For an existing output that is about to be resumed, finished or extended: a link left in it (or put
    there) would make a later write land outside the output.
    """
    root = Path(root).absolute()
    if not root.is_dir():
        return
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda entry: entry.name, reverse=True)
        except FileNotFoundError:  # removed meanwhile: nothing below it to write through
            continue
        for entry in entries:
            if entry.is_symlink():
                raise LinkedPathError(_link_message(Path(entry.path), root))
            if entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))


def open_no_follow(path: str | os.PathLike[str], flags: int, what: str = "a file") -> int:
    """``os.open`` of ``path`` with ``flags`` that never follows a symbolic link at ``path`` and accepts only a
    regular file (a FIFO or device is refused at once, not waited on); returns the descriptor, in
    non-blocking mode. ``what`` says what imgsynth writes there, in the refusal ("its lock file")."""
    target = Path(path)
    try:
        # O_NONBLOCK: a FIFO planted there fails at once (no reader) instead of hanging the writer.
        descriptor = os.open(target, flags | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise LinkedPathError(f"{target}: a symbolic link (to {os.readlink(target)}) where imgsynth writes "
                                  f"{what}; imgsynth never writes through links — remove it") from None
        if exc.errno in (errno.ENXIO, errno.EISDIR):
            raise LinkedPathError(f"{target}: not a regular file where imgsynth writes {what}; remove it") from None
        raise
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise LinkedPathError(f"{target}: not a regular file where imgsynth writes {what}; remove it")
    return descriptor


def write_file_inside(path: str | os.PathLike[str], data: bytes) -> Path:
    """Create or truncate ``path`` and write ``data``, refusing a symbolic link at ``path`` (``O_NOFOLLOW``).

    The folder ``path`` lies in must already have been made or checked (:func:`make_dirs_inside`).
    """
    target = Path(path)
    descriptor = open_no_follow(target, os.O_WRONLY | os.O_CREAT)
    os.set_blocking(descriptor, True)
    os.ftruncate(descriptor, 0)  # after the checks: truncating a device or FIFO is not ours to do
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
    return target
