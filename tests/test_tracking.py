"""Trackers (imgsynth.tracking): every metrics.csv row read back through each tracker's own reader, no point
logged twice across a kill and a resume, a missing or failing tracker is one note and changes nothing."""

from __future__ import annotations

import json
import struct
import sys
import warnings
from collections import Counter
from pathlib import Path
from typing import ClassVar

import pandas as pd
import pytest

from imgsynth.experiments.config import RecipeError, recipe_from_dict
from imgsynth.experiments.loop import Experiment
from imgsynth.experiments.run import GenerationKey
from imgsynth.notes import Note
from imgsynth.reports.build import run_and_report
from imgsynth.tracking.registry import TRACKERS, Tracker
from imgsynth.tracking.session import TrackingSession

TINY = {
    "name": "tiny", "seed": 0,
    "data": {"source": "gaussian:classes=2,per_class=30,mean=128,sigma=20,spacing=40,seed=0", "size": 4,
             "mode": "L", "test_fraction": 0.2},
    "generator": {"kind": "gaussian", "per_class": 10},
    "loop": {"generations": 3, "modes": ["replace", "accumulate"], "seeds": 1},
    "metrics": {"extractors": ["pixels"], "per_class": True},
    "classifier": {"enabled": False},
}
KILL_AT = GenerationKey(0, "accumulate", 2)  # after generation 0, the replace chain and accumulate gen 1


class Killed(Exception):
    pass


def _kill(stage: str, key: GenerationKey) -> None:
    if key == KILL_AT and stage == "train":
        raise Killed


def _run(run_dir: Path, trackers: list[str], *, kill: bool = False, seeds: int = 1) -> Path:
    """The tiny run with ``trackers`` logging after each task, killed at KILL_AT when ``kill``; as `imgsynth run`
    does it (the CLI's own path is the throwaway-tracker test's)."""
    session = TrackingSession(run_dir, trackers)
    recipe = recipe_from_dict({**TINY, "loop": {**TINY["loop"], "seeds": seeds}})
    experiment = Experiment(recipe, run_dir, _kill if kill else None, progress=False, after_task=session.sync)
    if kill:
        with pytest.raises(Killed):
            experiment.run()
        return run_dir
    run_and_report(experiment)
    session.finish()
    return run_dir


def _expected(run_dir: Path) -> dict[tuple[int, str, str, int], float]:
    """(seed, mode, key, generation) → value of every metrics.csv row (key: metric[/extractor]/class)."""
    frame = pd.read_csv(run_dir / "metrics.csv", keep_default_na=False, dtype={"class": str, "extractor": str})
    out = {}
    for seed, mode, generation, metric, extractor, class_name, value in zip(
            frame["seed"], frame["mode"], frame["generation"], frame["metric"], frame["extractor"], frame["class"],
            frame["value"]):
        key = "/".join(p for p in (metric, extractor, class_name) if p)
        out[(int(seed), mode, key, int(generation))] = float(value)
    return out


def _check(expected: dict, points: list[tuple[int, str, str, int, float]]) -> None:
    counts = Counter(p[:4] for p in points)
    assert not [k for k, n in counts.items() if n > 1], "a point was logged twice"
    got = {p[:4]: p[4] for p in points}
    assert got.keys() == expected.keys()
    assert all(got[k] == pytest.approx(v, rel=1e-6) for k, v in expected.items())


