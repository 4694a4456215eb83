"""Build a run's reports (metrics.csv, dashboard.png, grids.png, class_heatmap.png, report.html),
and compare several runs side by side.

Reports read a run only through :class:`imgsynth.experiments.run.RunFolder`; the loop never builds them.
Whoever runs a loop builds its reports afterwards: :func:`run_and_report` does both, as ``imgsynth run`` does.
"""

from __future__ import annotations

import base64
import html
import time
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
import pandas as pd

from imgsynth.experiments.run import GenerationKey, RunFolder
from imgsynth.imageset import ImageSet
from imgsynth.locking import folder_lock
from imgsynth.outputs import claim_report_folder
from imgsynth.reports.figures import class_heatmap, dashboard, sample_grid
from imgsynth.reports import page
from imgsynth.reports.figures import REFERENCE_STYLE
from imgsynth.reports.findings import (ADJUSTMENT, ALPHA, SEED_INTERVAL, TEST_NAME, findings, seed_summary,
                                       theory_frame, verdicts)
from imgsynth.reports.tables import collect_metrics, collect_reference, metric_label, write_csv
from imgsynth.atomic_files import write_text_atomic
from imgsynth.terminal import NORMAL, say

# The files each report writes: a report folder of its own (--out DIR) lists them in its marker, so a rerun
# replaces them and nothing else (imgsynth.outputs.claim_report_folder).
RUN_REPORTS = ("metrics.csv", "findings.csv", "dashboard.png", "grids.png", "class_heatmap.png", "report.html")
COMPARISON_REPORTS = ("metrics.csv", "findings.csv", "dashboard.png", "report.html")

DOMAIN_NOTE = ("features: 'domain' = penultimate layer of the classifier trained on this run's real data "
               "(the offline default; no CLIP/Inception weights used)")


def _extractor_note(frame: pd.DataFrame) -> str:
    return DOMAIN_NOTE if "domain" in set(frame["extractor"]) else ""


def _grid_images(samples: ImageSet, per_class: int = 2) -> list[np.ndarray]:
    """The first ``per_class`` images of every class by image id: the same seeds in every generation."""
    by_name = {Path(r.file_name).stem: i for i, r in enumerate(samples.records)}
    images = []
    for label in samples.classes:
        ids = sorted(k for k in by_name if samples.records[by_name[k]].label == label)[:per_class]
        images.extend(np.asarray(samples.load_image(by_name[k])) for k in ids)
    return images


def _grid_columns(samples: ImageSet, per_class: int = 2) -> list[str]:
    """Column labels for ``_grid_images``' images: each class's name over its first image."""
    labels = []
    for label in samples.classes:
        count = min(per_class, sum(r.label == label for r in samples.records))
        labels.extend([label] + [""] * (count - 1) if count else [])
    return labels


def grids(run: str | Path | RunFolder, out: str | Path | None = None) -> Path:
    """Rows of samples per generation per mode (gen 0 first) of the first seed; the same image ids (class and
    index) in every row, each generation drawn from its own noise."""
    folder = run if isinstance(run, RunFolder) else RunFolder(run)
    seed = folder.seeds[0]
    rows = []
    base = folder.output(GenerationKey(seed, "base", 0))
    if base is not None:
        rows.append(("gen 0", _grid_images(base)))
    for mode in folder.modes:
        for k in range(1, folder.generations):
            samples = folder.output(GenerationKey(seed, mode, k))
            if samples is not None:
                rows.append((f"{mode} gen {k}", _grid_images(samples)))
    columns = _grid_columns(base) if base is not None else []
    return sample_grid(rows, out or folder.root / "grids.png", columns=columns,
                       title=f"Samples per generation, replicate {seed} (each generation draws new noise); "
                             "columns: classes, rows: generation and mode")


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


