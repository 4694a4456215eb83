"""Log a run folder to its trackers: what is new since the last time, read through the run folder's one reader.

One tracker run per (seed, mode) chain, plus one for the run folder as a whole: W&B groups a run folder's
chains (its ``group``) and draws their seeds as bands, MLflow compares runs of one experiment (the run
folder's name) side by side, and TensorBoard overlays runs that are sibling folders
(``tensorboard/seed_0/replace``…), so a chain per tracker run is what all three show best; a seed's
generation 0 is step 0 of each of its modes' chains, as every line of the dashboard starts there. Metric keys
are ``metric[/extractor]/class`` (``fid/domain/all``, ``fid/domain/3``): trackers tag runs, not points, so
``seed`` and ``mode`` are the run's tags and class and extractor are in the key. The run-folder run holds the
resolved recipe, the lineage of the run's sets (``tracking/lineage.json``) and the reports as files.

What was logged is kept in ``<run>/tracking/<tracker>.json`` (tracker run ids and the generations logged per
chain), written after each generation: a killed and resumed run continues the same tracker runs and logs no
point twice, and an extended run adds tracker runs for its new seeds. A tracker that is not installed or fails
is one note, and the session goes on without it: trackers never stop a run or change its files outside
``tracking/`` and the trackers' own stores.
"""

from __future__ import annotations

import functools
import hashlib
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from imgsynth.atomic_files import write_json_atomic
from imgsynth.experiments.run import GenerationKey, RunFolder, read_run_file
from imgsynth.notes import Note
from imgsynth.safe_paths import make_dirs_inside
from imgsynth.tracking.registry import TRACKERS, Tracker, TrackerSettings

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

TRACKING_DIR = "tracking"
LINEAGE_FILE = "lineage.json"
# The reports logged as files of the run-folder tracker run, when the run folder has them.
REPORT_FILES = ("dashboard.png", "class_heatmap.png", "grids.png", "findings.csv", "metrics.csv", "report.html")
RUN_KEY = "run"  # the ledger's name for the run-folder tracker run


def metric_key(metric: str, extractor: str, class_name: str) -> str:
    """A metric row's key in every tracker: ``metric/extractor/class`` (no extractor: ``metric/class``)."""
    return "/".join(part for part in (metric, extractor, class_name) if part)


def chain_name(seed: int, mode: str) -> str:
    return f"seed_{seed}/{mode}"


def recipe_params(folder: RunFolder) -> dict[str, str]:
    """The resolved recipe as flat ``section.field`` → text parameters (every tracker takes strings)."""
    params: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        else:
            params[prefix] = str(value)

    walk("", folder.recipe.to_dict())
    return params


def run_lineage(folder: RunFolder) -> dict[str, Any]:
    """The lineage of the run's sets, per (seed, mode) chain: the graph of :func:`imgsynth.provenance.lineage`
    (ids, generators, licenses and their warnings) from the chain's last finished output back to the real data."""
    from imgsynth.provenance.lineage import lineage

    chains: dict[str, Any] = {}
    for seed in folder.seeds:
        for mode in folder.modes:
            for generation in range(folder.generations - 1, -1, -1):
                output = folder.output(GenerationKey(seed, mode if generation else "base", generation))
                if output is not None:
                    chains[chain_name(seed, mode)] = {"generation": generation, **lineage(output.root).to_dict()}
                    break
    return {"run": folder.name, "chains": chains}


def generation_grid(folder: RunFolder, key: GenerationKey, per_class: int = 2) -> np.ndarray | None:
    """The first ``per_class`` images of each class of a generation's output, side by side (H×W×3 uint8)."""
    import numpy as np

    samples = folder.output(key)
    if samples is None:
        return None
    tiles = []
    for label in samples.classes:
        for index in samples.indices_of_class(label)[:per_class]:
            image = np.asarray(samples.load_image(index))
            tiles.append(np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3])
    return np.concatenate(tiles, axis=1).astype(np.uint8) if tiles else None


class Ledger:
    """What one tracker has logged of a run folder: its tracker run ids, the generations logged per chain and
    the hashes of the files logged (``<run>/tracking/<tracker>.json``)."""

    def __init__(self, run_dir: Path, name: str) -> None:
        self.run_dir = run_dir
        self.path = run_dir / TRACKING_DIR / f"{name}.json"
        payload = read_run_file(self.path) if self.path.is_file() else {}
        self.runs: dict[str, str] = {str(k): str(v) for k, v in payload.get("runs", {}).items()}
        self.steps: dict[str, list[int]] = {str(k): [int(s) for s in v] for k, v in payload.get("steps", {}).items()}
        self.files: dict[str, str] = {str(k): str(v) for k, v in payload.get("files", {}).items()}

    def save(self) -> None:
        make_dirs_inside(self.run_dir, Path(TRACKING_DIR))
        write_json_atomic(self.path, {"runs": self.runs, "steps": self.steps, "files": self.files}, indent=2)


