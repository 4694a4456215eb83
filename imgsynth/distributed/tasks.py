"""Run a set of independent tasks, each waiting for at most one other, in this process, in local worker
processes, or as Ray tasks.

A :class:`Task` is a module-level function and its (picklable) arguments; it must be resumable and
deterministic on its own, since it may run anywhere and may run again after a crash. Every task
computes with the same fixed number of torch threads wherever it runs, because CPU float results
depend on the thread count: the serial, the local-parallel and the Ray runs give the same numbers.

Local workers are *spawned* (not forked): a forked child of a process that already ran OpenMP
threads can deadlock. A worker that dies takes the pool with it; that is reported with the task's
name, and what the finished tasks wrote stays on disk for the rerun. On Ray, a task lost with its node or
worker is started again on the nodes left (``NODE_LOSS_RETRIES`` times at most; it resumes from what it
finished), and the notes a task raised there are raised again in this process, so they print as local
ones do.
"""

from __future__ import annotations

import multiprocessing
import os
import warnings
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from imgsynth.compute import torch_threads
from imgsynth.errors import TaskFailedError

BACKENDS = ("local", "ray")
# How many times a task lost with its Ray node or worker is started again before the run stops.
NODE_LOSS_RETRIES = 2


@dataclass(frozen=True)
class Task:
    """One unit of work: ``function(*args)``, started only after the task named ``after`` finished."""

    name: str
    function: Callable[..., Any]
    args: tuple[Any, ...] = ()
    after: str | None = None


def call_with_threads(threads: int, function: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    """``function(*args)`` with ``threads`` torch threads (the entry point every backend runs).

    torch is imported first: in a fresh worker it is not loaded yet, and a thread count set after the
    task imported it would come too late for the task's first computations.
    """
    import torch  # noqa: F401 - see above

    with torch_threads(threads):
        return function(*args)


def run_tasks(tasks: Sequence[Task], *, workers: int = 1, backend: str = "local", address: str | None = None,
              threads: int = 1, on_done: Callable[[Task], None] | None = None, verbose: bool = False,
              retries: int = NODE_LOSS_RETRIES) -> None:
    """Run every task once its ``after`` task is done; ``workers`` at a time (1: in this process, in order).

    ``on_done(task)`` is called in this process after each task finished (whatever backend ran it).
    Ray: a task whose node or worker died is started again on the nodes left, up to ``retries`` times (it
    resumes from its finished generations); Ray's own log lines reach the terminal only when ``verbose``.
    """
    on_done = on_done or _nothing
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"task names must be unique, got {names}")
    missing = sorted({t.after for t in tasks if t.after is not None} - set(names))
    if missing:
        raise ValueError(f"tasks wait for unknown tasks {missing}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if backend == "ray":
        _run_ray(tasks, workers, address, threads, on_done, verbose=verbose, retries=retries)
    elif workers == 1:
        for task in _in_dependency_order(tasks):
            call_with_threads(threads, task.function, task.args)
            on_done(task)
    else:
        _run_local(tasks, workers, threads, on_done)


def _nothing(task: Task) -> None:
    """The default ``on_done``."""


def _in_dependency_order(tasks: Sequence[Task]) -> list[Task]:
    done: set[str | None] = {None}
    ordered: list[Task] = []
    waiting = list(tasks)
    while waiting:
        ready = [t for t in waiting if t.after in done]
        if not ready:
            raise ValueError(f"tasks wait for each other in a cycle: {[t.name for t in waiting]}")
        ordered.extend(ready)
        done.update(t.name for t in ready)
        waiting = [t for t in waiting if t not in ready]
    return ordered


def _run_local(tasks: Sequence[Task], workers: int, threads: int, on_done: Callable[[Task], None]) -> None:
    from imgsynth.notes import print_notes_as_lines

    context = multiprocessing.get_context("spawn")
    # A worker's warnings never reach this process's handlers: its notes print as the CLI's do.
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=print_notes_as_lines) as pool:
        running: dict[Future[Any], Task] = {}

        def start(ready: Sequence[Task]) -> None:
            for task in ready:
                running[pool.submit(call_with_threads, threads, task.function, task.args)] = task

        start([t for t in tasks if t.after is None])
        try:
            while running:
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    task = running.pop(future)
                    try:
                        future.result()
                    except BrokenProcessPool as exc:
                        raise TaskFailedError(f"{task.name}: its worker process died ({exc}); finished work is "
                                              "kept, run the same command again to resume") from None
                    on_done(task)
                    start([t for t in tasks if t.after == task.name])
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)  # running tasks finish (their work is kept)
            raise


def call_collecting_notes(threads: int, function: Callable[..., Any], args: tuple[Any, ...]) -> list[str]:
    """``function(*args)`` with ``threads`` torch threads; returns the messages of the notes it raised.

    A Ray worker's warnings would reach the terminal (if at all) as Python warnings with source paths among
    Ray's own lines; the driver shows them again as the notes they are (:func:`_run_ray`).
    """
    from imgsynth.notes import Note

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", Note)
        call_with_threads(threads, function, args)
    return [str(w.message) for w in caught if issubclass(w.category, Note)]


def _run_ray(tasks: Sequence[Task], workers: int, address: str | None, threads: int,
             on_done: Callable[[Task], None], *, verbose: bool = False, retries: int = NODE_LOSS_RETRIES) -> None:
    """At most ``workers`` tasks in flight on the cluster (a local one has every CPU of this machine).

    A task lost with its node (or its worker process) is submitted again, up to ``retries`` times, and Ray
    schedules it on the nodes left; it resumes from the generations it finished (they are on disk). Its own
    error (a bad input) is never retried: it would fail the same way.
    """
    from imgsynth.distributed.backend import ray_session
    from imgsynth.notes import Note

    with ray_session(address, log_to_driver=verbose) as ray:
        remote = ray.remote(num_cpus=threads, max_retries=0)(call_collecting_notes)
        running: dict[Any, Task] = {}
        queue = [t for t in tasks if t.after is None]
        lost: dict[str, int] = {}

        def start() -> None:
            while queue and len(running) < workers:
                task = queue.pop(0)
                running[remote.remote(threads, task.function, task.args)] = task

        start()
        while running:
            finished, _ = ray.wait(list(running), num_returns=1)
            for ref in finished:
                task = running.pop(ref)
                try:
                    notes = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:
                    cause = getattr(exc, "cause", None)
                    if isinstance(cause, Exception):
                        raise cause from None  # the task's own error, e.g. a bad input, as it would be locally
                    raise TaskFailedError(f"{task.name}: failed on the Ray cluster ({exc})") from None
                except ray.exceptions.RayError as exc:
                    lost[task.name] = lost.get(task.name, 0) + 1
                    if lost[task.name] > retries:
                        raise TaskFailedError(f"{task.name}: its Ray worker died ({type(exc).__name__}); finished "
                                              "work is kept, run the same command again to resume") from None
                    warnings.warn(f"{task.name}: its Ray worker or node was lost ({type(exc).__name__}); starting it "
                                  f"again on the nodes left, from its finished generations (retry "
                                  f"{lost[task.name]} of {retries})", Note, stacklevel=2)
                    queue.insert(0, task)
                    continue
                for message in notes:
                    warnings.warn(message, Note, stacklevel=2)
                on_done(task)
                queue.extend(t for t in tasks if t.after == task.name)
            start()


def default_workers() -> int:
    """Local worker processes by default: one per CPU core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - platforms without affinity
        return max(1, multiprocessing.cpu_count())


__all__ = ["BACKENDS", "Task", "TaskFailedError", "call_with_threads", "default_workers", "run_tasks"]
