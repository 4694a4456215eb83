"""Tidy metric tables gathered from a run folder's per-generation ``metrics.json`` files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

COLUMNS = ["run", "mode", "generation", "class", "metric", "extractor", "value", "ci_low", "ci_high", "n"]


def run_modes(run_dir: Path) -> list[str]:
    """Loop modes of a run, in recipe order."""
    from imgsynth.experiments.config import load_recipe

    return list(load_recipe(run_dir / "config.toml").loop.modes)


def collect_metrics(run_dir: str | Path) -> pd.DataFrame:
    """One tidy row per (mode, generation, class, metric, extractor); generation 0 repeated for every mode.

    Generation 0 is computed once (it trains on real data in every mode) and listed under each mode so
    every line of the dashboard starts from the same point.
    """
    run_dir = Path(run_dir)
    name = run_dir.name
    modes = run_modes(run_dir)
    records = []
    for path in sorted(run_dir.glob("gen_0/metrics.json")) + sorted(run_dir.glob("*/gen_*/metrics.json")):
        payload = json.loads(path.read_text(encoding="utf-8"))
        generation = int(payload["generation"])
        for mode in (modes if generation == 0 else [payload["mode"]]):
            for row in payload["rows"]:
                records.append({"run": name, "mode": mode, "generation": generation,
                                "class": row["class_name"], "metric": row["metric"],
                                "extractor": row.get("extractor") or "", "value": row["value"],
                                "ci_low": row.get("ci_low"), "ci_high": row.get("ci_high"), "n": row.get("n")})
    frame = pd.DataFrame.from_records(records, columns=COLUMNS)
    order = {m: i for i, m in enumerate(modes)}
    frame = frame.sort_values(["mode", "generation", "metric", "extractor", "class"],
                              key=lambda s: s.map(order) if s.name == "mode" else s, kind="stable")
    return frame.reset_index(drop=True)


def write_csv(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write atomically (temporary file, then rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    frame.to_csv(tmp, index=False, float_format="%.6g")
    os.replace(tmp, path)
    return path


def metric_label(metric: str, extractor: str) -> str:
    """Display name that carries the feature extractor, e.g. ``fid[domain]``."""
    return f"{metric}[{extractor}]" if extractor else metric