def summary_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Overall metrics (class 'all'): mean over seeds with its interval and seed count, per run/mode/generation."""
    overall = summary[summary["class"] == "all"].copy()
    overall["metric"] = [metric_label(m, e) for m, e in zip(overall["metric"], overall["extractor"])]
    table = overall[["metric", "run", "mode", "generation", "mean", "seed_low", "seed_high", "n_seeds",
                     "sample_low", "sample_high"]]
    return table.rename(columns={"mean": "value", "seed_low": "ci_low", "seed_high": "ci_high", "n_seeds": "n",
                                 "sample_low": "bootstrap_low", "sample_high": "bootstrap_high"})


def _table_html(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="")


METHOD = (f"Differences between modes are paired by seed; intervals are the {SEED_INTERVAL} of the per-seed "
          f"differences; p-values from the two-sided {TEST_NAME} (scipy.stats.ttest_rel), adjusted for multiple "
          f"comparisons with {ADJUSTMENT}'s method within each family (a run's overall comparisons; each metric's "
          f"per-class comparisons). * and bold mark an adjusted p &lt; {ALPHA}; raw p-values earn no mark. 'auc' "
          "compares the area under each seed's curve over all generations; 'change' a mode's last generation "
          "with its generation 0. Rows 'theory' (exact-theory kinds) compare the mean over seeds with the closed "
          "form in theory.json (one-sample t-test, z-score); they are a family of their own.")


def _findings_html(table: pd.DataFrame, runs: Sequence[str]) -> list[str]:
    if "run" in table.columns and table["run"].nunique() > 1:
        lines = [f"{run}: {line}" for run, part in table.groupby("run", sort=False) for line in verdicts(part)]
    else:
        lines = verdicts(table)
    return page.findings_section(table, lines, METHOD)


def _run_html(folder: RunFolder) -> list[str]:
    """What was run: recipe, seeds, software, machine and wall time per stage."""
    info = folder.info()
    parts = [f"<h2>What was run: {html.escape(folder.name)}</h2>",
             f"<p>seeds {html.escape(str(folder.seeds))}; {info.get('workers', '?')} worker(s), backend "
             f"{html.escape(str(info.get('backend', '?')))}, {info.get('threads_per_task', '?')} torch thread(s) "
             "per task</p>"]
    if info:
        machine = info.get("machine", {})
        parts.append("<p>machine: " + html.escape(f"{machine.get('platform')}, {machine.get('cpus')} CPUs "
                                                  f"({machine.get('processor')}), GPU: {machine.get('gpu') or 'none'}")
                     + "<br>software: " + html.escape(", ".join(f"{k} {v}" for k, v in info.get("software", {}).items()))
                     + "</p>")
        stages = {**info.get("stages_last_invocation", {}),
                  **{f"{k} (sum over generations)": v for k, v in info.get("stage_seconds_all_generations", {}).items()}}
        parts.append(_table_html(pd.DataFrame({"stage": list(stages), "seconds": list(stages.values())})))
    parts.append(f"<details><summary>recipe (resolved)</summary><pre>{html.escape(folder.recipe_text())}"
                 "</pre></details>")
    return parts


def write_html(summary: pd.DataFrame, table: pd.DataFrame, pictures: Sequence[Path], path: Path, title: str,
               folders: Sequence[RunFolder], frame: pd.DataFrame | None = None,
               reference: pd.DataFrame | None = None) -> Path:
    """A self-contained report (one file, works offline: inline style, script, SVG and images): findings first
    (headlines in words, a sortable and filterable table, per class folded), curves and the class heat map
    that open a generation's samples, what was run, the lineage of the sets, the pictures and the legend of
    their reference lines, and the summary table. With one run (``frame`` given) the interactive parts are
    that run's; a comparison of runs keeps to the findings and pictures."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{page.STYLE}</style></head><body>", f"<h1>{html.escape(title)}</h1>"]
    parts.extend(_findings_html(table, [f.name for f in folders]))
    note = DOMAIN_NOTE if "domain" in set(summary["extractor"]) else ""
    if note:
        parts.append(f"<p><em>{html.escape(note)}</em></p>")
    strips: dict[str, Any] = {}
    if frame is not None and len(folders) == 1:
        parts.append(page.curves_svg(summary, reference if reference is not None else pd.DataFrame()))
        chosen = _heatmap_metric(frame)
        if chosen is not None:
            parts.append(page.heatmap_table(frame, *chosen))
        strips = page.sample_strips(folders[0])
    for folder in folders:
        parts.extend(_run_html(folder))
        if frame is not None and len(folders) == 1:
            parts.append(page.lineage_svg(folder))
    for picture in pictures:
        parts.append(f"<h2>{html.escape(picture.stem)}</h2>{_image_tag(picture)}")
    parts.append(page.legend_section(REFERENCE_STYLE))
    parts.append(f"<h2>Metrics (all classes; mean over seeds, ci = {SEED_INTERVAL})</h2>")
    parts.append(_table_html(summary_table(summary)))
    parts.extend([page.DRILL_PANEL, page.samples_script(strips), f"<script>{page.SCRIPT}</script>", "</body></html>"])
    write_text_atomic(path, "\n".join(parts))
    return path


