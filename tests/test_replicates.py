"""Replicates, parallel chains and the statistics of findings.

The interval and test code is checked against scipy.stats on fixed numbers; the loop is checked for the
same metrics whether chains run serially, in local worker processes or on a local Ray cluster, after a
SIGKILL, and when a run is extended with another seed.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from imgsynth.experiments.config import RecipeError, load_recipe, replicate_seeds
from imgsynth.experiments.loop import Experiment
from imgsynth.experiments.recipes import shipped_recipes
from imgsynth.reports.build import run_and_report
from imgsynth.reports.findings import findings, paired_difference, seed_summary, t_interval, verdicts

OVERRIDES = ["loop.generations=2", 'loop.modes=["replace", "accumulate"]', "loop.seeds=2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}


# --------------------------------------------------------------------------------------------- statistics

def test_t_interval_matches_scipy():
    values = [12.46, 12.78, 11.49, 11.97, 13.02]
    got = t_interval(values)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert got.mean == pytest.approx(np.mean(values), abs=1e-12)
    assert (got.low, got.high) == (pytest.approx(low, abs=1e-12), pytest.approx(high, abs=1e-12))
    one = t_interval([3.0])
    assert one.mean == 3.0 and math.isnan(one.low) and math.isnan(one.high) and one.n == 1


def test_paired_difference_matches_scipys_paired_t_test():
    a, b = [12.46, 12.78, 11.49, 11.97], [7.1, 8.4, 6.2, 6.9]
    got = paired_difference(a, b)
    reference = stats.ttest_rel(a, b)
    interval = reference.confidence_interval(0.95)
    assert got.p_value == pytest.approx(reference.pvalue, rel=1e-12)
    assert got.difference.low == pytest.approx(interval.low, abs=1e-12)
    assert got.difference.high == pytest.approx(interval.high, abs=1e-12)
    assert got.difference.mean == pytest.approx(np.mean(np.subtract(a, b)), abs=1e-12)
    with pytest.raises(ValueError, match="same length"):
        paired_difference([1.0, 2.0], [1.0])


def test_differences_equal_up_to_rounding_are_not_a_test():
    # Every seed moves by the same 0.00279 (one test image of 359): float rounding gives the differences a
    # spread of ~1e-17, which scipy turns into p ~ 1e-29; there is no spread to test, so no p-value.
    a = np.array([0.5, 0.6, 0.7])
    b = a - 0.00279
    assert stats.ttest_rel(a, b).pvalue < 1e-20  # what a plain t-test says
    got = paired_difference(a, b)
    assert math.isnan(got.p_value)
    assert got.difference.mean == pytest.approx(0.00279, abs=1e-12)
    # a real, small spread is still tested
    assert paired_difference(a, a - [0.00279, 0.0028, 0.00281]).p_value < 0.01


def _frame(values: dict[tuple[str, int], list[float]]) -> pd.DataFrame:
    """A tidy metrics table: fid[domain] for (mode, generation) → one value per seed 0, 1, 2…"""
    rows = []
    for (mode, generation), per_seed in values.items():
        for seed, value in enumerate(per_seed):
            rows.append({"run": "r", "seed": seed, "mode": mode, "generation": generation, "class": "all",
                         "metric": "fid", "extractor": "domain", "value": value, "ci_low": None, "ci_high": None,
                         "n": 100})
    return pd.DataFrame(rows)


def test_findings_compare_modes_paired_by_seed_at_the_last_generation_over_the_curve_and_since_gen_0():
    gen0 = [2.0, 2.5, 3.0]
    values = {("replace", 0): gen0, ("replace", 1): [6.0, 7.5, 6.5], ("replace", 2): [11.0, 12.5, 12.0],
              ("accumulate", 0): gen0, ("accumulate", 1): [4.0, 4.5, 5.0], ("accumulate", 2): [6.0, 6.0, 7.5]}
    table = findings(_frame(values))
    last = table[(table["statistic"] == "last") & (table["comparison"] == "replace − accumulate")].iloc[0]
    reference = stats.ttest_rel(values[("replace", 2)], values[("accumulate", 2)])
    assert last["p_value"] == pytest.approx(reference.pvalue)
    assert (last["ci_low"], last["ci_high"]) == tuple(pytest.approx(v) for v in reference.confidence_interval())
    assert last["test"] == "paired t-test" and last["n_seeds"] == 3 and last["generation"] == 2
    auc = table[(table["statistic"] == "auc") & (table["comparison"] == "replace − accumulate")].iloc[0]
    curves = {m: np.array([values[(m, g)] for g in range(3)]) for m in ("replace", "accumulate")}
    per_seed = [np.trapezoid(curves["replace"][:, s]) - np.trapezoid(curves["accumulate"][:, s]) for s in range(3)]
    assert auc["mean_difference"] == pytest.approx(np.mean(per_seed))
    change = table[table["comparison"] == "replace: gen 2 − gen 0"].iloc[0]
    assert change["p_value"] == pytest.approx(stats.ttest_rel(values[("replace", 2)], gen0).pvalue)
    line = next(v for v in verdicts(table) if v.startswith("replace − accumulate fid[domain] at gen 2"))
    assert f"p = {reference.pvalue:.2g}" in line and "(3 seeds, paired t-test)" in line


def test_one_seed_says_intervals_need_two_seeds_instead_of_printing_any():
    table = findings(_frame({("replace", 0): [2.0], ("replace", 1): [5.0], ("accumulate", 0): [2.0],
                             ("accumulate", 1): [3.0]}))
    assert table["p_value"].isna().all() and table["ci_low"].isna().all()
    lines = verdicts(table)
    assert len(lines) == 1 and "need at least 2 seeds" in lines[0]


@pytest.mark.slow
def test_dashboard_bands_are_the_seed_intervals_of_metrics_csv(smoke_runs):
    """The band drawn for each (mode, generation) is the t-interval over the seeds' values in metrics.csv."""
    frame = pd.read_csv(smoke_runs["serial"] / "metrics.csv", keep_default_na=True)
    frame["extractor"] = frame["extractor"].fillna("")
    summary = seed_summary(frame)
    fid = frame[(frame["metric"] == "fid") & (frame["class"] == "all")]
    for (mode, generation), group in fid.groupby(["mode", "generation"]):
        row = summary[(summary["mode"] == mode) & (summary["generation"] == generation)
                      & (summary["metric"] == "fid") & (summary["class"] == "all")].iloc[0]
        low, high = stats.t.interval(0.95, len(group) - 1, loc=group["value"].mean(), scale=stats.sem(group["value"]))
        assert (row["seed_low"], row["seed_high"]) == (pytest.approx(low, rel=1e-9), pytest.approx(high, rel=1e-9))
    table = pd.read_csv(smoke_runs["serial"] / "findings.csv")
    change = table[(table["metric"] == "fid") & (table["class"] == "all")
                   & (table["comparison"] == "replace: gen 1 − gen 0")].iloc[0]
    per_seed = fid.pivot_table(index="seed", columns=["mode", "generation"], values="value")
    expected = stats.ttest_rel(per_seed[("replace", 1)], per_seed[("replace", 0)]).pvalue
    assert change["p_value"] == pytest.approx(expected, rel=1e-6)


