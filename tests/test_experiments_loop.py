"""The whole recursive loop end to end on the `smoke` recipe (seconds on a CPU)."""

import pandas as pd
import pytest

from imgsynth.experiments.config import load_recipe
from imgsynth.experiments.loop import Experiment, GenerationKey
from imgsynth.experiments.recipes import shipped_recipes
from imgsynth.imageset import ImageSet
from imgsynth.reports.build import run_and_report

pytestmark = pytest.mark.slow  # every test reads one whole smoke run (the slowest fixture of the suite)


class Crash(RuntimeError):
    pass


def _smoke(**changes):
    recipe = load_recipe(shipped_recipes()["smoke"])
    for section, values in changes.items():
        for key, value in values.items():
            setattr(getattr(recipe, section), key, value)
    return recipe


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """One uninterrupted smoke run, shared by the assertions below."""
    folder = tmp_path_factory.mktemp("uninterrupted") / "smoke"
    run_and_report(Experiment(_smoke(), folder))
    return folder


def test_smoke_run_writes_every_generation_of_every_mode(smoke_run):
    recipe = _smoke()
    frame = pd.read_csv(smoke_run / "metrics.csv")
    assert set(frame["mode"]) == set(recipe.loop.modes)
    for mode in recipe.loop.modes:
        assert sorted(frame[frame["mode"] == mode]["generation"].unique()) == list(range(recipe.loop.generations))
    metrics = set(frame["metric"])
    assert {"fid", "kid", "precision", "recall", "density", "coverage", "cas_accuracy", "train_size"} <= metrics
    assert set(frame[frame["metric"] == "fid"]["extractor"]) == {"domain"}
    assert set(frame[frame["metric"] == "fid"]["class"]) == {"all", *[str(d) for d in range(10)]}
    for name in ("dashboard.png", "grids.png", "class_heatmap.png", "report.html", "config.toml"):
        assert (smoke_run / name).is_file(), name


def test_training_set_sizes_follow_the_loop_modes(smoke_run):
    recipe = _smoke()
    frame = pd.read_csv(smoke_run / "metrics.csv")
    size = frame[frame["metric"] == "train_size"].set_index(["mode", "generation"])["value"]
    real = len(ImageSet.open(smoke_run / "real" / "train"))
    synthetic = recipe.generator.per_class * 10
    assert size[("replace", 0)] == real
    assert size[("replace", 1)] == synthetic and size[("replace", 2)] == synthetic
    assert size[("mix", 2)] == synthetic
    assert size[("accumulate", 1)] == real + synthetic
    assert size[("accumulate", 2)] == real + 2 * synthetic
    mixed = ImageSet.open(smoke_run / "seed_0" / "mix" / "gen_2" / "train_set")
    kinds = [p["kind"] for p in mixed.parents]
    assert kinds == ["real", "generated"]
    # λ = 0.5 of the mixed set is real: those images are byte-identical to real training images.
    real_hashes = {r.sha256 for r in ImageSet.open(smoke_run / "real" / "train").records}
    n_real = sum(1 for r in mixed.records if r.sha256 in real_hashes)
    assert n_real == round(recipe.loop.mix_real_fraction * synthetic)


def test_generation_zero_is_computed_once_and_shared(smoke_run):
    assert (smoke_run / "seed_0" / "gen_0" / "metrics.json").is_file()
    assert not (smoke_run / "seed_0" / "replace" / "gen_0").exists()


def test_kill_during_generation_two_resumes_without_recomputing(tmp_path, smoke_run):
    folder = tmp_path / "smoke"
    target = GenerationKey(0, "replace", 2)

    def crash(stage, key):
        if key == target and stage == "evaluate":
            raise Crash("simulated kill during generation 2")

    with pytest.raises(Crash):
        Experiment(_smoke(), folder, stage_hook=crash).run()
    # Chains run one after another: generation 0 and replace's generation 1 were finished.
    finished = sorted(folder.glob("**/metrics.json"))
    assert [p.relative_to(folder).as_posix() for p in finished] == ["seed_0/gen_0/metrics.json",
                                                                    "seed_0/replace/gen_1/metrics.json"]
    stamps = {p: p.stat().st_mtime_ns for p in finished}
    stages = []
    run_and_report(Experiment.resume(folder, stage_hook=lambda stage, key: stages.append((stage, key))))
    assert {p: p.stat().st_mtime_ns for p in finished} == stamps
    assert all(key.generation == 2 for _, key in stages if key.mode == "replace"), stages
    assert not any(key.generation == 0 for _, key in stages)
    # replace gen 2 had trained and sampled before the crash: only evaluation is redone there.
    assert ("train", target) in stages and ("sample", target) in stages
    resumed = pd.read_csv(folder / "metrics.csv")
    pd.testing.assert_frame_equal(resumed, pd.read_csv(smoke_run / "metrics.csv"))


def test_rerun_of_a_finished_run_recomputes_nothing(smoke_run):
    stages = []
    Experiment.resume(smoke_run, stage_hook=lambda stage, key: stages.append(stage)).run()
    assert stages == []


def test_changed_recipe_on_a_started_run_is_refused(smoke_run):
    from imgsynth.experiments.config import RecipeError

    with pytest.raises(RecipeError, match="started with another recipe"):
        Experiment(_smoke(loop={"generations": 4}), smoke_run).run()
