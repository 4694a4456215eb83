"""The interactive parts of ``report.html``, each a piece of self-contained HTML: the findings table (sorts and
filters in the page), curves and the class heat map whose points and cells open that generation's samples,
the drawn lineage of the run's sets, and the legend of reference lines.

Everything is inline (a small script, inline SVG, images as data URIs), so the page works offline from one
file. Samples are **embedded thumbnails**, not links: a link into the run folder breaks when the report is
mailed or written to another folder (``imgsynth dashboard RUN --out DIR``). The size stays bounded: the first
seed only, ``THUMBNAILS`` images per (mode, generation, class) as one strip, each image scaled down to at
most ``THUMBNAIL_PIXELS`` pixels a side, each strip stored once; for the smoke recipe (7 generations of the
first seed × 10 classes of 16-px digits) that is 70 strips, about 100 KB of the page.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from imgsynth.experiments.run import GenerationKey, RunFolder
from imgsynth.imageset import ImageSet, ImageSetError
from imgsynth.metrics.registry import declared, headline_metrics
from imgsynth.reports.findings import ADJUSTMENT, ALPHA, significant
from imgsynth.reports.tables import metric_label

THUMBNAILS = 4
THUMBNAIL_PIXELS = 48

STYLE = """
body{font-family:sans-serif;margin:2em;max-width:1400px}
table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}
table.findings th{cursor:pointer;background:#f4f4f4;user-select:none}
table.findings th[aria-sort=ascending]::after{content:" \\25B2"}table.findings th[aria-sort=descending]::after{content:" \\25BC"}
td.text,th.text{text-align:left}tr.significant td{font-weight:bold}
.heat td[data-drill],svg [data-drill]{cursor:pointer}.heat td{min-width:2.5em}
#drill{position:sticky;bottom:0;background:#fffbe6;border:1px solid #e0c060;padding:.5em 1em;margin-top:1em}
#drill img{image-rendering:pixelated;height:96px;margin:4px;border:1px solid #ccc}
.legend dt{font-weight:bold}.lineage text{font-size:10px;font-family:monospace}
"""

SCRIPT = """
(function(){
function cellValue(row,i){var c=row.cells[i];var v=c.getAttribute('data-value');if(v===null)v=c.textContent;
 var n=parseFloat(v);return isNaN(n)?v.toLowerCase():n;}
function compare(a,b){if(typeof a==='number'&&typeof b==='number')return a-b;if(typeof a==='number')return -1;
 if(typeof b==='number')return 1;return a<b?-1:a>b?1:0;}
document.querySelectorAll('table.findings').forEach(function(table){
 table.querySelectorAll('thead th').forEach(function(th,i){th.addEventListener('click',function(){
  var up=th.getAttribute('aria-sort')!=='ascending';
  table.querySelectorAll('thead th').forEach(function(o){o.removeAttribute('aria-sort');});
  th.setAttribute('aria-sort',up?'ascending':'descending');
  var body=table.tBodies[0];var rows=Array.prototype.slice.call(body.rows);
  rows.sort(function(a,b){var r=compare(cellValue(a,i),cellValue(b,i));return up?r:-r;});
  rows.forEach(function(r){body.appendChild(r);});});});});
document.querySelectorAll('input.filter').forEach(function(input){input.addEventListener('input',function(){
 var table=document.getElementById(input.getAttribute('data-table'));var words=input.value.toLowerCase().split(/\\s+/);
 Array.prototype.forEach.call(table.tBodies[0].rows,function(row){var text=row.textContent.toLowerCase();
  row.hidden=!words.every(function(w){return text.indexOf(w)>=0;});});});});
var samples=JSON.parse(document.getElementById('samples').textContent||'{}');
var images=samples.images||[],cells=samples.cells||{};
var panel=document.getElementById('drill');
function show(key,title){var items=cells[key]||[];panel.hidden=false;
 panel.querySelector('h3').textContent=title;var box=panel.querySelector('.images');box.innerHTML='';
 if(!items.length){box.textContent='No samples kept for this cell.';}
 items.forEach(function(item){var fig=document.createElement('figure');fig.style.display='inline-block';
  var img=document.createElement('img');img.src=images[item[0]];img.alt=item[1];fig.appendChild(img);
  var cap=document.createElement('figcaption');cap.textContent=item[1];fig.appendChild(cap);box.appendChild(fig);});
 panel.scrollIntoView({block:'nearest'});}
document.querySelectorAll('[data-drill]').forEach(function(el){el.addEventListener('click',function(){
 show(el.getAttribute('data-drill'),el.getAttribute('data-title')||el.getAttribute('data-drill'));});});
panel.querySelector('button').addEventListener('click',function(){panel.hidden=true;});
})();
"""


def drill_key(mode: str, generation: int, class_name: str) -> str:
    """The key of one (mode, generation, class) cell's samples ("all": every class)."""
    return f"{mode}|{generation}|{class_name}"


# ------------------------------------------------------------------------------------------- findings table

def _number(value: Any, digits: str = ".4g") -> tuple[str, str]:
    """(text, sort value) of a number; NaN shows empty and sorts last."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "", ""
    if math.isnan(number):
        return "", ""
    return format(number, digits), repr(number)


FINDING_HEADERS = ["metric", "class", "comparison", "statistic", "generation", "difference", "95% interval", "p",
                   f"p ({ADJUSTMENT})", "n seeds", "family"]


def findings_table(table: pd.DataFrame, table_id: str, caption: str) -> str:
    """A sortable (click a header), filterable (type in the box) table of findings; rows significant after the
    adjustment are bold and marked *."""
    head = "".join(f"<th class='{'text' if h in ('metric', 'class', 'comparison', 'statistic', 'family') else ''}'>"
                   f"{html.escape(h)}</th>" for h in FINDING_HEADERS)
    rows = []
    for _, row in table.iterrows():
        extractor = row["extractor"] if isinstance(row["extractor"], str) else ""
        mark = significant(row)
        difference = _number(row["mean_difference"])
        low, high = _number(row["ci_low"]), _number(row["ci_high"])
        interval = f"[{low[0]}, {high[0]}]" if low[0] else ""
        p, adjusted = _number(row["p_value"], ".2g"), _number(row.get("p_adjusted"), ".2g")
        cells = [("text", html.escape(metric_label(row["metric"], extractor)), None),
                 ("text", html.escape(str(row["class"])), None),
                 ("text", html.escape(str(row["comparison"])), None),
                 ("text", html.escape(str(row["statistic"])), None),
                 ("", str(row["generation"]), str(row["generation"])),
                 ("", difference[0], difference[1]), ("", interval, low[1]),
                 ("", p[0], p[1]), ("", adjusted[0] + (" *" if mark else ""), adjusted[1]),
                 ("", str(row["n_seeds"]), str(row["n_seeds"])),
                 ("text", html.escape(str(row.get("family", ""))), None)]
        tds = "".join(f"<td class='{cls}'" + (f" data-value='{html.escape(value)}'" if value is not None else "")
                      + f">{text}</td>" for cls, text, value in cells)
        rows.append(f"<tr class='{'significant' if mark else ''}'>{tds}</tr>")
    return (f"<p><label>Filter: <input class='filter' data-table='{table_id}' type='search' "
            f"placeholder='e.g. fid replace'></label> {html.escape(caption)}</p>"
            f"<table class='findings' id='{table_id}'><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def findings_section(table: pd.DataFrame, headlines: Sequence[str], method: str) -> list[str]:
    """Headline findings first (in words), the overall comparisons as a table, the per-class ones folded."""
    parts = ["<h2>Findings</h2>", f"<p>{method}</p>"]
    if headlines:
        parts.append("<ol class='headlines'>" + "".join(f"<li>{html.escape(h)}</li>" for h in headlines) + "</ol>")
    if table.empty:
        parts.append("<p>No comparisons (one mode, or no finished generation).</p>")
        return parts
    headline = headline_metrics()
    overall = table[table["class"] == "all"].copy()
    overall["_rank"] = [headline.index(m) if m in headline else len(headline) for m in overall["metric"]]
    overall = overall.sort_values("_rank", kind="stable").drop(columns="_rank")
    parts.append(findings_table(overall, "findings-overall",
                                f"{len(overall)} overall comparisons, headline metrics first; click a header "
                                f"to sort. * = {ADJUSTMENT}-adjusted p < {ALPHA}."))
    per_class = table[table["class"] != "all"]
    if not per_class.empty:
        parts.append(f"<details><summary>Per class ({len(per_class)} comparisons)</summary>"
                     + findings_table(per_class, "findings-per-class", "each metric's per-class rows are one "
                                      "family of the adjustment") + "</details>")
    return parts


# ------------------------------------------------------------------------------------------- samples

def _png_uri(image: np.ndarray) -> str:
    from PIL import Image

    picture = Image.fromarray(image)
    picture.thumbnail((THUMBNAIL_PIXELS * THUMBNAILS, THUMBNAIL_PIXELS))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _first_images(samples: ImageSet) -> dict[str, list[int]]:
    """Per class, the indices of its first ``THUMBNAILS`` images by image id (the same ids in every generation)."""
    by_class: dict[str, list[tuple[str, int]]] = {}
    for i, record in enumerate(samples.records):
        by_class.setdefault(record.label, []).append((Path(record.file_name).stem, i))
    return {label: [i for _, i in sorted(items)[:THUMBNAILS]] for label, items in by_class.items()}


def _strip(samples: ImageSet, indices: Sequence[int]) -> np.ndarray | None:
    """The images at ``indices`` side by side (padded to one height)."""
    images = [np.asarray(samples.load_image(i)) for i in indices]
    if not images:
        return None
    height = max(im.shape[0] for im in images)
    images = [np.pad(im, [(0, height - im.shape[0])] + [(0, 0)] * (im.ndim - 1)) for im in images]
    if len({im.ndim for im in images}) > 1:
        images = [im if im.ndim == 3 else np.repeat(im[..., None], 3, axis=2) for im in images]
    return np.concatenate(images, axis=1)


def sample_strips(folder: RunFolder) -> dict[str, Any]:
    """For every finished (mode, generation) of the first seed: per class one strip of thumbnails, and under
    class "all" one strip per class (the drill-down of a curve point). Each strip is stored once
    (``images``); ``cells`` maps a drill key to [image index, class] pairs (generation 0 is every mode's)."""
    seed = folder.seeds[0]
    images: list[str] = []
    found: dict[str, list[tuple[int, str]]] = {}
    keys = [("base", 0)] + [(m, k) for m in folder.modes for k in range(1, folder.generations)]
    for mode, generation in keys:
        try:
            samples = folder.output(GenerationKey(seed, mode, generation))
        except (ImageSetError, OSError, ValueError):
            samples = None
        if samples is None:
            continue
        modes = folder.modes if generation == 0 else [mode]
        every = []
        first = _first_images(samples)
        for label in samples.display_order:
            strip = _strip(samples, first.get(label, []))
            if strip is None:
                continue
            images.append(_png_uri(strip))
            item = (len(images) - 1, str(label))
            every.append(item)
            for shown in modes:
                found[drill_key(shown, generation, label)] = [item]
        for shown in modes:
            found[drill_key(shown, generation, "all")] = every
    return {"images": images, "cells": found}


def samples_script(strips: dict[str, Any]) -> str:
    """The thumbnails as a JSON data block the script reads (``</`` escaped so it cannot end the block)."""
    return ("<script type='application/json' id='samples'>" + json.dumps(strips).replace("</", "<\\/")
            + "</script>")


DRILL_PANEL = ("<div id='drill' hidden><button type='button' style='float:right'>close</button><h3></h3>"
               "<div class='images'></div><p><small>First seed; the first images of each class by image id "
               "(the same ids in every generation, each generation drawn from its own noise).</small></p></div>")


# ------------------------------------------------------------------------------------------- heat map, curves

def _colour(value: float, limit: float, better_when_higher: bool | None) -> str:
    """Blue where the metric got better, red where it got worse (grey shades when it has no direction)."""
    if not limit or math.isnan(value):
        return "#ffffff"
    share = max(-1.0, min(1.0, value / limit))
    if better_when_higher is None:
        level = int(255 * (1 - 0.5 * abs(share)))
        return f"rgb({level},{level},{level})"
    better = share if better_when_higher else -share
    if better >= 0:
        return f"rgb({int(255 * (1 - better))},{int(255 * (1 - 0.5 * better))},255)"
    return f"rgb(255,{int(255 * (1 + better))},{int(255 * (1 + better))})"


def heatmap_table(frame: pd.DataFrame, metric: str, extractor: str) -> str:
    """The class heat map as HTML: per mode a table, classes on rows, generations on columns, the change since
    generation 0 in each cell; a cell opens that generation's samples of that class."""
    data = frame[(frame["metric"] == metric) & (frame["extractor"] == extractor) & (frame["class"] != "all")]
    if data.empty:
        return ""
    found = declared(metric)
    higher = None if found is None or found.direction not in ("higher", "lower") else found.direction == "higher"
    label = metric_label(metric, extractor)
    parts = [f"<h2>Class heat map: change in {html.escape(label)} since generation 0 (mean over seeds)</h2>",
             "<p>Click a cell to see that generation's samples of that class. Blue: better, red: worse.</p>"]
    for mode in dict.fromkeys(data["mode"]):
        table = data[data["mode"] == mode].pivot_table(index="class", columns="generation", values="value")
        change = table.sub(table[0], axis=0) if 0 in table.columns else table
        limit = float(np.nanmax(np.abs(change.values))) if change.size else 0.0
        head = "".join(f"<th>gen {g}</th>" for g in change.columns)
        rows = []
        for class_name, values in change.iterrows():
            cells = "".join(
                f"<td style='background:{_colour(float(v), limit, higher)}' "
                f"data-drill='{html.escape(drill_key(mode, int(g), str(class_name)))}' "
                f"data-title='{html.escape(f'{mode}, generation {g}, class {class_name}')}'>{float(v):+.3g}</td>"
                for g, v in values.items())
            rows.append(f"<tr><th class='text'>{html.escape(str(class_name))}</th>{cells}</tr>")
        parts.append(f"<h3>{html.escape(mode)}</h3><table class='heat'><thead><tr><th class='text'>class</th>{head}"
                     f"</tr></thead><tbody>{''.join(rows)}</tbody></table>")
    return "".join(parts)


PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"]


def curves_svg(summary: pd.DataFrame, reference: pd.DataFrame) -> str:
    """An SVG panel per headline metric (mean over seeds per mode and generation, real-data reference dashed);
    each point opens that generation's samples."""
    overall = summary[summary["class"] == "all"]
    panels = []
    for metric in headline_metrics():
        for extractor in dict.fromkeys(overall[overall["metric"] == metric]["extractor"]):
            data = overall[(overall["metric"] == metric) & (overall["extractor"] == extractor)]
            if data.empty or data["generation"].nunique() < 2:
                continue
            panels.append(_curve_panel(data, reference, metric, extractor))
    if not panels:
        return ""
    modes = list(dict.fromkeys(overall["mode"]))
    key = " ".join(f"<span style='color:{PALETTE[i % len(PALETTE)]}'>&#9679; {html.escape(str(m))}</span>"
                   for i, m in enumerate(modes))
    return ("<h2>Curves (click a point for that generation's samples)</h2>"
            f"<p>{key} <span style='color:#444'>- - - real train vs real test</span> (mean over seeds)</p>"
            "<div class='curves'>" + "".join(panels) + "</div>")


def _curve_panel(data: pd.DataFrame, reference: pd.DataFrame, metric: str, extractor: str) -> str:
    width, height, pad = 300, 190, 34
    values = data["mean"].astype(float)
    real = pd.Series(dtype=float)
    if reference is not None and not reference.empty:
        real = reference[(reference["class"] == "all") & (reference["metric"] == metric)
                         & (reference["extractor"] == extractor)]["value"].astype(float)
    low = float(np.nanmin(pd.concat([values, real]))) if len(values) else 0.0
    high = float(np.nanmax(pd.concat([values, real]))) if len(values) else 1.0
    if high == low:
        high, low = high + 1, low - 1
    last = max(1, int(data["generation"].max()))

    def x(g: float) -> float:
        return pad + (width - 2 * pad) * g / last

    def y(v: float) -> float:
        return height - pad - (height - 2 * pad) * (v - low) / (high - low)

    found = declared(metric)
    label = f"{metric_label(metric, extractor)} {found.arrow if found else ''}"
    parts = [f"<svg class='curve' width='{width}' height='{height}' role='img' aria-label='{html.escape(label)}'>",
             f"<text x='{pad}' y='14' font-size='12'>{html.escape(label)}</text>",
             f"<line x1='{pad}' y1='{height - pad}' x2='{width - pad}' y2='{height - pad}' stroke='#999'/>",
             f"<text x='{width / 2}' y='{height - 6}' font-size='10' text-anchor='middle'>generation</text>",
             f"<text x='4' y='{y(high) + 4}' font-size='9'>{high:.3g}</text>",
             f"<text x='4' y='{y(low) + 4}' font-size='9'>{low:.3g}</text>"]
    for value in real.unique()[:1]:
        parts.append(f"<line x1='{pad}' y1='{y(value):.1f}' x2='{width - pad}' y2='{y(value):.1f}' stroke='#444' "
                     "stroke-dasharray='4 2'><title>real train vs real test</title></line>")
    for i, mode in enumerate(dict.fromkeys(data["mode"])):
        colour = PALETTE[i % len(PALETTE)]
        line = data[data["mode"] == mode].sort_values("generation")
        points = [(int(g), float(v)) for g, v in zip(line["generation"], line["mean"]) if not math.isnan(float(v))]
        path = " ".join(f"{x(g):.1f},{y(v):.1f}" for g, v in points)
        parts.append(f"<polyline points='{path}' fill='none' stroke='{colour}' stroke-width='1.5'/>")
        for g, v in points:
            key = drill_key(str(mode), g, "all")
            parts.append(f"<circle class='point' cx='{x(g):.1f}' cy='{y(v):.1f}' r='4' fill='{colour}' "
                         f"data-drill='{html.escape(key)}' data-title='{html.escape(f'{mode}, generation {g}')}'>"
                         f"<title>{html.escape(f'{mode}, gen {g}: {v:.4g}')}</title></circle>")
    parts.append("</svg>")
    return "".join(parts)


# ------------------------------------------------------------------------------------------- legend

REFERENCE_EXPLAINED = {
    "real": "real train vs real test: the same metric computed between the real training and the real test "
            "data, what a perfect generator would reach (a floor for distances such as FID, a ceiling for "
            "recall or coverage); drawn dashed, dark grey.",
    "chance": "chance: the accuracy of guessing a class at random (1 / number of classes), under the "
              "classification accuracy score panels; dotted, light grey.",
    "theory": "theory: where the generator kind has a closed form for recursive refitting (the gaussian kind "
              "refitted by maximum likelihood: E[σ²ₖ] = σ²₀·((n − 1)/n)ᵏ), the expected curve under that "
              "theory, to compare the measured one with.",
}


def legend_section(styles: Iterable[str]) -> str:
    """What each reference and theory line in the figures means (those the figures draw, in their order)."""
    items = [f"<dt>{html.escape(kind)}</dt><dd>{html.escape(REFERENCE_EXPLAINED.get(kind, kind))}</dd>"
             for kind in dict.fromkeys([*styles, "theory"])]
    return ("<h2>Legend: reference and theory lines</h2><dl class='legend'>" + "".join(items) + "</dl>"
            "<p>Bands around a curve are the 95% t-interval over seeds; error bars the bootstrap interval over "
            "samples, where computed. A line is drawn only where the run has its values.</p>")


# ------------------------------------------------------------------------------------------- lineage

def _manifest(path: Path) -> dict[str, Any] | None:
    try:
        return ImageSet.open(path).manifest
    except (ImageSetError, OSError, ValueError):
        return None


def _license_name(manifest: dict[str, Any]) -> str:
    from imgsynth.provenance.licenses import license_record

    return str(license_record(manifest.get("license")).get("name", "unknown"))


def lineage_nodes(folder: RunFolder) -> tuple[list[dict[str, Any]], list[tuple[str, str, str]]]:
    """The run's sets as nodes (id, label, license, path, column, row) and edges (from, to, kind): sources →
    real train → each seed's generation 0 → each chain's generations; a chain's training set that draws on the
    real data too gets a dashed edge from it."""
    nodes: dict[str, dict[str, Any]] = {}
    edges: list[tuple[str, str, str]] = []

    def node(key: str, label: str, manifest: dict[str, Any] | None, column: int, row: int, path: str) -> str:
        if key not in nodes:
            nodes[key] = {"key": key, "label": label, "license": _license_name(manifest or {}), "path": path,
                          "column": column, "row": row, "kind": (manifest or {}).get("kind", "source")}
        return key

    real = _manifest(folder.real_dir / "train")
    if real is None:
        return [], []
    real_key = node(real["id"], "real train", real, 1, 0, "real/train")
    for entry in real.get("parents") or []:
        source = str(entry.get("id", "source"))
        nodes.setdefault(source, {"key": source, "label": source.removeprefix("source:"), "path": str(
            entry.get("path", "")), "column": 0, "row": 0, "kind": "source",
            "license": str((entry.get("license") or {}).get("name", "unknown"))
            if isinstance(entry.get("license"), dict) else str(entry.get("license") or "unknown")})
        edges.append((source, real_key, "solid"))
    row = 0
    for seed in folder.seeds:
        base = folder.output(GenerationKey(seed, "base", 0))
        if base is None:
            row += len(folder.modes)
            continue
        base_key = node(base.id, f"seed {seed} gen 0", base.manifest, 2, row, os.path.relpath(base.root, folder.root))
        edges.append((real_key, base_key, "solid"))
        for mode in folder.modes:
            previous = base_key
            for k in range(1, folder.generations):
                out = folder.output(GenerationKey(seed, mode, k))
                if out is None:
                    break
                key = node(out.id, f"{mode} gen {k}", out.manifest, 2 + k, row, os.path.relpath(out.root, folder.root))
                edges.append((previous, key, "solid"))
                train = _manifest(folder.generation_dir(GenerationKey(seed, mode, k)) / "train_set")
                parents = {str(p.get("id")) for p in (train or {}).get("parents") or []}
                if real_key in parents or (train or {}).get("kind") == "real":
                    edges.append((real_key, key, "dashed"))
                previous = key
            row += 1
    return list(nodes.values()), edges


def lineage_svg(folder: RunFolder) -> str:
    """The lineage drawn (inline SVG; hover a node for its full id, path and license) with a table of ids."""
    nodes, edges = lineage_nodes(folder)
    if not nodes:
        return ""
    box_w, box_h, gap_x, gap_y = 150, 30, 26, 12
    rows = max(n["row"] for n in nodes) + 1
    columns = max(n["column"] for n in nodes) + 1
    width, height = columns * (box_w + gap_x) + 10, rows * (box_h + gap_y) + 10
    where = {}
    for n in nodes:
        # sources and the real set sit in the middle of the rows they feed
        row = (rows - 1) / 2 if n["column"] < 2 else n["row"]
        where[n["key"]] = (5 + n["column"] * (box_w + gap_x), 5 + row * (box_h + gap_y))
    parts = [f"<svg class='lineage' width='{width}' height='{height}' role='img' aria-label='lineage of the run'>",
             "<defs><marker id='arrow' viewBox='0 0 10 10' refX='10' refY='5' markerWidth='6' markerHeight='6' "
             "orient='auto-start-reverse'><path d='M0,0 L10,5 L0,10 z' fill='#666'/></marker></defs>"]
    for start, end, style in edges:
        (x1, y1), (x2, y2) = where[start], where[end]
        dash = " stroke-dasharray='4 3'" if style == "dashed" else ""
        parts.append(f"<line x1='{x1 + box_w}' y1='{y1 + box_h / 2}' x2='{x2}' y2='{y2 + box_h / 2}' stroke='#666'"
                     f"{dash} marker-end='url(#arrow)'/>")
    fills = {"source": "#e8f0ff", "real": "#e6f5e6", "generated": "#fff4e0", "curated": "#f3e8ff"}
    for n in nodes:
        x, y = where[n["key"]]
        title = f"{n['key']}\n{n['path']}\nlicense: {n['license']}"
        parts.append(f"<g><title>{html.escape(title)}</title><rect x='{x}' y='{y}' width='{box_w}' height='{box_h}' "
                     f"rx='4' fill='{fills.get(n['kind'], '#eee')}' stroke='#888'/>"
                     f"<text x='{x + 4}' y='{y + 12}'>{html.escape(n['label'][:20])}</text>"
                     f"<text x='{x + 4}' y='{y + 25}' fill='#555'>{html.escape(n['key'].removeprefix('source:')[:10])}"
                     f" {html.escape(n['license'][:12])}</text></g>")
    parts.append("</svg>")
    table = pd.DataFrame([{"set": n["label"], "id": n["key"], "kind": n["kind"], "license": n["license"],
                           "path": n["path"]} for n in nodes])
    return ("<h2>Lineage of the run's sets</h2><p>Real data → generation 0 of each seed → each chain's generations "
            "(one row per seed and mode). A dashed arrow: that generation also trained on the real data. Hover a "
            "box for its full id, path and license; <code>imgsynth lineage SET</code> prints any set's whole "
            "lineage.</p><div style='overflow-x:auto'>" + "".join(parts) + "</div><details><summary>Set ids and "
            f"licenses ({len(nodes)} sets)</summary>" + table.to_html(index=False, classes="lineage-table")
            + "</details>")
