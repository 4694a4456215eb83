"""Build a run's reports (metrics.csv, dashboard.png, grids.png, class_heatmap.png, report.html),
and compare several runs side by side."""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from imgsynth.imageset import ImageSet, ImageSetError
from imgsynth.reports.figures import class_heatmap, dashboard, sample_grid
from imgsynth.reports.tables import collect_metrics, metric_label, run_modes, write_csv

DOMAIN_NOTE = ("features: 'domain' = penultimate layer of the classifier trained on this run's real data "
               "(the offline default; no CLIP/Inception weights used)")


def _extractor_note(frame: pd.DataFrame) -> str:
    return DOMAIN_NOTE if "domain" in set(frame["extractor"]) else ""


def _samples_of(generation_dir: Path) -> ImageSet | None:
    for name in ("curated", "samples"):
        try:
            return ImageSet.open(generation_dir / name)
        except ImageSetError:
            continue
    return None


def _grid_images(samples: ImageSet, per_class: int = 2) -> list[np.ndarray]:
    """The first ``per_class`` images of every class by image id: the same seeds in every generation."""
    by_name = {Path(r.file_name).stem: i for i, r in enumerate(samples.records)}
    images = []
    for label in samples.classes:
        ids = sorted(k for k in by_name if samples.records[by_name[k]].label == label)[:per_class]
        images.extend(np.asarray(samples.load_image(by_name[k])) for k in ids)
    return images


def grids(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Rows of samples per generation per mode (gen 0 first), same seeds across generations."""
    run_dir = Path(run_dir)
    rows = []
    base = _samples_of(run_dir / "gen_0")
    if base is not None:
        rows.append(("gen 0", _grid_images(base)))
    for mode in run_modes(run_dir):
        for folder in sorted((run_dir / mode).glob("gen_*"), key=lambda p: int(p.name.split("_")[1])):
            samples = _samples_of(folder)
            if samples is not None:
                rows.append((f"{mode} {folder.name.replace('_', ' ')}", _grid_images(samples)))
    return sample_grid(rows, out or run_dir / "grids.png",
                       title="Samples per generation (same seeds in every row)")


def _heatmap_metric(frame: pd.DataFrame) -> tuple[str, str] | None:
    per_class = frame[frame["class"] != "all"]
    for metric in ("fid", "coverage", "recall", "cas_accuracy"):
        match = per_class[per_class["metric"] == metric]
        if not match.empty:
            return metric, sorted(set(match["extractor"]))[0]
    return None


def _image_tag(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.name)}" src="data:image/png;base64,{data}" style="max-width:100%">'


def summary_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Overall metrics (class 'all') by metric and (run, mode, generation), for the HTML report."""
    overall = frame[frame["class"] == "all"].copy()
    overall["metric"] = [metric_label(m, e) for m, e in zip(overall["metric"], overall["extractor"])]
    return overall.pivot_table(index="metric", columns=["run", "mode", "generation"], values="value")


def write_html(frame: pd.DataFrame, pictures: Sequence[Path], path: Path, title: str) -> Path:
    """A self-contained report: pictures inlined as base64, the summary table, the extractor note."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;margin:2em;max-width:1400px}"
             "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px;"
             "text-align:right}</style></head><body>", f"<h1>{html.escape(title)}</h1>"]
    note = _extractor_note(frame)
    if note:
        parts.append(f"<p><em>{html.escape(note)}</em></p>")
    for picture in pictures:
        parts.append(f"<h2>{html.escape(picture.stem)}</h2>{_image_tag(picture)}")
    parts.append("<h2>Metrics (all classes)</h2>")
    parts.append(summary_table(frame).to_html(float_format=lambda v: f"{v:.4g}", na_rep=""))
    parts.append("</body></html>")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(parts), encoding="utf-8")
    os.replace(tmp, path)
    return path


def build_reports(run_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Write every report of one run into ``out_dir`` (default: the run folder)."""
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir else run_dir
    out.mkdir(parents=True, exist_ok=True)
    frame = collect_metrics(run_dir)
    if frame.empty:
        raise ValueError(f"{run_dir}: no finished generation (no metrics.json) to report on")
    written = {"metrics.csv": write_csv(frame, out / "metrics.csv")}
    written["dashboard.png"] = dashboard(frame, out / "dashboard.png", title=f"run {run_dir.name}",
                                         note=_extractor_note(frame))
    written["grids.png"] = grids(run_dir, out / "grids.png")
    chosen = _heatmap_metric(frame)
    if chosen is not None:
        written["class_heatmap.png"] = class_heatmap(frame, out / "class_heatmap.png", *chosen)
    pictures = [p for k, p in written.items() if k.endswith(".png")]
    written["report.html"] = write_html(frame, pictures, out / "report.html", f"imgsynth run {run_dir.name}")
    return written


def compare_runs(run_dirs: Sequence[str | Path], out_dir: str | Path) -> dict[str, Path]:
    """Put several runs on one dashboard (a line per run and mode), with a joint CSV and HTML report."""
    if not run_dirs:
        raise ValueError("compare_runs: no run folders given")
    for run in run_dirs:
        if not (Path(run) / "config.toml").is_file():
            raise FileNotFoundError(f"{run}: not a run folder (no config.toml)")
    names = [Path(r).name for r in run_dirs]
    if len(set(names)) != len(names):
        raise ValueError(f"run folder names must differ to be told apart on the dashboard: {names}")
    frame = pd.concat([collect_metrics(r) for r in run_dirs], ignore_index=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {"metrics.csv": write_csv(frame, out / "metrics.csv")}
    written["dashboard.png"] = dashboard(frame, out / "dashboard.png", title="runs: " + ", ".join(names),
                                         note=_extractor_note(frame))
    written["report.html"] = write_html(frame, [written["dashboard.png"]], out / "report.html",
                                        "imgsynth: " + " vs ".join(names))
    return written