# --------------------------------------------------------------------------------------------- recipes

@pytest.mark.parametrize("value, message", [
    ("0", "seeds must be a count in"), ("-2", "seeds must be a count in"), ("[1, 1]", "repeated seed"),
    ("1.5", "seeds = 1.5 should be"), ('"three"', "should be"), ("[]", "empty list"), ("[0, -1]", "each in"),
    ("[0, 1.5]", "must be a list of integers")])
def test_bad_seeds_are_one_line_naming_the_field(value, message):
    with pytest.raises(RecipeError, match=message) as caught:
        load_recipe(shipped_recipes()["smoke"], [f"loop.seeds={value}"])
    assert "seeds" in str(caught.value) and "\n" not in str(caught.value)


def test_a_count_of_seeds_counts_from_the_recipe_seed_and_a_list_is_taken_as_given():
    assert replicate_seeds(load_recipe(shipped_recipes()["smoke"], ["loop.seeds=3", "seed=5"])) == [5, 6, 7]
    assert replicate_seeds(load_recipe(shipped_recipes()["smoke"], ["loop.seeds=[9, 2]"])) == [9, 2]


# --------------------------------------------------------------------------------------------- the loop

def _recipe(*extra: str):
    return load_recipe(shipped_recipes()["smoke"], [*OVERRIDES, *extra])


def _values(run: Path) -> pd.DataFrame:
    return pd.read_csv(run / "metrics.csv").drop(columns=["run"])


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory) -> dict[str, Path]:
    """The same 2-seed recipe run serially and with two local worker processes."""
    root = tmp_path_factory.mktemp("replicates")
    runs = {"serial": root / "serial", "workers": root / "workers"}
    run_and_report(Experiment(_recipe(), runs["serial"], workers=1))
    run_and_report(Experiment(_recipe(), runs["workers"], workers=2))
    return runs


