"""PNG figures: the dashboard (one panel per metric, a line per mode), sample grids and the class heat map.

Figures are drawn on ``matplotlib.figure.Figure`` objects, never through pyplot, so importing or calling
this module leaves matplotlib's global state (the backend of a notebook, pyplot's figure list) alone.
Which metrics get panels, in which order, with which arrow, comes from their declarations
(``imgsynth.metrics.registry``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from imgsynth.metrics.registry import HIGHER, declared, direction, panel_order
from imgsynth.reports.tables import metric_label
from imgsynth.atomic_files import atomic_path


def _save(fig: Figure, path: Path) -> Path:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")  # a bare Figure renders with the Agg canvas for PNG
    return path


def panel_title(metric: str, extractor: str) -> str:
    """A panel's title: the metric with its extractor and its declared direction, e.g. ``fid[domain] ↓``."""
    found = declared(metric)
    return f"{metric_label(metric, extractor)} {found.arrow if found else ''}"


def _panels(summary: pd.DataFrame) -> list[tuple[str, str]]:
    """(metric, extractor) panels in reading order, leaving out those that carry no information: a value
    that never changes (e.g. a fixed sample count) is not worth a panel."""
    overall = summary[summary["class"] == "all"]
    several_generations = overall["generation"].nunique() > 1  # with one point every value is "constant"
    keys = []
    for (metric, extractor), group in overall.groupby(["metric", "extractor"], sort=False):
        if group["mean"].round(12).nunique() > 1 or (not several_generations and metric != "sample_count"):
            keys.append((metric, extractor))
    # Declared metrics in registration order; any others (rows of an older run) follow alphabetically.
    order = panel_order()
    return sorted(keys, key=lambda k: (order.index(k[0]) if k[0] in order else len(order), k))


MARKERS = ["o", "s", "^", "D", "v", "P", "X"]
LINESTYLES = ["-", "--", ":", "-."]
RUN_COLORMAPS = ["Blues", "Oranges", "Greens", "Purples", "Reds", "Greys"]
# Reference lines: which real-data value a metric's panel shows, and how it is labelled.
REFERENCE_STYLE = {"real": ("real train vs real test", "#444444", (0, (4, 2))),
                   "chance": ("chance", "#999999", (0, (1, 2)))}


def _series_styles(series_keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], dict]:
    """Colour by mode within one run; with several runs a colour family per run, a line style per mode.

    Markers and line styles differ per mode too, so lines that overlap stay distinguishable.
    """
    runs = list(dict.fromkeys(r for r, _ in series_keys))
    modes = list(dict.fromkeys(m for _, m in series_keys))
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = {}
    for run, mode in series_keys:
        m = modes.index(mode)
        if len(runs) > 1:
            cmap = matplotlib.colormaps[RUN_COLORMAPS[runs.index(run) % len(RUN_COLORMAPS)]]
            color = cmap(0.45 + 0.5 * (m + 1) / (len(modes) + 1))
        else:
            color = colors[m % len(colors)]
        styles[(run, mode)] = {"color": color, "marker": MARKERS[m % len(MARKERS)],
                               "linestyle": LINESTYLES[m % len(LINESTYLES)]}
    return styles