def build_reports(run_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Write every report of one run into ``out_dir`` (default: the run folder)."""
    folder = RunFolder(run_dir)
    folder.check()  # every run file, before anything is written
    out = Path(out_dir) if out_dir else folder.root
    if out.resolve() != folder.root.resolve():  # the run's own reports live in it; any other folder is claimed
        claim_report_folder(out, RUN_REPORTS, [folder.root])
    frame = collect_metrics(folder)
    if frame.empty:
        raise ValueError(f"{folder.root}: no finished generation (no metrics.json) to report on")
    theory = theory_frame(folder.theory())  # closed forms of the exact-theory kinds (empty for the others)
    summary, reference, table = seed_summary(frame), collect_reference(folder), findings(frame, theory)
    out.mkdir(parents=True, exist_ok=True)
    written = {"metrics.csv": write_csv(frame, out / "metrics.csv"),
               "findings.csv": write_csv(table, out / "findings.csv")}
    written["dashboard.png"] = dashboard(summary, out / "dashboard.png", title=f"run {folder.name}",
                                         note=_extractor_note(frame), reference=reference, theory=theory)
    written["grids.png"] = grids(folder, out / "grids.png")
    chosen = _heatmap_metric(frame)
    if chosen is not None:
        written["class_heatmap.png"] = class_heatmap(frame, out / "class_heatmap.png", *chosen)
    pictures = [p for k, p in written.items() if k.endswith(".png")]
    written["report.html"] = write_html(summary, table, pictures, out / "report.html", f"imgsynth run {folder.name}",
                                        [folder], frame=frame, reference=reference)
    return written


def compare_runs(run_dirs: Sequence[str | Path], out_dir: str | Path) -> dict[str, Path]:
    """Put several runs on one dashboard (a colour family per run, a line style per mode, seed bands),
    with a joint CSV, each run's findings, and an HTML report."""
    if not run_dirs:
        raise ValueError("compare_runs: no run folders given")
    folders = [RunFolder(r) for r in run_dirs]
    for folder in folders:
        if not folder.is_run:
            raise FileNotFoundError(f"{folder.root}: not a run folder (no config.toml)")
        folder.check()  # every run file, before anything is written
    names = [f.name for f in folders]
    if len(set(names)) != len(names):
        raise ValueError(f"run folder names must differ to be told apart on the dashboard: {names}")
    claim_report_folder(out_dir, COMPARISON_REPORTS, [f.root for f in folders])
    frames = [collect_metrics(f) for f in folders]
    frame = pd.concat(frames, ignore_index=True)
    table = pd.concat([findings(f).assign(run=name) for f, name in zip(frames, names)], ignore_index=True)
    summary = seed_summary(frame)
    reference = pd.concat([collect_reference(f) for f in folders], ignore_index=True)
    for folder in folders:
        out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {"metrics.csv": write_csv(frame, out / "metrics.csv"),
               "findings.csv": write_csv(table, out / "findings.csv")}
    written["dashboard.png"] = dashboard(summary, out / "dashboard.png", title="runs: " + ", ".join(names),
                                         note=_extractor_note(frame), reference=reference)
    written["report.html"] = write_html(summary, table, [written["dashboard.png"]], out / "report.html",
                                        "imgsynth: " + " vs ".join(names), folders)
    return written


class LoopRun(Protocol):
    """What :func:`run_and_report` needs of a loop (``imgsynth.experiments.loop.Experiment`` is one)."""

    @property
    def run_dir(self) -> Path: ...

    def run(self) -> Path: ...


def run_and_report(experiment: LoopRun) -> Path:
    """Run (or finish) a loop, then write its reports into its folder; returns the run folder.

    The folder stays locked from the run's start to the last report, so a second writer cannot start
    in between (the lock is re-entrant within this process, so the run's own lock nests in it).
    """
    started = time.perf_counter()
    with folder_lock(experiment.run_dir):
        folder = experiment.run()
        build_reports(folder)
    say(f"finished in {time.perf_counter() - started:.1f}s; dashboard: {folder / 'dashboard.png'}", level=NORMAL)
    return folder


def read_findings(path: str | Path) -> pd.DataFrame:
    """A ``findings.csv`` as the table :func:`imgsynth.reports.findings.findings` made (extractor "" not NaN)."""
    table = pd.read_csv(path, keep_default_na=True)
    if "extractor" in table.columns:
        table["extractor"] = table["extractor"].fillna("")
    return table
