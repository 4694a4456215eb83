"""Every registered generator kind honours one contract, and a new kind needs no edit outside its own file.

The contract: ``fit`` returns at once for the same fit and refuses another one in the same folder;
``sample`` gives the same set (id and bytes) for the same seed, resumes an interrupted write to the
same set, and refuses a model folder whose weights were changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Mapping

import numpy as np
import pytest

from imgsynth.experiments.config import load_recipe
from imgsynth.experiments.loop import Experiment
from imgsynth.experiments.recipes import shipped_recipes
from imgsynth.imageset import ImageSet, ImageSetWriter, verify
from imgsynth.pipelines import base
from imgsynth.pipelines.base import GENERATORS, PerClassGenerator, build_generator, register_generator
from imgsynth.sources import import_source


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> ImageSet:
    return import_source("gaussian:per_class=40", tmp_path_factory.mktemp("real") / "real", size=4, mode="L")[0]


@pytest.mark.parametrize("kind", sorted(GENERATORS))
def test_every_registered_kind_fits_samples_and_resumes_the_same_set(kind, real, tmp_path, monkeypatch):
    generator = build_generator(kind, {"shard_size": 8})
    model = generator.fit(real, tmp_path / "model", seed=0, progress=False)
    stamp = (model / base.MODEL_INFO).stat().st_mtime_ns
    assert generator.fit(real, tmp_path / "model", seed=0) == model
    assert (model / base.MODEL_INFO).stat().st_mtime_ns == stamp  # the same fit: nothing redone
    whole = generator.sample(model, tmp_path / "whole", per_class=10, seed=4, generation=1)
    assert verify(whole.root).ok and whole.counts == {c: 10 for c in real.classes}

    calls = {"n": 0}
    real_write = ImageSetWriter.write_shard

    def crash_after_one_shard(self, index, samples):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed after one shard")
        return real_write(self, index, samples)

    monkeypatch.setattr(ImageSetWriter, "write_shard", crash_after_one_shard)
    with pytest.raises(KeyboardInterrupt):
        generator.sample(model, tmp_path / "resumed", per_class=10, seed=4, generation=1)
    monkeypatch.setattr(ImageSetWriter, "write_shard", real_write)
    resumed = generator.sample(model, tmp_path / "resumed", per_class=10, seed=4, generation=1)
    assert resumed.id == whole.id
    assert [resumed.read_bytes(i) for i in range(len(resumed))] == [whole.read_bytes(i) for i in range(len(whole))]
    assert generator.sample(model, tmp_path / "other", per_class=10, seed=5).id != whole.id

    other = build_generator(kind, {"shard_size": 16})
    with pytest.raises(ValueError, match="already holds a model fitted to another set or with other options"):
        other.fit(real, tmp_path / "model", seed=0)
    (model / base.MODEL_WEIGHTS).write_bytes((model / base.MODEL_WEIGHTS).read_bytes()[:-1] + b"\0")
    with pytest.raises(ValueError, match="does not match the sha256"):
        generator.sample(model, tmp_path / "tampered", per_class=2, seed=4)


@dataclass
class MidpointOptions:
    shard_size: int = 64

    def validate(self) -> MidpointOptions:
        return self


class MidpointGenerator(PerClassGenerator):
    """A throwaway kind defined in this test file: every sample is its class's mean image plus noise."""

    kind: ClassVar[str] = "midpoint"
    Options: ClassVar[type] = MidpointOptions

    def fit_class(self, points: np.ndarray) -> dict[str, np.ndarray]:
        return {"mean": points.astype(np.float64).mean(axis=0)}

    def draw(self, parameters: Mapping[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
        return parameters["mean"] + rng.normal(0.0, 2.0, parameters["mean"].shape)


def test_a_kind_registered_from_a_test_file_runs_through_the_cli_and_the_loop(real, run_cli, tmp_path, monkeypatch):
    monkeypatch.setitem(GENERATORS, "midpoint", "")
    register_generator("midpoint", MidpointGenerator)
    code, _, err = run_cli("train", real.root, tmp_path / "model", "--kind", "midpoint", "--no-progress")
    assert code == 0, err
    code, _, err = run_cli("generate", tmp_path / "model", tmp_path / "samples", "--per-class", "3")
    assert code == 0 and len(ImageSet.open(tmp_path / "samples")) == 3 * len(real.classes), err
    recipe = load_recipe(shipped_recipes()["gaussian-theory"],
                         ['generator.kind="midpoint"', "generator.options={}", "loop.seeds=1", "loop.generations=2"])
    run = Experiment(recipe, tmp_path / "run", progress=False).run()
    assert (run / "seed_0" / "replace" / "gen_1" / "metrics.json").is_file()
