"""Tidy metric tables gathered from a run folder's per-generation ``metrics.json`` files."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from imgsynth.experiments.run import RunFolder
from imgsynth.atomic_files import atomic_path

COLUMNS = ["run", "seed", "mode", "generation", "class", "metric", "extractor", "value", "ci_low", "ci_high", "n"]
REFERENCE_COLUMNS = ["run", "class", "metric", "extractor", "value"]


def _row_record(row: dict, **fields: object) -> dict:
    return {**fields, "class": row["class_name"], "metric": row["metric"], "extractor": row.get("extractor") or "",
            "value": row["value"], "ci_low": row.get("ci_low"), "ci_high": row.get("ci_high"), "n": row.get("n")}


def collect_metrics(run: str | Path | RunFolder) -> pd.DataFrame:
    """One tidy row per (seed, mode, generation, class, metric, extractor); a seed's generation 0 is
    listed under each of its modes.

    Generation 0 is computed once per seed (it trains on real data in every mode) and listed under each
    mode so every line of the dashboard starts from the same point.
    """
    folder = run if isinstance(run, RunFolder) else RunFolder(run)
    modes = folder.modes
    records = []
    for key, payload in folder.finished():
        for mode in (modes if key.generation == 0 else [key.mode]):
            records.extend(_row_record(row, run=folder.name, seed=key.seed, mode=mode, generation=key.generation)
                           for row in payload["rows"])
    frame = pd.DataFrame.from_records(records, columns=COLUMNS)
    order = {m: i for i, m in enumerate(modes)}
    frame = frame.sort_values(["seed", "mode", "generation", "metric", "extractor", "class"],
                              key=lambda s: s.map(order) if s.name == "mode" else s, kind="stable")
    return frame.reset_index(drop=True)


def collect_reference(run: str | Path | RunFolder) -> pd.DataFrame:
    """The run's real-data reference values (real train vs real test, CAS of the real-data classifier,
    chance accuracy as ``cas_accuracy_chance``); empty for runs made before they were recorded."""
    folder = run if isinstance(run, RunFolder) else RunFolder(run)
    rows = folder.reference().get("rows", [])
    records = [{k: v for k, v in _row_record(row, run=folder.name).items() if k in REFERENCE_COLUMNS} for row in rows]
    return pd.DataFrame.from_records(records, columns=REFERENCE_COLUMNS)


def write_csv(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write atomically (temporary file, then rename)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.12g")  # enough digits to recompute findings from it
    return path


def metric_label(metric: str, extractor: str) -> str:
    """Display name that carries the feature extractor, e.g. ``fid[domain]``."""
    return f"{metric}[{extractor}]" if extractor else metric
