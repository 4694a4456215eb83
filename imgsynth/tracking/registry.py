"""The tracker seam: ``TRACKERS`` maps a name to a :class:`Tracker` class (``imgsynth run --track NAME``,
``[tracking] trackers``).

A tracker knows nothing of run folders: :mod:`imgsynth.tracking.session` reads the run and hands each tracker
plain values: it opens (or continues) one *tracker run* at a time with :meth:`Tracker.start`, logs metric
values and images at a step (the generation) and files, then :meth:`Tracker.finish`\\ es it. Built-ins are
registered as ``"module:Class"`` strings, so naming them (recipe checks, ``--help``) imports no tracker
package. Add one: a module with a ``Tracker`` subclass and ``TRACKERS.register(name, "module:Class")``.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Iterator, Mapping, Sequence

from imgsynth.registry import Registry

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class TrackerSettings:
    """Where a tracker writes: ``run_dir`` (its offline store lives there) and, for MLflow, a tracking URI
    given by the user (None: the run folder's own SQLite store)."""

    run_dir: Path
    mlflow_uri: str | None = None


class Tracker:
    """One experiment tracker. Every hook is called in order ``start``, ``log_*``…, ``finish`` per tracker run,
    from one process; ``close`` once at the end of a session. An exception from any hook makes the session drop
    this tracker with one note: the run itself never depends on a tracker."""

    name: ClassVar[str] = ""
    #: what to ``pip install`` when its package is missing (named in the note)
    install: ClassVar[str] = ""

    def __init__(self, settings: TrackerSettings) -> None:
        self.settings = settings

    def start(self, name: str, run_id: str | None, *, group: str, tags: Mapping[str, str],
              params: Mapping[str, str]) -> str:
        """Open tracker run ``run_id`` again (a resumed imgsynth run) or a new one named ``name`` (``params``
        logged once, when it is new); returns its id, which the session keeps in the run folder."""
        raise NotImplementedError

    def log_metrics(self, step: int, values: Mapping[str, float]) -> None:
        """Values of one step (a generation) of the open tracker run."""
        raise NotImplementedError

    def log_image(self, key: str, step: int, image: np.ndarray) -> None:
        """An ``H×W×C`` uint8 image at ``step`` of the open tracker run."""
        raise NotImplementedError

    def log_files(self, paths: Sequence[Path]) -> None:
        """Files (reports, the lineage) as artifacts of the open tracker run."""
        raise NotImplementedError

    def finish(self) -> None:
        """Close the open tracker run (its data on disk)."""
        raise NotImplementedError

    def close(self) -> None:
        """End of the session (default: nothing to do)."""

    @classmethod
    def tidy(cls, run_dir: Path) -> None:
        """Before a run (re)starts: remove what the tool left in ``run_dir`` that a run folder may not hold (a
        symbolic link from a killed session). Default: nothing; must not import the tool's package."""


@contextlib.contextmanager
def quiet_loggers(*names: str, level: int = logging.CRITICAL) -> Iterator[None]:
    """Loggers ``names`` silenced below ``level`` for a block: a tool's own INFO lines and logged tracebacks
    are not the user's business (its failure reaches them once, as the session's note)."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(level)
    try:
        yield
    finally:
        for logger, before in zip(loggers, levels):
            logger.setLevel(before)


TRACKERS: Registry[type[Tracker]] = Registry("tracker")
TRACKERS.register("wandb", "imgsynth.tracking.wandb:WandbTracker")
TRACKERS.register("mlflow", "imgsynth.tracking.mlflow:MlflowTracker")
TRACKERS.register("tensorboard", "imgsynth.tracking.tensorboard:TensorboardTracker")
