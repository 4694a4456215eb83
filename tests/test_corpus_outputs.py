"""Corpus of issue 21, items 1 and 5: inputs and outputs are disjoint, outputs have a kind, failures leave nothing
behind. Each case of the issue's "Inputs destroyed or changed, exit 0" runs `imgsynth` in a subprocess with a
memory cap and asserts: refused in one `error:` line naming the output and what it collides with, every input
(and the folder collided with) unchanged by tree digest, no leftovers, within the time limit."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
from cli_checks import assert_refused_within_limits, leftovers, run_limited, tree_digest

from imgsynth.experiments.config import dump_recipe, load_recipe
from imgsynth.experiments.recipes import shipped_recipes
from imgsynth.outputs import (CLASSIFIER, CONDITIONAL_MODEL, IMAGESET, LORA, MARKERS, PER_CLASS_MODEL, REPORT_MARKER,
                              RUN, claim_output, discard_abandoned, folder_kind, forget_claims)

CLASSES = ["a", "b"]


@dataclass
class Case:
    """A command line and the folders it must leave as they were (``needles``: what its error line names)."""

    args: list[str | Path]
    kept: list[Path]
    needles: list[str] = field(default_factory=list)


def _make_run(root: Path, name: str, seeds: int = 1) -> Path:
    """A run folder with one finished generation (enough to build reports from), recipe: smoke with ``seeds``."""
    import numpy as np
    from PIL import Image

    from imgsynth.imageset import ImageSetWriter, Sample

    run = root / name
    run.mkdir(parents=True)
    recipe = load_recipe(shipped_recipes()["smoke"], [f"loop.seeds={seeds}", f'name="{name}"'])
    (run / "config.toml").write_text(dump_recipe(recipe), encoding="utf-8")
    gen0 = run / "seed_0" / "gen_0"
    writer = ImageSetWriter(gen0 / "samples", CLASSES, kind="generated")
    writer.write_all(Sample(Image.fromarray(np.full((4, 4), 30 * i, np.uint8)), label, seed=i,
                            image_id=f"{label}-{i:06d}") for label in CLASSES for i in range(3))
    writer.finalize()
    rows = [{"metric": "fid", "class_name": c, "value": 1.0, "ci_low": None, "ci_high": None, "n": 3,
             "extractor": "domain"} for c in [*CLASSES, "all"]]
    (gen0 / "metrics.json").write_text(json.dumps({"mode": "base", "generation": 0, "rows": rows}))
    return run


@pytest.fixture
def world(tmp_path: Path, small_digits, smoke_model: Path, small_classifier: Path) -> dict[str, Path]:
    """Copies of the shared fixtures (a set, a second set, a model, a classifier) and two run folders."""
    paths = {"SET": tmp_path / "set", "GEN": tmp_path / "gen", "MODEL": tmp_path / "model",
             "CLF": tmp_path / "clf"}
    shutil.copytree(small_digits.root, paths["SET"])
    shutil.copytree(small_digits.root, paths["GEN"])
    shutil.copytree(smoke_model, paths["MODEL"])
    shutil.copytree(small_classifier, paths["CLF"])
    paths["RUN"] = _make_run(tmp_path, "run_a")
    paths["RUN_B"] = _make_run(tmp_path, "run_b")
    paths["RUN2"] = _make_run(tmp_path, "two_seeds", seeds=2)
    paths["ROOT"] = tmp_path
    return paths


# name -> (args built from the world's paths, folders that must stay unchanged, what the error line names)
CASES: dict[str, Callable[[dict[str, Path]], Case]] = {
    "metrics --out SET/imageset.json": lambda w: Case(
        ["metrics", w["GEN"], w["SET"], "--features", "pixels", "--out", w["SET"] / "imageset.json",
         "--device", "cpu"], [w["SET"], w["GEN"]], ["imageset.json", str(w["SET"])]),
    "audit --out SET/imageset.json": lambda w: Case(
        ["audit", w["SET"], "--against", w["GEN"], "--out", w["SET"] / "imageset.json"],
        [w["SET"], w["GEN"]], ["imageset.json", str(w["SET"])]),
    "metrics --out SET/metrics.csv": lambda w: Case(
        ["metrics", w["GEN"], w["SET"], "--features", "pixels", "--out", w["SET"] / "metrics.csv",
         "--device", "cpu"], [w["SET"], w["GEN"]], ["metrics.csv", str(w["SET"])]),
    "metrics --cache-dir SET/images": lambda w: Case(
        ["metrics", w["GEN"], w["SET"], "--features", "pixels", "--out", w["ROOT"] / "m.csv",
         "--cache-dir", w["SET"] / "images", "--device", "cpu"], [w["SET"], w["GEN"]], ["images", str(w["SET"])]),
    "features SET --cache-dir SET": lambda w: Case(
        ["features", w["SET"], "--features", "pixels", "--cache-dir", w["SET"], "--device", "cpu"],
        [w["SET"]], [str(w["SET"]), "is the input"]),
    "classify eval CLF SET --out SET": lambda w: Case(
        ["classify", "eval", w["CLF"], w["SET"], "--out", w["SET"], "--device", "cpu"], [w["SET"], w["CLF"]],
        [str(w["SET"]), "is the input"]),
    "data export SET SET/images/zz": lambda w: Case(
        ["data", "export", w["SET"], w["SET"] / "images" / "zz", "--format", "parquet"], [w["SET"]],
        ["zz", str(w["SET"])]),
    "curate GEN SET/images/sub": lambda w: Case(
        ["curate", w["GEN"], w["SET"] / "images" / "sub", "--dedup", "0.99"], [w["SET"], w["GEN"]],
        ["sub", str(w["SET"]), IMAGESET]),
    "generate MODEL SET/images/0/n": lambda w: Case(
        ["generate", w["MODEL"], w["SET"] / "images" / "0" / "n", "--per-class", "1", "--device", "cpu"],
        [w["SET"], w["MODEL"]], [str(w["SET"] / "images" / "0" / "n"), str(w["SET"]), IMAGESET]),
    "data import digits SET/images": lambda w: Case(
        ["data", "import", "digits", w["SET"] / "images"], [w["SET"]], [str(w["SET"]), IMAGESET]),
    "train DATA SET/images/m --kind gaussian": lambda w: Case(
        ["train", w["GEN"], w["SET"] / "images" / "m", "--kind", "gaussian"], [w["SET"], w["GEN"]],
        [str(w["SET"]), IMAGESET]),
    "dashboard RUN --out SET": lambda w: Case(
        ["dashboard", w["RUN"], "--out", w["SET"]], [w["SET"], w["RUN"]], [str(w["SET"]), IMAGESET]),
    "train DATA SET": lambda w: Case(
        ["train", w["GEN"], w["SET"], "--device", "cpu"], [w["SET"], w["GEN"]], [str(w["SET"]), IMAGESET]),
    "data import digits SET": lambda w: Case(
        ["data", "import", "digits", w["SET"]], [w["SET"]], [str(w["SET"]), IMAGESET]),
    "run gaussian-theory --out SET": lambda w: Case(
        ["run", "gaussian-theory", "--out", w["SET"]], [w["SET"]], [str(w["SET"]), IMAGESET, RUN]),
    "run gaussian-theory --out MODEL": lambda w: Case(
        ["run", "gaussian-theory", "--out", w["MODEL"]], [w["MODEL"]], [str(w["MODEL"]), CONDITIONAL_MODEL, RUN]),
    "dashboard RUN_A --out RUN_B": lambda w: Case(
        ["dashboard", w["RUN"], "--out", w["RUN_B"]], [w["RUN"], w["RUN_B"]], [str(w["RUN_B"]), RUN]),
    "run RUN --set loop.seeds=[0] on a two-seed run": lambda w: Case(
        ["run", w["RUN2"], "--set", "loop.seeds=[0]"], [w["RUN2"]], ["config.toml", "seeds", "[0, 1]"]),
    # Report files never replace a file imgsynth did not write.
    "metrics --out a file of the user's": lambda w: Case(
        ["metrics", w["GEN"], w["SET"], "--features", "pixels", "--out", w["ROOT"] / "notes" / "mine.csv",
         "--device", "cpu"], [w["SET"], w["GEN"], w["ROOT"] / "notes"], ["mine.csv", "not written by"]),
    "dashboard RUN --out a folder with the user's report.html": lambda w: Case(
        ["dashboard", w["RUN"], "--out", w["ROOT"] / "notes"], [w["RUN"], w["ROOT"] / "notes"],
        ["report.html", "not written by"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_an_output_that_would_change_an_input_or_another_kind_of_folder_is_refused(name, world):
    notes = world["ROOT"] / "notes"
    notes.mkdir()
    (notes / "mine.csv").write_text("my own numbers\n1,2,3\n")
    (notes / "report.html").write_text("<p>my own report</p>")
    case = CASES[name](world)
    before = {folder: tree_digest(folder) for folder in case.kept}
    ran = run_limited(*case.args)
    assert_refused_within_limits(ran, *case.needles)
    for folder, digest in before.items():
        assert tree_digest(folder) == digest, f"{folder} changed"
    assert leftovers(world["ROOT"]) == []


def test_reports_rerun_into_their_own_folders(world, run_cli):
    """The rule refuses only what is not imgsynth's: a run's own reports, and a report folder it made, are
    rewritten on every call."""
    run, out = world["RUN"], world["ROOT"] / "reports"
    for _ in range(2):
        assert run_cli("dashboard", run)[0] == 0
        code, _, err = run_cli("dashboard", run, "--out", out)
        assert code == 0, err
    assert (out / "report.html").is_file() and (out / REPORT_MARKER).is_file() and (run / "report.html").is_file()
    code, _, err = run_cli("dashboard", run, world["RUN_B"], "--out", world["ROOT"] / "cmp")
    assert code == 0, err


def test_a_metrics_csv_is_replaced_by_the_next_metrics_call(world, run_cli):
    out = world["ROOT"] / "m.csv"
    for _ in range(2):
        code, _, err = run_cli("metrics", world["GEN"], world["SET"], "--features", "pixels", "--out", out,
                               "--device", "cpu")
        assert code == 0, err


def test_a_failure_before_any_shard_leaves_no_partial_set_behind(world, run_cli):
    """A model folder whose recorded image shape does not fit its weights fails once the write has begun (the
    partial folder exists): it holds nothing to resume, so it goes (item 5)."""
    model, out = world["ROOT"] / "gauss", world["ROOT"] / "sampled"
    assert run_cli("train", world["SET"], model, "--kind", "gaussian")[0] == 0
    info_path = model / "imgsynth_model_info.json"
    info = json.loads(info_path.read_text())
    info["image_shape"] = [3, 3]
    info_path.write_text(json.dumps(info))
    code, _, err = run_cli("generate", model, out, "--per-class", "2")
    assert code != 0 and "error:" in err
    assert not out.exists() and leftovers(world["ROOT"]) == []


def test_discard_keeps_resumable_work_and_drops_what_nothing_resumes(tmp_path):
    forget_claims()
    fresh, resumable = tmp_path / "fresh", tmp_path / "resumable"
    for out in (fresh, resumable):
        claim_output(out, IMAGESET)
    for out, shards in ((fresh, []), (resumable, ["shard-000000.jsonl"])):
        partial = out.parent / f".{out.name}.partial"
        (partial / "shards").mkdir(parents=True)
        (partial / "job.json").write_text("{}")
        for shard in shards:
            (partial / "shards" / shard).write_text("{}\n")
    removed = discard_abandoned()
    assert removed == [tmp_path / ".fresh.partial"]
    assert (tmp_path / ".resumable.partial" / "shards" / "shard-000000.jsonl").is_file()


def test_the_same_kind_is_accepted_and_a_folder_of_unknown_kind_is_left_to_its_writer(world, tmp_path):
    assert claim_output(world["SET"], IMAGESET) == world["SET"].resolve()
    assert claim_output(world["MODEL"], PER_CLASS_MODEL, accepts={CONDITIONAL_MODEL}) == world["MODEL"].resolve()
    assert claim_output(world["RUN"], RUN) == world["RUN"].resolve()
    (tmp_path / "plain").mkdir()
    claim_output(tmp_path / "plain" / "new", IMAGESET)
    forget_claims()


def test_an_output_reached_through_a_link_is_judged_by_where_it_leads(world, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(world["SET"] / "images")
    with pytest.raises(ValueError, match="lies inside an ImageSet"):
        claim_output(link / "new", IMAGESET)


def test_the_marker_names_are_the_owning_modules_names():
    from imgsynth.classifier.checkpoint import METADATA
    from imgsynth.experiments.run import CONFIG_FILE
    from imgsynth.imageset.layout import MANIFEST
    from imgsynth.pipelines.base import MODEL_INFO
    from imgsynth.pipelines.conditional.folder import MODEL_FILE, PIPELINE_FILE
    from imgsynth.pipelines.finetune import INFO_FILE

    kinds = dict(MARKERS)
    assert kinds[MANIFEST] == IMAGESET and kinds[MODEL_FILE] == CONDITIONAL_MODEL
    assert kinds[MODEL_INFO] == PER_CLASS_MODEL and kinds[INFO_FILE] == LORA and kinds[METADATA] == CLASSIFIER
    assert kinds[CONFIG_FILE] == RUN and PIPELINE_FILE in kinds


def test_folder_kinds_of_the_fixtures(world):
    assert folder_kind(world["SET"]) == IMAGESET and folder_kind(world["MODEL"]) == CONDITIONAL_MODEL
    assert folder_kind(world["CLF"]) == CLASSIFIER and folder_kind(world["RUN"]) == RUN
    assert folder_kind(world["ROOT"] / "nothing") is None


@pytest.mark.parametrize(("seeds", "allowed"), [("3", True), ("[0, 1, 7]", True), ("[1, 0]", False), ("[1]", False)])
def test_a_run_s_seeds_may_grow_and_never_shrink_or_reorder(tmp_path, seeds, allowed):
    from imgsynth.experiments.config import RecipeError
    from imgsynth.experiments.loop import Experiment

    run = _make_run(tmp_path, "grow", seeds=2)
    experiment = Experiment.resume(run, [f"loop.seeds={seeds}"])
    if allowed:
        experiment._save_config()
        from imgsynth.experiments.config import replicate_seeds

        assert replicate_seeds(load_recipe(run / "config.toml")) == replicate_seeds(experiment.recipe)
    else:
        before = (run / "config.toml").read_text()
        with pytest.raises(RecipeError, match="may only grow"):
            experiment._save_config()
        assert (run / "config.toml").read_text() == before
