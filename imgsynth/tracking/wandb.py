"""Weights & Biases, offline: each tracker run is an offline run under ``<run>/wandb/`` (never the network, no
login), uploaded later with ``wandb sync <run>/wandb/offline-run-*`` if wanted.

A run folder's chains share a W&B ``group`` (the run folder's name), so W&B draws a mode's seeds as one line
with a band; ``seed`` and ``mode`` are config values and tags. A resumed imgsynth run continues the same W&B
run ids (``resume="allow"``): each resumption is another offline folder of the same id, which ``wandb sync``
merges. Reports and the lineage are one artifact of the run-folder run.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from imgsynth.tracking.registry import Tracker, quiet_loggers

if TYPE_CHECKING:
    import numpy as np

PROJECT = "imgsynth"


class WandbTracker(Tracker):
    name = "wandb"
    install = "imgsynth[wandb]"

    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        import wandb  # ImportError without the package

        self._wandb = wandb
        self._run: Any = None
        self._group = ""

    def _settings(self) -> Any:
        # Offline and quiet: no network, no login, nothing captured from or printed to the terminal, no
        # system sampling or git/code snapshots (a run folder is not a repository), and no symbolic links
        # (latest-run, debug.log): a run folder holds none, and one would stop its resumption.
        return self._wandb.Settings(mode="offline", console="off", silent=True, quiet=True, x_disable_stats=True,
                                    symlink=False,
                                    disable_git=True, save_code=False, disable_code=True, x_disable_meta=True,
                                    x_disable_machine_info=True, x_save_requirements=False)

    def start(self, name: str, run_id: str | None, *, group: str, tags: Mapping[str, str],
              params: Mapping[str, str]) -> str:
        wandb = self._wandb
        new = run_id is None
        self._group = group
        with quiet_loggers("wandb"):
            self._run = wandb.init(
                project=PROJECT, dir=str(self.settings.run_dir), mode="offline",
                id=run_id or uuid.uuid4().hex[:12], resume="allow", name=name, group=group,
                job_type=tags.get("mode", "run"), tags=[f"{key}={value}" for key, value in tags.items()],
                config={**tags, **params} if new else None, settings=self._settings(), reinit="finish_previous")
        return str(self._run.id)

    def log_metrics(self, step: int, values: Mapping[str, float]) -> None:
        self._run.log(dict(values), step=step)

    def log_image(self, key: str, step: int, image: np.ndarray) -> None:
        self._run.log({key: self._wandb.Image(image)}, step=step)

    def log_files(self, paths: Sequence[Path]) -> None:
        artifact = self._wandb.Artifact(re.sub(r"[^A-Za-z0-9_.-]", "_", f"{self._group}-reports"), type="reports")
        for path in paths:
            artifact.add_file(str(path), name=path.name)
        self._run.log_artifact(artifact)

    def finish(self) -> None:
        if self._run is not None:
            with quiet_loggers("wandb"):
                self._run.finish()
            self._run = None
        self.tidy(self.settings.run_dir)

    @classmethod
    def tidy(cls, run_dir: Path) -> None:
        """Remove the symbolic links W&B's service leaves in its offline folders (``logs/debug-core.log``, to its
        own log in the user's cache): a run folder holds no links, and a resumed run refuses one."""
        root = Path(run_dir) / "wandb"
        if root.is_dir() and not root.is_symlink():
            for path in root.glob("offline-run-*/logs/*"):
                if path.is_symlink():
                    path.unlink()
