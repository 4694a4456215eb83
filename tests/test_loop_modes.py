"""Loop modes are one function plus one registration: a throwaway mode defined here runs through `imgsynth run`
with its rows, dashboard line and comparisons; recipes name only registered modes; the loop never builds reports."""

from __future__ import annotations

import ast
from pathlib import Path

import pandas as pd
import pytest

import imgsynth
from imgsynth.experiments.config import RecipeError, load_recipe
from imgsynth.experiments.modes import LOOP_MODES, LoopMode, ModeInputs
from imgsynth.imageset import ImageSet
from imgsynth.registry import RegistryError

PER_CLASS, CLASSES, GENERATIONS = 40, 2, 3


def halve(inputs: ModeInputs) -> ImageSet:
    """A throwaway mode: the first half of each class of the previous generation's output."""
    previous = inputs.previous
    keep = []
    for label in previous.classes:
        members = previous.indices_of_class(label)
        keep.extend(members[:len(members) // 2])
    return previous.subset(sorted(keep), inputs.out, config={"loop": "halve", "generation": inputs.generation})


def _recipe(path: Path, modes: str, per_class: int = PER_CLASS) -> Path:
    """A seconds-long run of the exact-theory Gaussian kind on 4×4 images of two classes (800 real training images)."""
    path.write_text(f'''name = "modes"
[data]
source = "gaussian:classes={CLASSES},per_class=500,mean=128,sigma=20,spacing=40,seed=0"
size = 4
[generator]
kind = "gaussian"
per_class = {per_class}
[loop]
generations = {GENERATIONS}
modes = {modes}
seeds = 2
[metrics]
extractors = ["pixels"]
per_class = false
[classifier]
enabled = false
''', encoding="utf-8")
    return path


def test_a_mode_registered_from_a_test_file_runs_through_imgsynth_run(run_cli, tmp_path, monkeypatch):
    import imgsynth.reports.build as build

    plotted = []
    real_dashboard = build.dashboard

    def spy(summary, path, **kwargs):  # the dashboard is a PNG: record what it was asked to draw
        plotted.append(summary[summary["class"] == "all"])
        return real_dashboard(summary, path, **kwargs)

    monkeypatch.setattr(build, "dashboard", spy)
    recipe, out = _recipe(tmp_path / "recipe.toml", '["replace", "halve"]'), tmp_path / "run"
    with LOOP_MODES.registered("halve", LoopMode(halve)):
        code, stdout, err = run_cli("run", recipe, "--out", out, "--workers", "1")
    assert code == 0, err
    assert f"findings:  {out / 'findings.csv'}" in stdout and f"dashboard: {out / 'dashboard.png'}" in stdout

    frame = pd.read_csv(out / "metrics.csv")
    halved = frame[frame["mode"] == "halve"]
    assert sorted(halved["generation"].unique()) == list(range(GENERATIONS))
    assert sorted(halved["seed"].unique()) == [0, 1] and "fid" in set(halved["metric"])
    size = halved[halved["metric"] == "train_size"].set_index(["seed", "generation"])["value"]
    assert all(size[(seed, k)] == PER_CLASS * CLASSES // 2 for seed in (0, 1) for k in range(1, GENERATIONS))
    written = ImageSet.open(out / "seed_1" / "halve" / "gen_2" / "train_set")
    assert written.manifest["config"]["loop"] == "halve" and set(written.counts.values()) == {PER_CLASS // 2}

    (drawn,) = plotted
    assert set(drawn[drawn["mode"] == "halve"]["generation"]) == set(range(GENERATIONS))
    table = pd.read_csv(out / "findings.csv")
    assert {"replace − halve", f"halve: gen {GENERATIONS - 1} − gen 0"} <= set(table["comparison"])
    assert table[table["comparison"] == "replace − halve"]["n_seeds"].eq(2).all()
    assert "halve" in (out / "report.html").read_text(encoding="utf-8")


def test_a_mode_reaches_local_worker_processes_with_its_task(run_cli, tmp_path):
    """Workers are spawned: the mode travels with the chain's task, it is not looked up there."""
    recipe, out = _recipe(tmp_path / "recipe.toml", '["halve"]'), tmp_path / "run"
    with LOOP_MODES.registered("halve", LoopMode(halve)):
        code, _, err = run_cli("run", recipe, "--out", out, "--workers", "2", "--set", "loop.seeds=1")
    assert code == 0, err
    train_set = ImageSet.open(out / "seed_0" / "halve" / "gen_1" / "train_set")
    assert train_set.manifest["config"]["loop"] == "halve" and len(train_set) == PER_CLASS * CLASSES // 2


def test_an_unknown_mode_is_one_error_naming_the_field_and_the_registered_modes(run_cli, tmp_path):
    recipe = _recipe(tmp_path / "recipe.toml", '["replace", "shuffle"]')
    with pytest.raises(RecipeError) as caught:
        load_recipe(recipe)
    message = str(caught.value)
    assert message.startswith(f"{recipe}: [loop] modes: unknown mode(s) ['shuffle']")
    assert all(f"'{name}'" in message for name in LOOP_MODES.names()) and "'fresh'" in message
    code, _, err = run_cli("run", recipe, "--out", tmp_path / "run")
    assert code != 0 and err.count("error:") == 1 and "[loop] modes" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
    with LOOP_MODES.registered("shuffle", LoopMode(halve)):  # the registry is the one list of valid names
        assert load_recipe(recipe).loop.modes == ["replace", "shuffle"]


def test_registering_a_taken_mode_name_is_refused_naming_both():
    before = LOOP_MODES["replace"]
    with pytest.raises(RegistryError, match=r"loop mode 'replace' is already registered as "
                                            r"imgsynth\.experiments\.modes:replace; refusing to replace it with "
                                            r".*:halve"):
        LOOP_MODES.register("replace", LoopMode(halve))
    assert LOOP_MODES["replace"] is before


def test_a_curated_variant_of_a_registered_mode_is_valid(tmp_path):
    recipe = _recipe(tmp_path / "recipe.toml", '["halve", "halve+curate"]')
    with LOOP_MODES.registered("halve", LoopMode(halve)):
        assert load_recipe(recipe).loop.modes == ["halve", "halve+curate"]
    with pytest.raises(RecipeError, match=r"unknown mode\(s\) \['halve', 'halve\+curate'\]"):
        load_recipe(recipe)


def test_fresh_refuses_a_run_whose_real_pool_cannot_feed_every_generation(run_cli, tmp_path):
    """The mode's check runs with the real data, before any generation: 300 × 2 × (3 − 1) > 800 images."""
    recipe, out = _recipe(tmp_path / "recipe.toml", '["replace", "fresh+curate"]', per_class=300), tmp_path / "run"
    code, _, err = run_cli("run", recipe, "--out", out, "--workers", "1")
    assert code != 0 and err.count("error:") == 1 and "Traceback" not in err
    assert "[loop] mode 'fresh' needs 1200 new real training images" in err and "has 800" in err
    assert not list(out.glob("seed_*"))


def _imports(path: Path) -> set[str]:
    """Every module an ``import`` statement of ``path`` names, function-level ones included."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


PACKAGE = Path(imgsynth.__file__).parent


def test_the_loop_never_imports_reports_and_reports_read_a_run_only_through_run_py():
    for path in sorted((PACKAGE / "experiments").glob("*.py")):
        bad = sorted(m for m in _imports(path) if m.startswith(("imgsynth.reports", "imgsynth.cli")))
        assert not bad, f"{path.name} imports {bad}"
    for path in sorted((PACKAGE / "reports").glob("*.py")):
        reads = sorted(m for m in _imports(path) if m.startswith("imgsynth.experiments"))
        assert set(reads) <= {"imgsynth.experiments.run"}, f"{path.name} imports {reads}"