@pytest.mark.slow
def test_serial_and_two_worker_runs_write_identical_metrics(smoke_runs):
    serial = _values(smoke_runs["serial"])
    assert sorted(serial["seed"].unique()) == [0, 1]
    pd.testing.assert_frame_equal(serial, _values(smoke_runs["workers"]))
    # The seeds are real replicates: their generation-0 FIDs differ.
    fid = serial[(serial["metric"] == "fid") & (serial["class"] == "all") & (serial["generation"] == 0)]
    assert fid.groupby("seed")["value"].first().nunique() == 2
    info = json.loads((smoke_runs["workers"] / "run.json").read_text())
    assert info["workers"] == 2 and info["seeds"] == [0, 1] and "train" in info["stage_seconds_all_generations"]
    page = (smoke_runs["serial"] / "report.html").read_text()
    assert page.index("Findings") < page.index("What was run") and "paired t-test" in page


@pytest.mark.ray
@pytest.mark.slow
def test_a_local_ray_cluster_writes_the_same_metrics(smoke_runs, tmp_path):
    pytest.importorskip("ray")
    run = tmp_path / "ray"
    run_and_report(Experiment(_recipe(), run, workers=2, backend="ray"))
    pd.testing.assert_frame_equal(_values(run), _values(smoke_runs["serial"]))


@pytest.mark.slow
def test_extending_a_two_seed_run_to_three_computes_only_the_new_seed(smoke_runs, tmp_path):
    run = tmp_path / "extended"
    shutil.copytree(smoke_runs["serial"], run)
    before = {p: p.stat().st_mtime_ns for p in run.glob("seed_*/**/metrics.json")}
    stages = []
    run_and_report(Experiment.resume(run, ["loop.seeds=3"], stage_hook=lambda stage, key: stages.append(key)))
    assert stages and {key.seed for key in stages} == {2}
    assert {p: p.stat().st_mtime_ns for p in before} == before
    extended = _values(run)
    assert sorted(extended["seed"].unique()) == [0, 1, 2]
    pd.testing.assert_frame_equal(extended[extended["seed"] < 2].reset_index(drop=True), _values(smoke_runs["serial"]))
    with pytest.raises(RecipeError, match="can change only loop.seeds"):
        Experiment.resume(run, ["loop.generations=3"])


def _spawn_run(out: Path) -> subprocess.Popen:
    args = [sys.executable, "-m", "imgsynth", "run", "smoke", "--out", str(out), "--workers", "2",
            *[part for o in OVERRIDES for part in ("--set", o)]]
    return subprocess.Popen(args, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _wait_for_metrics(run: Path, process: subprocess.Popen, count: int) -> list[Path]:
    deadline = time.monotonic() + 240
    while len(found := _finished_metrics(run)) < count:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return found


def _finished_metrics(run: Path) -> list[Path]:
    """The metrics files written so far; a folder renamed into place while the glob walks it is looked at again."""
    while True:
        try:
            return sorted(run.glob("seed_*/**/metrics.json"))
        except FileNotFoundError:  # e.g. a .partial folder renamed between listing and entering it
            continue


@pytest.mark.slow
def test_a_killed_parallel_run_resumes_to_the_same_metrics_without_recomputing_finished_work(smoke_runs, tmp_path):
    run = tmp_path / "killed"
    process = _spawn_run(run)
    _wait_for_metrics(run, process, 1)
    os.killpg(process.pid, signal.SIGKILL)  # the driver and its workers
    process.wait()
    finished = {p: p.stat().st_mtime_ns for p in run.glob("seed_*/**/metrics.json")}
    done = subprocess.run([sys.executable, "-m", "imgsynth", "run", str(run), "--workers", "2"], env=ENV,
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr
    assert {p: p.stat().st_mtime_ns for p in finished} == finished
    pd.testing.assert_frame_equal(_values(run), _values(smoke_runs["serial"]))


@pytest.mark.slow
def test_a_worker_that_dies_is_reported_with_its_chain_and_the_run_resumes(smoke_runs, tmp_path):
    run = tmp_path / "worker-died"
    process = _spawn_run(run)
    _wait_for_metrics(run, process, 1)
    children = subprocess.run(["pgrep", "-f", "-P", str(process.pid), "spawn_main"], capture_output=True, text=True)
    workers = [int(pid) for pid in children.stdout.split()]
    assert workers, "no worker process found"
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    _, err = process.communicate(timeout=240)
    assert process.returncode == 1 and "Traceback" not in err, err
    error = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and ("chain" in error[0] or "gen 0" in error[0]), err
    assert "worker process died" in error[0] and "run the same command again" in error[0]
    done = subprocess.run([sys.executable, "-m", "imgsynth", "run", str(run), "--workers", "2"], env=ENV,
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr
    pd.testing.assert_frame_equal(_values(run), _values(smoke_runs["serial"]))
