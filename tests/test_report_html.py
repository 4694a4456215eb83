"""report.html in a real browser (headless Chromium, driven by playwright; no browser download): the findings
table sorts and filters, a heat-map cell and a curve point open that generation's samples; offline, one file."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from imgsynth.experiments.config import dump_recipe, recipe_from_dict
from imgsynth.imageset import ImageSetWriter, Sample
from imgsynth.reports.build import build_reports

CLASSES = ["cat", "dog"]
MODES = ("replace", "accumulate")
SEEDS = (0, 1, 2)


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _samples(path, shade):
    writer = ImageSetWriter(path, CLASSES, kind="generated")
    writer.write_all(Sample(Image.fromarray(np.full((8, 8), shade + 30 * CLASSES.index(label) + i, np.uint8)),
                            label, seed=i, image_id=f"{label}-{i:06d}") for label in CLASSES for i in range(3))
    return writer.finalize()


def _run(root):
    """Three seeds, two modes, three generations; fid grows faster under replace (values known by construction)."""
    run = root / "fake"
    recipe = recipe_from_dict({"name": "fake", "loop": {"modes": list(MODES), "generations": 3,
                                                         "seeds": list(SEEDS)}})
    run.mkdir()
    (run / "config.toml").write_text(dump_recipe(recipe))
    for seed in SEEDS:
        for mode in MODES:
            for k in range(3):
                if k == 0 and mode != MODES[0]:
                    continue
                folder = run / f"seed_{seed}" / ("gen_0" if k == 0 else f"{mode}/gen_{k}")
                _samples(folder / "samples", shade=40 * k)
                rows = [{"metric": "fid", "class_name": c, "extractor": "pixels", "n": 3, "ci_low": None,
                         "ci_high": None, "value": k * (5.0 if mode == "replace" else 1.0) * (1 + 0.05 * seed)
                         + (2.0 if c == "dog" else 0.0)} for c in [*CLASSES, "all"]]
                (folder / "metrics.json").write_text(json.dumps({"rows": rows, "stage_seconds": {}}))
    return run


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    executable = _chromium()
    if executable is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium); the report's browser test needs one")
    from playwright.sync_api import sync_playwright

    report = build_reports(_run(tmp_path_factory.mktemp("report")))["report.html"]
    text = report.read_text()
    assert not re.search(r"""(src|href)=['"]?https?:""", text)  # nothing fetched: works offline
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable)
        context = browser.new_context(offline=True, java_script_enabled=True)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(report.as_uri())
        yield page
        assert not errors, errors
        browser.close()


def _column(page, table: str, index: int) -> list[str]:
    return page.eval_on_selector_all(f"#{table} tbody tr:not([hidden])",
                                     f"rows => rows.map(r => r.cells[{index}].getAttribute('data-value'))")


def test_findings_table_sorts_by_a_column_both_ways_and_filters(page):
    headers = page.eval_on_selector_all("#findings-overall thead th", "ths => ths.map(t => t.textContent)")
    assert headers[:10] == ["metric", "class", "comparison", "statistic", "generation", "difference",
                            "95% interval", "p", "p (Holm)", "n seeds"]
    difference = headers.index("difference")
    page.click(f"#findings-overall thead th:nth-child({difference + 1})")
    values = [float(v) for v in _column(page, "findings-overall", difference)]
    assert len(values) == 4 and values == sorted(values)  # last, auc, and each mode's change
    assert page.get_attribute(f"#findings-overall thead th:nth-child({difference + 1})", "aria-sort") == "ascending"
    page.click(f"#findings-overall thead th:nth-child({difference + 1})")
    assert [float(v) for v in _column(page, "findings-overall", difference)] == sorted(values, reverse=True)
    page.fill("input[data-table='findings-overall']", "gen 2 − gen 0 replace")
    shown = page.eval_on_selector_all("#findings-overall tbody tr:not([hidden])", "rows => rows.map(r => r.textContent)")
    assert len(shown) == 1 and "replace: gen 2 − gen 0" in shown[0]
    # replace's change (10, 10.5, 11 in the three seeds) is significant after the adjustment: marked, bold
    assert page.eval_on_selector("#findings-overall tbody tr:not([hidden])", "r => r.className") == "significant"


def test_heat_map_cell_and_curve_point_open_that_generations_samples(page):
    assert page.is_hidden("#drill")
    page.click("table.heat td[data-drill='accumulate|2|dog']")
    assert page.is_visible("#drill")
    assert page.inner_text("#drill h3") == "accumulate, generation 2, class dog"
    images = page.eval_on_selector_all("#drill img", "imgs => imgs.map(i => [i.naturalWidth, i.alt])")
    assert images == [[24, "dog"]]  # one strip of the class's three 8-pixel images, decoded by the browser
    page.click("#drill button")
    assert page.is_hidden("#drill")
    page.click("svg.curve circle[data-drill='replace|1|all']")
    assert page.inner_text("#drill h3") == "replace, generation 1"
    assert page.eval_on_selector_all("#drill img", "imgs => imgs.map(i => i.alt)") == CLASSES


def test_a_run_named_by_a_relative_path_gets_its_report_and_lineage(tmp_path, monkeypatch):
    """``imgsynth run`` names its folder relative to the working directory (runs/NAME) while sets resolve their
    roots: the lineage drawing still gives each set's place inside the run (no browser needed)."""
    from pathlib import Path

    run = _run(tmp_path)
    writer = ImageSetWriter(run / "real" / "train", CLASSES, kind="real")
    writer.write_all(Sample(Image.fromarray(np.full((8, 8), 10 * i, np.uint8)), label, image_id=f"{label}-{i:06d}")
                     for label in CLASSES for i in range(3))
    writer.finalize()
    monkeypatch.chdir(tmp_path)
    text = build_reports(Path("fake"))["report.html"].read_text()
    # (the fake chains' sets are alike, so each set id is drawn once: at its first place, seed 0)
    assert "seed_0/gen_0/samples" in text and "seed_0/replace/gen_2/samples" in text
    assert str(tmp_path) not in text  # places inside the run, not this machine's paths