# ------------------------------------------------------------------------------------------------ readers
def _tensorboard_points(run_dir: Path) -> list[tuple[int, str, str, int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    points = []
    for chain in sorted((run_dir / "tensorboard").glob("seed_*/*")):
        seed, mode = int(chain.parent.name.removeprefix("seed_")), chain.name
        events = EventAccumulator(str(chain), size_guidance={"scalars": 0, "images": 0})
        events.Reload()
        for tag in events.Tags()["scalars"]:
            points.extend((seed, mode, tag, e.step, e.value) for e in events.Scalars(tag))
        assert sorted({e.step for e in events.Images("samples")}) == [0, 1, 2]
    return points


def _wandb_records(path: Path):
    """W&B's offline transaction log (LevelDB log format: 7-byte header, 32 KiB blocks of checksummed chunks)
    as its own protobuf Records."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    ident, magic, _ = struct.unpack("<4sHB", data[:7])
    assert (ident, magic) == (b":W&B", 0xBEE1)
    position, pending = 7, b""
    while position < len(data):
        left = 32768 - position % 32768
        if left < 7:
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if length == 0 and kind == 0:
            position += left
            continue
        chunk, position = data[position + 7:position + 7 + length], position + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            yield wandb_internal_pb2.Record.FromString(pending)


def _wandb_points(run_dir: Path) -> list[tuple[int, str, str, int, float]]:
    ledger = json.loads((run_dir / "tracking" / "wandb.json").read_text())
    chains = {run_id: chain for chain, run_id in ledger["runs"].items()}
    points, images = [], Counter()
    for path in sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb")):
        chain = chains[path.stem.removeprefix("run-")]
        for record in _wandb_records(path):
            if record.WhichOneof("record_type") != "history" or chain == "run":
                continue
            seed, mode = int(chain.split("/")[0].removeprefix("seed_")), chain.split("/")[1]
            step = record.history.step.num
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                if key.startswith("samples"):
                    images[(chain, step)] += key == "samples/_type"
                elif not key.startswith("_"):
                    points.append((seed, mode, key, step, json.loads(item.value_json)))
    assert set(images.values()) == {1} and len(images) == 6  # one grid per generation of each chain
    return points


def _mlflow_points(run_dir: Path) -> list[tuple[int, str, str, int, float]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir.resolve() / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(run_dir.name)
    points = []
    for run in client.search_runs([experiment.experiment_id]):
        if "seed" not in run.data.tags:
            assert {a.path for a in client.list_artifacts(run.info.run_id, "reports")} >= {
                "reports/report.html", "reports/dashboard.png", "reports/lineage.json"}
            continue
        assert run.data.params["generator.kind"] == "gaussian"
        seed, mode = int(run.data.tags["seed"]), run.data.tags["mode"]
        for key in run.data.metrics:
            points.extend((seed, mode, key, m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
    return points


def _mlflow_available() -> None:
    try:
        import mlflow.tracking  # noqa: F401
    except ImportError as exc:  # not installed, or a release broken against this protobuf (mlflow < 2)
        pytest.skip(f"mlflow is not importable here ({exc}); see the README's tracking section")


READERS = {"tensorboard": _tensorboard_points, "wandb": _wandb_points, "mlflow": _mlflow_points}


@pytest.fixture(autouse=True)
def _wandb_at_home_in_tmp(tmp_path, monkeypatch):
    """W&B's service keeps its own debug log and settings under the user's home: the test's instead."""
    for variable in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "XDG_CACHE_HOME"):
        monkeypatch.setenv(variable, str(tmp_path / "home" / variable.lower()))


@pytest.mark.parametrize("name", ["tensorboard", "wandb", "mlflow"])
def test_each_tracker_logs_every_metrics_row_once_across_a_kill_and_a_resume(name, tmp_path):
    if name == "mlflow":
        _mlflow_available()
    run_dir = tmp_path / "run"
    _run(run_dir, [name], kill=True)
    ledger = json.loads((run_dir / "tracking" / f"{name}.json").read_text())
    assert ledger["steps"] == {"seed_0/replace": [0, 1, 2], "seed_0/accumulate": [0]}
    _run(run_dir, [name])
    _check(_expected(run_dir), READERS[name](run_dir))
    lineage = json.loads((run_dir / "tracking" / "lineage.json").read_text())
    assert sorted(lineage["chains"]) == ["seed_0/accumulate", "seed_0/replace"]
    chain = lineage["chains"]["seed_0/replace"]
    kinds = {node["kind"] for node in chain["nodes"]}
    assert chain["generation"] == 2 and "source" in kinds and len(chain["nodes"]) >= 4  # gen 2 … gen 0 … real
    if name == "tensorboard":  # an extended run adds the new seed's chains, and nothing twice
        _run(run_dir, [name], seeds=2)
        expected = _expected(run_dir)
        assert {key[0] for key in expected} == {0, 1}
        _check(expected, READERS[name](run_dir))


def test_a_missing_or_failing_tracker_is_one_note_and_changes_nothing(tmp_path, monkeypatch):
    from imgsynth.reports.tables import collect_metrics

    plain = Experiment(recipe_from_dict(TINY), tmp_path / "plain" / "run", progress=False).run()
    # The wandb package missing; TensorBoard's store unwritable (a file where its folder goes).
    monkeypatch.setitem(sys.modules, "wandb", None)
    tracked = tmp_path / "tracked" / "run"
    tracked.mkdir(parents=True)
    (tracked / "tensorboard").write_text("not a folder")
    session = TrackingSession(tracked, ["wandb", "tensorboard"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Experiment(recipe_from_dict(TINY), tracked, progress=False, after_task=session.sync).run()
        session.finish()
    notes = [str(w.message) for w in caught if issubclass(w.category, Note) and "tracking" in str(w.message)]
    assert len(notes) == 2, notes
    assert "wandb is not installed" in notes[0] and "imgsynth[wandb]" in notes[0]
    assert notes[1].startswith("tracking: tensorboard failed") and "tensorboard" in notes[1]
    pd.testing.assert_frame_equal(collect_metrics(tracked), collect_metrics(plain))
    assert sorted(p.name for p in tracked.iterdir()) == sorted([*(p.name for p in plain.iterdir()), "tensorboard"])


class Recording(Tracker):
    """A throwaway tracker: what it was asked to log, in a list (the test's)."""

    calls: ClassVar[list] = []

    def start(self, name, run_id, *, group, tags, params):
        self.calls.append(("start", dict(tags), run_id))
        return run_id or f"id-{len(self.calls)}"

    def log_metrics(self, step, values):
        self.calls.append(("metrics", step, dict(values)))

    def log_image(self, key, step, image):
        self.calls.append(("image", step, image.shape))

    def log_files(self, paths):
        self.calls.append(("files", sorted(p.name for p in paths)))

    def finish(self):
        self.calls.append(("finish",))


def test_a_registered_tracker_runs_end_to_end_through_the_cli(run_cli, tmp_path):
    recipe = tmp_path / "tiny.toml"
    import tomli_w

    recipe.write_text(tomli_w.dumps({**TINY, "tracking": {"trackers": ["throwaway"]}}), encoding="utf-8")
    Recording.calls = []
    with TRACKERS.registered("throwaway", Recording):
        code, _, err = run_cli("run", recipe, "--out", tmp_path / "run", "--workers", "1")
    assert code == 0, err
    logged = [c for c in Recording.calls if c[0] == "metrics"]
    tags = [c[1] for c in Recording.calls if c[0] == "start"]
    # generation 0 (base task) in both chains, then each chain's generations: one start each, then the run's
    assert [t.get("mode") for t in tags] == ["replace", "accumulate", "replace", "accumulate", None]
    points = []
    chain = None
    for call in Recording.calls:
        if call[0] == "start":
            chain = call[1]
        elif call[0] == "metrics":
            points.extend((int(chain["seed"]), chain["mode"], k, call[1], v) for k, v in call[2].items())
    _check(_expected(tmp_path / "run"), points)
    assert len(logged) == 6 and next(c for c in Recording.calls if c[0] == "files")[1] == sorted(
        ["class_heatmap.png", "dashboard.png", "findings.csv", "grids.png", "lineage.json", "metrics.csv",
         "report.html"])
    assert "tracking" in (tmp_path / "run" / "config.toml").read_text()


def test_unknown_trackers_are_refused_before_the_run(run_cli, tmp_path):
    with pytest.raises(RecipeError, match=r"\[tracking\] trackers: unknown tracker\(s\) \['wandbb'\]"):
        recipe_from_dict({**TINY, "tracking": {"trackers": ["wandbb"]}})
    code, _, err = run_cli("run", "smoke", "--out", tmp_path / "run", "--track", "tensorbord")
    assert code != 0 and "tensorbord" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_mlflow_store_is_the_run_folders_unless_the_user_names_one(monkeypatch, tmp_path):
    from imgsynth.tracking.session import mlflow_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert mlflow_uri("") is None and mlflow_uri("http://tracking:5000") == "http://tracking:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")  # MLflow's own convention wins
    assert mlflow_uri("http://tracking:5000") == "sqlite:///elsewhere.db"
