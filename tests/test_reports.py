"""Reports built from a hand-made run folder, so the expected table is known independently of the loop."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from imgsynth.experiments.config import dump_recipe, recipe_from_dict
from imgsynth.imageset import ImageSetWriter, Sample
from imgsynth.reports.build import _grid_images, build_reports, compare_runs
from imgsynth.reports.tables import COLUMNS, collect_metrics

CLASSES = ["a", "b"]


def _fid(mode: str, generation: int, label: str) -> float:
    # A known, distinct value per (mode, generation, class) so the table can be checked cell by cell.
    return 10.0 * generation + (5.0 if mode == "replace" else 1.0) * generation + (0.5 if label == "b" else 0.0)


def _write_samples(path, shade):
    writer = ImageSetWriter(path, CLASSES, kind="generated")
    writer.write_all(Sample(Image.fromarray(np.full((4, 4), shade + 10 * i, np.uint8)), label, seed=i,
                            image_id=f"{label}-{i:06d}") for label in CLASSES for i in range(3))
    return writer.finalize()


def _make_run(root, name="fake", modes=("replace", "accumulate"), generations=3):
    run = root / name
    run.mkdir(parents=True)
    recipe = recipe_from_dict({"name": name, "loop": {"modes": list(modes), "generations": generations}})
    (run / "config.toml").write_text(dump_recipe(recipe))
    for mode in modes:
        for k in range(generations):
            if k == 0 and mode != modes[0]:
                continue
            folder = run / "gen_0" if k == 0 else run / mode / f"gen_{k}"
            _write_samples(folder / "samples", shade=20 * k)
            rows = [{"metric": "fid", "class_name": c, "value": _fid(mode, k, c), "ci_low": _fid(mode, k, c) - 1,
                     "ci_high": _fid(mode, k, c) + 1, "n": 3, "extractor": "domain"} for c in CLASSES]
            rows.append({"metric": "fid", "class_name": "all", "value": _fid(mode, k, "a") + 0.25,
                         "ci_low": None, "ci_high": None, "n": 6, "extractor": "domain"})
            rows.append({"metric": "train_size", "class_name": "all", "value": 100 + k, "ci_low": None,
                         "ci_high": None, "n": 100 + k, "extractor": ""})
            (folder / "metrics.json").write_text(json.dumps({"mode": mode if k else "base", "generation": k,
                                                             "rows": rows}))
    return run


def test_metrics_table_is_tidy_and_repeats_generation_zero_for_every_mode(tmp_path):
    run = _make_run(tmp_path)
    frame = collect_metrics(run)
    assert list(frame.columns) == COLUMNS
    assert set(frame["run"]) == {"fake"}
    for mode in ("replace", "accumulate"):
        for k in range(3):
            for c in CLASSES:
                cell = frame[(frame["mode"] == mode) & (frame["generation"] == k) & (frame["class"] == c)
                             & (frame["metric"] == "fid")]
                assert len(cell) == 1
                assert cell["value"].item() == pytest.approx(_fid(mode if k else "replace", k, c))
                assert cell["extractor"].item() == "domain"
    gen0 = frame[(frame["generation"] == 0) & (frame["metric"] == "fid") & (frame["class"] == "all")]
    assert sorted(gen0["mode"]) == ["accumulate", "replace"] and gen0["value"].nunique() == 1


def test_build_reports_writes_csv_pictures_and_self_contained_html(tmp_path):
    run = _make_run(tmp_path)
    written = build_reports(run)
    assert set(written) == {"metrics.csv", "findings.csv", "dashboard.png", "grids.png", "class_heatmap.png",
                            "report.html"}
    csv = pd.read_csv(written["metrics.csv"])
    assert len(csv) == len(collect_metrics(run))
    for name in ("dashboard.png", "grids.png", "class_heatmap.png"):
        with Image.open(written[name]) as image:
            assert image.format == "PNG" and min(image.size) > 100
    page = written["report.html"].read_text()
    assert page.count('src="data:image/png;base64,') == 3  # the three pictures, inlined
    # and the drill-down's thumbnails, as data, not links: one strip per (generation, class), each stored once
    block = page.split("<script type='application/json' id='samples'>")[1].split("</script>")[0]
    strips = json.loads(block)
    assert len(strips["images"]) == 2 * (1 + 2 * 2) and all(s.startswith("data:image/png;base64,")
                                                          for s in strips["images"])
    assert strips["cells"]["accumulate|0|a"] == strips["cells"]["replace|0|a"]  # generation 0 is every mode's
    assert "file:" not in page
    assert "fid[domain]" in page and "classifier trained on this run" in page
    assert not list(run.glob("*.tmp*"))


def test_grid_rows_use_the_same_image_ids_in_every_generation(tmp_path):
    run = _make_run(tmp_path)
    from imgsynth.imageset import ImageSet

    first = ImageSet.open(run / "gen_0" / "samples")
    later = ImageSet.open(run / "replace" / "gen_2" / "samples")
    a, b = _grid_images(first), _grid_images(later)
    assert len(a) == len(b) == 2 * len(CLASSES)
    # The generations were written with shades 0 and 40 apart at the same ids: same ordering, shifted pixels.
    assert [int(x[0, 0]) + 40 for x in a] == [int(x[0, 0]) for x in b]


def test_compare_runs_puts_both_runs_in_one_table(tmp_path):
    one = _make_run(tmp_path, "one")
    two = _make_run(tmp_path, "two", modes=("replace",))
    written = compare_runs([one, two], tmp_path / "cmp")
    csv = pd.read_csv(written["metrics.csv"])
    assert set(csv["run"]) == {"one", "two"}
    assert set(csv[csv["run"] == "two"]["mode"]) == {"replace"}
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        compare_runs([one, tmp_path], tmp_path / "cmp2")


def test_dashboard_cli_compares_runs(tmp_path, run_cli):
    one = _make_run(tmp_path, "one")
    two = _make_run(tmp_path, "two")
    code, out, err = run_cli("dashboard", one, two, "--out", tmp_path / "cmp")
    assert code == 0, err
    assert (tmp_path / "cmp" / "dashboard.png").is_file() and "report.html" in out
