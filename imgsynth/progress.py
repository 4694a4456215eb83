"""How a run's tasks tell the process that started them what they are doing: stages, finished generations, log
lines and notes, wherever the tasks run (this process, local worker processes, Ray workers).

One channel for every backend: each task appends its events, one JSON object per line, to its own file in
the run folder (``<run>/.imgsynth-events/<task>.jsonl``; one ``write`` per line on an ``O_APPEND``
descriptor, so a line is never torn), and the parent polls those files (:class:`RunMonitor`). The run
folder is the one place every backend already shares (a Ray cluster's nodes write their sets there), so
this needs no queue actor, no port and no pickled callback, and a retried task simply appends to the same
file. Tasks running in the parent itself (one worker) hand their events straight to the observer.

Library code raises events with :func:`emit` (a no-op when nobody listens); the loop sets the channel up
(:func:`task_events` in a worker, :func:`in_process_events` in the parent). An *observer* receives every
event as a dict; the CLI's is its progress display (:class:`RunDisplay`); without one, notes from workers
are raised again in the parent as :class:`imgsynth.notes.Note` warnings, so they print (or are recorded) as
the parent's own.

Events: ``{"kind": "start" | "end", "task"}``, ``{"kind": "stage", "task", "key", "stage"}``,
``{"kind": "generation", "task", "key", "seconds"}``, ``{"kind": "log", "task", "message", "level"}``,
``{"kind": "note", "task", "message"}``; each also has ``time`` (seconds since the epoch).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import re
import shutil
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence, TextIO

from imgsynth.notes import Note
from imgsynth.terminal import NORMAL, QUIET, VERBOSE, verbosity

EVENTS_FOLDER = ".imgsynth-events"
CHAIN_SUFFIX = " chain"  # the loop names a (seed, mode) chain's task "seed <s> <mode> chain"
POLL_SECONDS = 0.25

Event = dict[str, Any]
Sink = Callable[[Event], None]

_sink: contextvars.ContextVar[Sink | None] = contextvars.ContextVar("imgsynth_event_sink", default=None)
_task: contextvars.ContextVar[str] = contextvars.ContextVar("imgsynth_task", default="")


def emit(kind: str, **fields: Any) -> bool:
    """Send an event to whoever listens (see the module docstring); returns whether anyone did."""
    sink = _sink.get()
    if sink is None:
        return False
    sink({"kind": kind, "task": _task.get(), "time": time.time(), **fields})
    return True


@contextlib.contextmanager
def task_scope(name: str) -> Iterator[None]:
    """Events inside the block belong to task ``name``; ``start`` and ``end`` events frame it."""
    token = _task.set(name)
    emit("start")
    try:
        yield
        emit("end")
    finally:
        _task.reset(token)


def events_folder(run_dir: str | os.PathLike[str]) -> Path:
    """The run folder's event files' folder."""
    return Path(run_dir) / EVENTS_FOLDER


def _file_name(task: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", task).strip("_") + ".jsonl"


@contextlib.contextmanager
def task_events(run_dir: str | os.PathLike[str], task: str) -> Iterator[None]:
    """In a worker: send this task's events, and its notes, to its event file in the run folder.

    Notes do not print here (a worker's stderr is not the user's terminal, and on Ray it is not even on the
    same machine): the parent prints them, each distinct one once.
    """
    from imgsynth.safe_paths import make_dirs_inside, open_no_follow

    folder = make_dirs_inside(run_dir, EVENTS_FOLDER)
    descriptor = open_no_follow(folder / _file_name(task), os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                                "its progress events")
    os.set_blocking(descriptor, True)
    lock = threading.Lock()

    def write(event: Event) -> None:
        line = (json.dumps(event, default=str) + "\n").encode()
        with lock:
            os.write(descriptor, line)

    sink_token, task_token = _sink.set(write), _task.set(task)
    try:
        with warnings.catch_warnings():
            original = warnings.showwarning
            warnings.simplefilter("always", Note)  # every occurrence is counted by the parent

            def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                     file: TextIO | None = None, line: str | None = None) -> None:
                if issubclass(category, Note):
                    emit("note", message=str(message))
                else:
                    original(message, category, filename, lineno, file, line)

            warnings.showwarning = show
            yield
    finally:
        _sink.reset(sink_token)
        _task.reset(task_token)
        os.close(descriptor)


@contextlib.contextmanager
def in_process_events(observer: Sink) -> Iterator[None]:
    """In the parent: events of tasks run in this process go straight to ``observer``."""
    token = _sink.set(observer)
    try:
        yield
    finally:
        _sink.reset(token)


class Observer(Protocol):
    """What receives a run's events (:class:`RunDisplay` is one)."""

    def plan(self, tasks: Sequence[str], generations: int) -> None: ...

    def __call__(self, event: Event) -> None: ...


