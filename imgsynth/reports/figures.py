"""PNG figures: the dashboard (one panel per metric, a line per mode), sample grids and the class heat map."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from imgsynth.reports.tables import metric_label  # noqa: E402

# Panels in reading order; metrics not listed here follow alphabetically.
PANEL_ORDER = ["fid", "kid", "precision", "recall", "density", "coverage", "diversity", "clip_diversity",
               "vendi", "clip_score", "cmmd", "cas_accuracy", "cas_macro_f1", "train_size"]
# Which way is better, for the panel titles.
LOWER_IS_BETTER = {"fid", "kid", "cmmd"}
HIGHER_IS_BETTER = {"precision", "recall", "density", "coverage", "diversity", "clip_diversity", "vendi",
                    "clip_score", "cas_accuracy", "cas_macro_f1"}


def _save(fig: plt.Figure, path: Path) -> Path:
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _panels(frame: pd.DataFrame) -> list[tuple[str, str]]:
    overall = frame[frame["class"] == "all"]
    keys = sorted({(m, e) for m, e in zip(overall["metric"], overall["extractor"])},
                  key=lambda k: (PANEL_ORDER.index(k[0]) if k[0] in PANEL_ORDER else len(PANEL_ORDER), k))
    return keys


def dashboard(frame: pd.DataFrame, path: str | Path, title: str = "", note: str = "") -> Path:
    """One panel per (metric, extractor) over all classes; a line per (run, mode); CI bands where present."""
    path = Path(path)
    panels = _panels(frame)
    if not panels:
        raise ValueError(f"{path}: no metrics to plot")
    cols = min(4, len(panels))
    rows = int(np.ceil(len(panels) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.0 * cols, 3.0 * rows), squeeze=False)
    overall = frame[frame["class"] == "all"]
    series_keys = list(dict.fromkeys(zip(overall["run"], overall["mode"])))
    multi_run = len({r for r, _ in series_keys}) > 1
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (metric, extractor) in zip(axes.flat, panels):
        data = overall[(overall["metric"] == metric) & (overall["extractor"] == extractor)]
        for i, (run, mode) in enumerate(series_keys):
            line = data[(data["run"] == run) & (data["mode"] == mode)].sort_values("generation")
            if line.empty:
                continue
            label = f"{run}/{mode}" if multi_run else mode
            color = colors[i % len(colors)]
            ax.plot(line["generation"], line["value"], marker="o", ms=3, label=label, color=color)
            low, high = line["ci_low"].astype(float), line["ci_high"].astype(float)
            if low.notna().any():
                ax.fill_between(line["generation"], low, high, alpha=0.2, color=color)
        arrow = "↑" if metric in HIGHER_IS_BETTER else ("↓" if metric in LOWER_IS_BETTER else "")
        ax.set_title(f"{metric_label(metric, extractor)} {arrow}", fontsize=10)
        ax.set_xlabel("generation")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=min(6, len(labels)), frameon=False,
               bbox_to_anchor=(0.5, 1.0 + 0.02 / rows))
    if title or note:
        lines = [t for t in (title, note) if t]
        # Each title line needs its own room above the legend, or a two-line title runs into it.
        fig.suptitle("\n".join(lines), y=1.0 + (0.05 + 0.04 * len(lines)) / rows, fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def class_heatmap(frame: pd.DataFrame, path: str | Path, metric: str, extractor: str) -> Path:
    """Per-class change of ``metric`` since generation 0: rows = classes, columns = generations, a panel per mode."""
    path = Path(path)
    data = frame[(frame["metric"] == metric) & (frame["extractor"] == extractor) & (frame["class"] != "all")]
    if data.empty:
        raise ValueError(f"{path}: no per-class rows for {metric_label(metric, extractor)}")
    modes = list(dict.fromkeys(data["mode"]))
    fig, axes = plt.subplots(1, len(modes), figsize=(3.2 * len(modes) + 1, 0.35 * data["class"].nunique() + 1.8),
                             squeeze=False)
    tables = []
    for mode in modes:
        table = data[data["mode"] == mode].pivot_table(index="class", columns="generation", values="value")
        tables.append(table.sub(table[0], axis=0) if 0 in table.columns else table)
    limit = max(float(np.nanmax(np.abs(t.values))) for t in tables) or 1.0
    cmap = "RdBu" if metric in HIGHER_IS_BETTER else "RdBu_r"
    image = None
    for ax, mode, table in zip(axes.flat, modes, tables):
        image = ax.imshow(table.values, cmap=cmap, vmin=-limit, vmax=limit, aspect="auto")
        ax.set_title(mode, fontsize=10)
        ax.set_xticks(range(len(table.columns)), [str(c) for c in table.columns])
        ax.set_yticks(range(len(table.index)), list(table.index))
        ax.set_xlabel("generation")
    fig.colorbar(image, ax=list(axes.flat), shrink=0.8, label=f"Δ {metric_label(metric, extractor)} vs gen 0")
    fig.suptitle(f"Which classes degrade first: change in {metric_label(metric, extractor)} per class", fontsize=11, y=1.06)
    return _save(fig, path)


def sample_grid(rows: Sequence[tuple[str, Sequence[np.ndarray]]], path: str | Path, title: str = "") -> Path:
    """A row of images per labelled row (e.g. per mode and generation); arrays are uint8 HxW or HxWx3."""
    path = Path(path)
    if not rows:
        raise ValueError(f"{path}: no samples to show")
    width = max(len(images) for _, images in rows)
    fig, axes = plt.subplots(len(rows), width, figsize=(0.55 * width + 1.4, 0.6 * len(rows) + 0.6), squeeze=False)
    for r, (label, images) in enumerate(rows):
        for c in range(width):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c < len(images):
                image = images[c]
                ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=255)
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(wspace=0.05, hspace=0.05)
    return _save(fig, path)
