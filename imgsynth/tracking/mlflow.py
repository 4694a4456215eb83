"""MLflow: a local SQLite store in the run folder (``sqlite:///<run>/mlflow.db``, artifacts in
``<run>/mlflow-artifacts``; ``mlflow ui --backend-store-uri sqlite:///<run>/mlflow.db`` opens it), unless the
user gives a tracking URI (``MLFLOW_TRACKING_URI``, MLflow's convention, or ``[tracking] mlflow_uri``).

The run folder is one MLflow experiment (its name); each chain one MLflow run tagged ``seed`` and ``mode``,
the resolved recipe its parameters; the run-folder run holds the reports and the lineage as artifacts. Only
the client API is used (``MlflowClient``), so no global MLflow state (active run, tracking URI) changes.
MLflow keys allow letters, digits and ``_-. /``: other characters of a class name become ``_``.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from imgsynth.tracking.registry import Tracker, quiet_loggers

if TYPE_CHECKING:
    import numpy as np

STORE_FILE = "mlflow.db"
ARTIFACT_DIR = "mlflow-artifacts"
# MLflow writes its database migrations' progress as INFO lines; they are not the user's business.
_CHATTY = ("mlflow", "alembic")


def safe_key(key: str) -> str:
    """``key`` with the characters MLflow refuses in metric and parameter names replaced by ``_``."""
    return re.sub(r"[^\w\-. /]", "_", key, flags=re.ASCII)


def _quiet() -> contextlib.AbstractContextManager[None]:
    return quiet_loggers(*_CHATTY, level=logging.WARNING)


class MlflowTracker(Tracker):
    name = "mlflow"
    install = "imgsynth[mlflow]"

    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        with _quiet():
            from mlflow.entities import Metric, Param  # ImportError without the package (or a broken one)
            from mlflow.tracking import MlflowClient

        self._metric, self._param = Metric, Param
        run_dir = self.settings.run_dir.resolve()
        self.uri = self.settings.mlflow_uri or f"sqlite:///{run_dir / STORE_FILE}"
        self._artifacts = None if self.settings.mlflow_uri else (run_dir / ARTIFACT_DIR).as_uri()
        with _quiet():
            self.client = MlflowClient(tracking_uri=self.uri)
        self._run_id: str | None = None

    def _experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        return str(self.client.create_experiment(name, artifact_location=self._artifacts))

    def start(self, name: str, run_id: str | None, *, group: str, tags: Mapping[str, str],
              params: Mapping[str, str]) -> str:
        with _quiet():
            if run_id is not None:
                self.client.get_run(run_id)  # one that is gone is an error (a note), not a new run
                self.client.update_run(run_id, status="RUNNING")
                self._run_id = run_id
                return run_id
            run = self.client.create_run(self._experiment(group), run_name=name, tags=dict(tags))
            self._run_id = run.info.run_id
            self.client.log_batch(self._run_id, params=[self._param(safe_key(k), v[:6000]) for k, v in params.items()])
            return self._run_id

    def log_metrics(self, step: int, values: Mapping[str, float]) -> None:
        now = int(time.time() * 1000)
        metrics = [self._metric(safe_key(key), value, now, step) for key, value in values.items()]
        for start in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per batch
            self.client.log_batch(self._run_id, metrics=metrics[start:start + 1000])

    def log_image(self, key: str, step: int, image: np.ndarray) -> None:
        self.client.log_image(self._run_id, image, artifact_file=f"{safe_key(key)}/generation_{step:03d}.png")

    def log_files(self, paths: Sequence[Path]) -> None:
        for path in paths:
            self.client.log_artifact(self._run_id, str(path), artifact_path="reports")

    def finish(self) -> None:
        if self._run_id is not None:
            self.client.set_terminated(self._run_id)
            self._run_id = None