class NotesOnly:
    """The observer when nobody else listens: worker notes are raised again here as Note warnings, and log
    lines print as the loop's own would."""

    def plan(self, tasks: Sequence[str], generations: int) -> None:
        return None

    def __call__(self, event: Event) -> None:
        if event["kind"] == "note":
            raise_note(event)
        elif event["kind"] == "log" and verbosity() >= int(event.get("level", VERBOSE)):
            print(f"[imgsynth] {event['message']}", flush=True)


def raise_note(event: Event) -> None:
    """A worker's note as a Note warning of this process (no source line: it is about the data)."""
    warnings.warn_explicit(str(event.get("message", "")), Note, filename=f"<{event.get('task') or 'task'}>",
                           lineno=0, registry={})


_observer: dict[str, Observer | None] = {"current": None}


@contextlib.contextmanager
def observing(observer: Observer) -> Iterator[Observer]:
    """Within the block, runs in this process report to ``observer`` (the CLI's progress display)."""
    before, _observer["current"] = _observer["current"], observer
    try:
        yield observer
    finally:
        _observer["current"] = before


def current_observer() -> Observer:
    """The observer a run reports to: the one set by :func:`observing`, else :class:`NotesOnly`."""
    return _observer["current"] or NotesOnly()


class RunMonitor:
    """Polls a run folder's event files on a thread and hands each new event to an observer.

    Used as a context manager around the tasks: entering clears the folder's old event files, leaving reads
    the last events and removes the folder. An exception the observer raises (a Note turned into an error
    by the caller's warning filters) is raised again on leaving.
    """

    def __init__(self, run_dir: str | os.PathLike[str], observer: Sink, interval: float = POLL_SECONDS) -> None:
        self.folder = events_folder(run_dir)
        self.observer = observer
        self.interval = interval
        self._offsets: dict[Path, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> RunMonitor:
        shutil.rmtree(self.folder, ignore_errors=True)
        self._thread = threading.Thread(target=self._loop, name="imgsynth-run-monitor", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.poll()
        shutil.rmtree(self.folder, ignore_errors=True)
        if self._error is not None and exc[0] is None:
            raise self._error

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def poll(self) -> None:
        """Read every complete new line of every event file and hand it on."""
        with self._lock:
            try:
                files = sorted(p for p in self.folder.iterdir() if p.suffix == ".jsonl" and p.is_file()
                               and not p.is_symlink())
            except OSError:
                return
            for path in files:
                for event in self._new_events(path):
                    try:
                        self.observer(event)
                    except BaseException as exc:  # noqa: BLE001 - kept for the main thread
                        self._error = self._error or exc

    def _new_events(self, path: Path) -> list[Event]:
        start = self._offsets.get(path, 0)
        try:
            with open(path, "rb") as handle:
                handle.seek(start)
                data = handle.read()
        except OSError:
            return []
        end = data.rfind(b"\n") + 1  # a line still being written waits for the next poll
        self._offsets[path] = start + end
        events = []
        for line in data[:end].splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and isinstance(event.get("kind"), str):
                event.setdefault("task", path.stem)
                events.append(event)
        return events


def _clock(seconds: float) -> str:
    seconds = int(round(max(0.0, seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class RunDisplay:
    """The progress of a run for a person: tasks (generation 0 of each seed, each chain) done of all,
    generations done of all, the current stage of each running task, elapsed time and an estimate of the rest.

    On a terminal it is a live display (rich) redrawn in place; elsewhere (a CI log, a pipe) it prints one
    plain line per finished generation. ``QUIET`` shows nothing; ``VERBOSE`` also prints every log line
    the loop and its workers write. Notes are handed to ``notes`` (a :class:`imgsynth.notes.NoteBoard`'s
    ``add``) when given, else raised as Note warnings in this process.
    """

    def __init__(self, *, level: int | None = None, stream: TextIO | None = None, live: bool | None = None,
                 notes: Callable[[str], None] | None = None, title: str = "run") -> None:
        from rich.console import Console

        self.level = verbosity() if level is None else level
        self.console = Console(file=stream or sys.stdout, highlight=False, soft_wrap=True)
        self.live_wanted = self.console.is_terminal if live is None else live
        self.notes = notes
        self.title = title
        self.tasks: list[str] = []
        self.done: set[str] = set()
        self.running: dict[str, str] = {}
        self.generations = 0
        self.finished_generations = 0
        self.started = time.monotonic()
        self._live: Any = None
        self._lock = threading.RLock()

    # ---------------------------------------------------------------- observer
    def plan(self, tasks: Sequence[str], generations: int) -> None:
        """What this invocation will run: the task names and the number of generations still to compute."""
        with self._lock:
            self.tasks, self.generations = list(tasks), generations
            self.done, self.running, self.finished_generations = set(), {}, 0
            self.started = time.monotonic()
            if self.tasks and self.level >= NORMAL and self.live_wanted and self._live is None:
                from rich.live import Live

                self._live = Live(self, console=self.console, refresh_per_second=4, transient=True,
                                  redirect_stdout=True, redirect_stderr=True)
                self._live.start()

    def __call__(self, event: Event) -> None:
        with self._lock:
            self._handle(event)

    def _handle(self, event: Event) -> None:
        kind, task = event.get("kind"), str(event.get("task", ""))
        if kind == "note":
            if self.notes is not None:
                self.notes(str(event.get("message", "")))
            else:
                raise_note(event)
        elif kind == "log":
            if self.level >= int(event.get("level", VERBOSE)):
                self._print(f"[imgsynth] {event.get('message', '')}")
        elif kind == "start":
            self.running[task] = f"{task}: starting"
        elif kind == "stage":
            self.running[task] = f"{event.get('key') or task}: {event.get('stage', '')}"
        elif kind == "generation":
            self.finished_generations += 1
            if self.level >= NORMAL and self._live is None:
                self._print(f"[imgsynth] {event.get('key', '')} done in {float(event.get('seconds', 0)):.1f}s · "
                            + self.status_line())
        elif kind == "end":
            self.running.pop(task, None)
            self.done.add(task)

    def _print(self, text: str) -> None:
        if self.level > QUIET or text.startswith("note:"):
            self.console.print(text, markup=False, highlight=False)

    # ---------------------------------------------------------------- rendering
    def eta(self) -> float | None:
        """Seconds left, from the mean time per finished generation so far (None before the first)."""
        if not self.finished_generations or self.generations <= self.finished_generations:
            return None if not self.finished_generations else 0.0
        elapsed = time.monotonic() - self.started
        return elapsed / self.finished_generations * (self.generations - self.finished_generations)

    def status_line(self) -> str:
        """``chains 3/9 · generations 14/40 · 1:02 elapsed · about 3:10 left`` (a seed's generation 0, which its
        chains wait for, counts among the generations, not the chains)."""
        eta = self.eta()
        left = f"about {_clock(eta)} left" if eta is not None else "time left: after the first generation"
        chains = [t for t in self.tasks if t.endswith(CHAIN_SUFFIX)]
        done = sum(t in self.done for t in chains)
        return (f"chains {done}/{len(chains)} · generations {self.finished_generations}/"
                f"{self.generations} · {_clock(time.monotonic() - self.started)} elapsed · {left}")

    def __rich__(self) -> Any:
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        with self._lock:
            head = Table.grid(padding=(0, 1))
            head.add_row(Text(self.title, style="bold"),
                         ProgressBar(total=max(1, self.generations), completed=self.finished_generations, width=30),
                         Text(self.status_line()))
            lines = [Text(f"  {doing}", style="dim") for doing in self.running.values()]
            return Group(head, *lines)

    def close(self) -> None:
        """Stop the live display (its last state disappears) and print the final status line."""
        with self._lock:
            if self._live is not None:
                self._live.stop()
                self._live = None
                if self.tasks and self.level >= NORMAL:
                    self._print(f"[imgsynth] {self.status_line()}")

    def __enter__(self) -> RunDisplay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["EVENTS_FOLDER", "Event", "NotesOnly", "Observer", "RunDisplay", "RunMonitor", "current_observer",
           "emit", "events_folder", "in_process_events", "observing", "raise_note", "task_events", "task_scope"]