def dashboard(summary: pd.DataFrame, path: str | Path, title: str = "", note: str = "",
              reference: pd.DataFrame | None = None, theory: pd.DataFrame | None = None) -> Path:
    """One panel per (metric, extractor) over all classes; a line per (run, mode) at the mean over seeds,
    a band for the seed interval (``findings.seed_summary``), error bars for the bootstrap-over-samples
    interval where computed, the real-data reference values as horizontal lines, and, where ``theory``
    (``findings.theory_frame``: mode, generation, metric, theory) has a closed form, a dotted line of the
    mode's colour beside its band."""
    path = Path(path)
    panels = _panels(summary)
    if not panels:
        raise ValueError(f"{path}: no metrics to plot")
    cols = min(4, len(panels))
    rows = int(np.ceil(len(panels) / cols))
    fig = Figure(figsize=(4.0 * cols, 3.0 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    overall = summary[summary["class"] == "all"]
    series_keys = list(dict.fromkeys(zip(overall["run"], overall["mode"])))
    multi_run = len({r for r, _ in series_keys}) > 1
    styles = _series_styles(series_keys)
    seeds = int(overall["n_seeds"].max())
    for ax, (metric, extractor) in zip(axes.flat, panels):
        data = overall[(overall["metric"] == metric) & (overall["extractor"] == extractor)]
        for run, mode in series_keys:
            line = data[(data["run"] == run) & (data["mode"] == mode)].sort_values("generation")
            if line.empty:
                continue
            style = styles[(run, mode)]
            ax.plot(line["generation"], line["mean"], ms=4, label=f"{run}/{mode}" if multi_run else mode, **style)
            low, high = line["seed_low"].astype(float), line["seed_high"].astype(float)
            if low.notna().any():
                ax.fill_between(line["generation"], low, high, alpha=0.15, color=style["color"], linewidth=0)
            sample_low, sample_high = line["sample_low"].astype(float), line["sample_high"].astype(float)
            if sample_low.notna().any():
                ax.errorbar(line["generation"], line["mean"], fmt="none", ecolor=style["color"], capsize=2,
                            yerr=[line["mean"] - sample_low, sample_high - line["mean"]], alpha=0.7)
        _reference_lines(ax, reference, metric, extractor)
        _theory_lines(ax, theory, metric, series_keys, styles)
        ax.set_title(panel_title(metric, extractor), fontsize=10)
        ax.set_xlabel("generation")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles, labels = {}, []
    for ax in axes.flat:  # reference lines appear only on some panels: gather every label once
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in handles:
                handles[label] = handle
                labels.append(label)
    fig.legend([handles[k] for k in labels], labels, loc="upper center", ncol=min(6, len(labels)), frameon=False,
               bbox_to_anchor=(0.5, 1.0 + 0.02 / rows))
    band = (f"mean of {seeds} seeds, band: {SEED_BAND}" if seeds > 1
            else "1 seed: no interval over seeds (set [loop] seeds ≥ 2)")
    lines = [t for t in (title, band, note) if t]
    # Each title line needs its own room above the legend, or a multi-line title runs into it.
    fig.suptitle("\n".join(lines), y=1.0 + (0.05 + 0.04 * len(lines)) / rows, fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


SEED_BAND = "95% t-interval over seeds; error bars: bootstrap over samples"


def _reference_lines(ax: Axes, reference: pd.DataFrame | None, metric: str, extractor: str) -> None:
    if reference is None or reference.empty:
        return
    overall = reference[reference["class"] == "all"]
    real = overall[(overall["metric"] == metric) & (overall["extractor"] == extractor)]
    chance = overall[overall["metric"] == f"{metric}_chance"]
    for kind, rows in (("real", real), ("chance", chance)):
        label, color, dashes = REFERENCE_STYLE[kind]
        for value in rows["value"].astype(float).unique()[:1]:  # one line per panel (the first run's)
            ax.axhline(value, color=color, linestyle=dashes, linewidth=1.0, label=label)


THEORY_LABEL = "closed form (theory.json)"


def _theory_lines(ax: Axes, theory: pd.DataFrame | None, metric: str, series_keys: Sequence[tuple[str, str]],
                  styles: dict[tuple[str, str], dict]) -> None:
    """Each mode's closed form on its metric's panel: dotted, thin, in the mode's colour, no markers."""
    if theory is None or theory.empty:
        return
    for run, mode in series_keys:
        line = theory[(theory["metric"] == metric) & (theory["mode"] == mode)].sort_values("generation")
        if not line.empty:
            ax.plot(line["generation"], line["theory"], color=styles[(run, mode)]["color"], linestyle=(0, (1, 1)),
                    linewidth=1.4, label=THEORY_LABEL)


def class_heatmap(frame: pd.DataFrame, path: str | Path, metric: str, extractor: str) -> Path:
    """Per-class change of ``metric`` since generation 0: rows = classes, columns = generations, a panel per mode."""
    path = Path(path)
    data = frame[(frame["metric"] == metric) & (frame["extractor"] == extractor) & (frame["class"] != "all")]
    if data.empty:
        raise ValueError(f"{path}: no per-class rows for {metric_label(metric, extractor)}")
    modes = list(dict.fromkeys(data["mode"]))
    fig = Figure(figsize=(3.2 * len(modes) + 1, 0.35 * data["class"].nunique() + 1.8))
    axes = fig.subplots(1, len(modes), squeeze=False)
    tables = []
    for mode in modes:
        table = data[data["mode"] == mode].pivot_table(index="class", columns="generation", values="value")
        tables.append(table.sub(table[0], axis=0) if 0 in table.columns else table)
    limit = max(float(np.nanmax(np.abs(t.values))) for t in tables) or 1.0
    cmap = "RdBu" if direction(metric) == HIGHER else "RdBu_r"  # blue where the metric got better
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


def sample_grid(rows: Sequence[tuple[str, Sequence[np.ndarray]]], path: str | Path, title: str = "",
                columns: Sequence[str] = ()) -> Path:
    """A row of images per labelled row (e.g. per mode and generation); arrays are uint8 HxW or HxWx3.
    ``columns`` labels the columns from the left (e.g. each class's name over its first image; "" for none)."""
    path = Path(path)
    if not rows:
        raise ValueError(f"{path}: no samples to show")
    width = max(len(images) for _, images in rows)
    fig = Figure(figsize=(0.55 * width + 1.4, 0.6 * len(rows) + 0.6))
    axes = fig.subplots(len(rows), width, squeeze=False)
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
    for c, name in enumerate(list(columns)[:width]):
        if name:
            axes[0, c].set_title(name, fontsize=7, loc="left")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(wspace=0.05, hspace=0.05)
    return _save(fig, path)