class TrackingSession:
    """The trackers of one ``imgsynth run``: ``sync()`` after each finished task, ``finish()`` after the
    reports. Every failure is one note and drops that tracker for the rest of the session."""

    def __init__(self, run_dir: str | Path, names: Sequence[str], *, mlflow_uri: str | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.names = list(dict.fromkeys(names))
        unknown = [n for n in self.names if n not in TRACKERS]
        if unknown:
            raise ValueError(f"--track: unknown tracker(s) {unknown}; known: {', '.join(TRACKERS.names())}")
        self.settings = TrackerSettings(self.run_dir, mlflow_uri or None)
        for name in self.names:
            TRACKERS[name].tidy(self.run_dir)
        self._trackers: dict[str, Tracker] = {}
        self._dropped: set[str] = set()

    def sync(self) -> None:
        """Log every finished generation not logged yet (called in the process that runs the loop)."""
        self._each(final=False)

    def finish(self) -> None:
        """Log what is left, then the recipe, lineage and reports; close every tracker."""
        self._each(final=True)
        for name, tracker in list(self._trackers.items()):
            self._guard(name, tracker.close)
        self._trackers.clear()

    # ---------------------------------------------------------------------------------------------- internals
    def _each(self, final: bool) -> None:
        active = [n for n in self.names if n not in self._dropped]
        if not active:
            return
        try:
            from imgsynth.reports.tables import collect_metrics

            folder = RunFolder(self.run_dir)
            frame = collect_metrics(folder)  # the rows metrics.csv holds, read the way it is written
        except Exception as exc:  # noqa: BLE001 - an unreadable run file: the run reports it; tracking waits
            warnings.warn(f"tracking: could not read {self.run_dir} ({exc}); nothing logged this time", Note,
                          stacklevel=2)
            return
        for name in active:
            self._guard(name, functools.partial(self._log, name, folder, frame, final))

    def _guard(self, name: str, work: Any) -> None:
        if name in self._dropped:
            return
        try:
            work()
        except Exception as exc:  # noqa: BLE001 - any tracker failure is a note, never the run's end
            self._dropped.add(name)
            self._trackers.pop(name, None)
            if isinstance(exc, ImportError):
                install = TRACKERS[name].install if name in TRACKERS else name
                reason = f"is not installed or does not import ({exc}; pip install {install!r})"
            else:
                reason = f"failed ({type(exc).__name__}: {exc})"
            warnings.warn(f"tracking: {name} {reason}; the run goes on without it and its results are the same",
                          Note, stacklevel=2)

    def _tracker(self, name: str) -> Tracker:
        if name not in self._trackers:
            self._trackers[name] = TRACKERS[name](self.settings)
        return self._trackers[name]

    def _log(self, name: str, folder: RunFolder, frame: pd.DataFrame, final: bool) -> None:
        import pandas as pd

        ledger = Ledger(self.run_dir, name)
        pending = []
        for (seed, mode), rows in frame.groupby(["seed", "mode"], sort=False):
            chain = chain_name(int(seed), str(mode))
            new = sorted({int(g) for g in rows["generation"]} - set(ledger.steps.get(chain, [])))
            if new:
                pending.append((int(seed), str(mode), chain, rows, new))
        if not pending and not final:
            return
        tracker = self._tracker(name)
        params = recipe_params(folder)
        for seed, mode, chain, rows, new in pending:
            ledger.runs[chain] = tracker.start(
                f"{folder.name} seed {seed} {mode}", ledger.runs.get(chain), group=folder.name,
                tags={"imgsynth_run": folder.name, "seed": str(seed), "mode": mode}, params=params)
            ledger.save()
            for generation in new:
                part = rows[rows["generation"] == generation]
                values = {metric_key(metric, extractor, str(class_name)): float(value)
                          for metric, extractor, class_name, value in
                          zip(part["metric"], part["extractor"], part["class"], part["value"])
                          if pd.notna(value)}  # a row without a value (empty in metrics.csv) is left out
                tracker.log_metrics(generation, values)
                grid = generation_grid(folder, GenerationKey(seed, mode if generation else "base", generation))
                if grid is not None:
                    tracker.log_image("samples", generation, grid)
                ledger.steps.setdefault(chain, []).append(generation)
                ledger.save()
            tracker.finish()
        if final:
            self._log_files(tracker, folder, ledger, params)

    def _log_files(self, tracker: Tracker, folder: RunFolder, ledger: Ledger, params: dict[str, str]) -> None:
        make_dirs_inside(self.run_dir, Path(TRACKING_DIR))
        lineage_path = self.run_dir / TRACKING_DIR / LINEAGE_FILE
        write_json_atomic(lineage_path, run_lineage(folder), indent=2, default=str)
        files = [self.run_dir / f for f in REPORT_FILES if (self.run_dir / f).is_file()] + [lineage_path]
        changed = [p for p in files if ledger.files.get(p.name) != _sha256(p)]
        if not changed:
            return
        ledger.runs[RUN_KEY] = tracker.start(folder.name, ledger.runs.get(RUN_KEY), group=folder.name,
                                             tags={"imgsynth_run": folder.name}, params=params)
        tracker.log_files(changed)
        tracker.finish()
        ledger.files.update({p.name: _sha256(p) for p in changed})
        ledger.save()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def mlflow_uri(recipe_uri: str) -> str | None:
    """MLflow's tracking URI: ``MLFLOW_TRACKING_URI`` (MLflow's convention), else the recipe's, else None
    (the run folder's SQLite store)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or recipe_uri or None
