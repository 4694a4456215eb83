"""Scale-out backends: the Ray backend and accelerate ranks write the same bytes (same set id) as the local
backend, survive a worker dying mid-shard, resume, and say how to install Ray when it is missing.

One local 2-CPU Ray cluster serves the whole module (starting one costs several seconds on 2 cores).
"""

from __future__ import annotations

import os
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest
from PIL import Image

from imgsynth.distributed import generate
from imgsynth.pipelines.sharding import IncompleteGenerationError, SameSet, SetJob, SetSpec, job_shards
from imgsynth.imageset import ImageSet, ImageSetError, Sample, verify
from imgsynth.pipelines.work import WorkItem, balanced_work

ray = pytest.importorskip("ray")
# Ray workers cannot import this test module; ship the fake generator by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@dataclass
class PatternJob(SetJob):
    """A deterministic stand-in job: each image is noise drawn from its own seed.

    ``crash_on`` names an image id; the first worker to meet it (no ``crash_marker`` file yet; every
    worker when there is no marker) leaves a truncated PNG for it in the partial folder, as a worker
    killed mid-write would, and then dies. ``calls_dir``
    receives one file per ``generate`` call, so tests can count which shards were computed.
    """

    classes: Sequence[str] = ("a", "b", "c")
    per_class: int = 4
    seed: int = 0
    shard_size: int = 3
    num_gpus: float = 0
    crash_on: str | None = None
    crash_marker: str | None = None
    partial_images: str | None = None
    calls_dir: str | None = None
    loaded: bool = field(default=False, compare=False)

    def spec(self, out: Path) -> SetSpec:
        return SetSpec(list(self.classes), generator={"name": "pattern", "seed": self.seed},
                       config={"per_class": self.per_class}, license="cc0-1.0")

    def work(self) -> list[WorkItem]:
        return balanced_work(self.classes, self.per_class, self.seed)

    def load(self) -> None:
        self.loaded = True

    def generate(self, items: Sequence[WorkItem]) -> list[Sample]:
        assert self.loaded, "generate() before load()"
        if self.calls_dir:
            (Path(self.calls_dir) / f"{items[0].image_id}.{uuid.uuid4().hex}").touch()
        dies = self.crash_on in {item.image_id for item in items}
        if dies and self.crash_marker is not None:
            dies = not Path(self.crash_marker).exists()
            Path(self.crash_marker).touch()
        if dies:
            label = self.crash_on.rsplit("-", 1)[0]
            half_written = Path(self.partial_images) / label / f"{self.crash_on}.png"
            half_written.parent.mkdir(parents=True, exist_ok=True)
            half_written.write_bytes(b"\x89PNG\r\n")
            os._exit(1)
        samples = []
        for item in items:
            pixels = np.random.default_rng(item.seed).integers(0, 256, (8, 8), dtype=np.uint8)
            samples.append(Sample(Image.fromarray(pixels, "L"), item.label, f"a {item.label}", item.seed,
                                  item.image_id, {"generator": "pattern"}))
        return samples


def partial_images(out: Path) -> Path:
    return out.parent / f".{out.name}.partial" / "images"


def computed_shards(calls_dir: Path, generator: PatternJob) -> list[int]:
    """Shard index of every generate() call recorded in ``calls_dir`` (with repeats)."""
    first_ids = {shard[0].image_id: i for i, shard in enumerate(job_shards(generator))}
    return sorted(first_ids[p.name.split(".")[0]] for p in calls_dir.iterdir())


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def local_pattern_set(tmp_path_factory: pytest.TempPathFactory) -> ImageSet:
    return generate(PatternJob(), tmp_path_factory.mktemp("local") / "set")


# --------------------------------------------------------------------------------------------- local

def test_a_job_gets_the_default_hooks_of_the_contract() -> None:
    job = PatternJob()
    assert isinstance(job, SetJob) and job.same_set == SameSet() and job.prepare_writer(None) is None


def test_local_backend_writes_every_item_once(local_pattern_set: ImageSet) -> None:
    assert verify(local_pattern_set.root).ok
    assert len(local_pattern_set) == 12
    assert local_pattern_set.counts == {"a": 4, "b": 4, "c": 4}
    expected = {item.image_id: item.seed for item in PatternJob().work()}
    assert {Path(r.file_name).stem: r.seed for r in local_pattern_set.records} == expected


def test_shard_size_and_resume_do_not_change_the_set(local_pattern_set: ImageSet, tmp_path: Path) -> None:
    assert generate(PatternJob(shard_size=5), tmp_path / "other").id == local_pattern_set.id


def test_local_backend_resumes_only_missing_shards(local_pattern_set: ImageSet, tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    calls.mkdir()
    out = tmp_path / "set"
    crashing = PatternJob(calls_dir=str(calls))
    # A first run that stops after shard 1: simulate by writing shards 0 and 1 only.
    writer = crashing.spec(out).writer(out)
    crashing.load()
    for i, items in enumerate(job_shards(crashing)[:2]):
        writer.write_shard(i, crashing.generate(items))
    resumed = generate(crashing, out)
    assert computed_shards(calls, crashing) == [0, 1, 2, 3]  # 0 and 1 once each, not again
    assert resumed.id == local_pattern_set.id


def test_a_finished_set_is_returned_and_another_jobs_set_refused(local_pattern_set: ImageSet, tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    calls.mkdir()
    again = generate(PatternJob(calls_dir=str(calls)), local_pattern_set.root)
    assert again.id == local_pattern_set.id and not any(calls.iterdir())
    with pytest.raises(ImageSetError, match="already holds an ImageSet made with other settings"):
        generate(PatternJob(seed=1), local_pattern_set.root)


def test_bad_backend_arguments_are_explained(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown backend 'spark'"):
        generate(PatternJob(), tmp_path / "x", backend="spark")
    with pytest.raises(ValueError, match="local backend runs one worker"):
        generate(PatternJob(), tmp_path / "x", workers=2)
    with pytest.raises(ValueError, match="workers must be at least 1"):
        generate(PatternJob(), tmp_path / "x", backend="ray", workers=0)


def test_without_ray_the_backend_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from imgsynth.distributed import RayNotInstalled

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(RayNotInstalled, match=r"pip install 'imgsynth\[ray\]'"):
        generate(PatternJob(), tmp_path / "x", backend="ray")


def test_features_command_without_ray_says_how_to_install(monkeypatch: pytest.MonkeyPatch, run_cli,
                                                          local_pattern_set: ImageSet) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    code, out, err = run_cli("features", local_pattern_set.root, "--features", "inception", "--backend", "ray")
    assert code == 2
    assert "pip install 'imgsynth[ray]'" in err and "Traceback" not in err


def test_generate_command_without_ray_says_how_to_install(monkeypatch: pytest.MonkeyPatch, run_cli,
                                                          tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    code, out, err = run_cli("generate", tmp_path / "some-pipeline", tmp_path / "out", "--per-class", "2",
                             "--classes", "kitchen,bedroom", "--backend", "ray", "--workers", "2")
    assert code == 2
    assert "pip install 'imgsynth[ray]'" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_generate_command_refuses_options_of_the_other_generator_kind(run_cli, tmp_path: Path) -> None:
    code, _, err = run_cli("generate", tmp_path / "pipe", tmp_path / "out", "--per-class", "2",
                           "--noise-temperature", "0.5", "--backend", "ray")
    assert code == 2 and "unknown option(s) ['noise_temperature'] for generator kind 'text2image'" in err
    code, _, err = run_cli("generate", tmp_path / "pipe", tmp_path / "out", "--per-class", "2",
                           "--address", "auto")
    assert code == 2 and "--address applies to --backend ray only" in err


# --------------------------------------------------------------------------------------------- ranks

def test_rank_shards_cover_every_shard_once() -> None:
    from imgsynth.distributed.ranks import rank_shards

    split = [rank_shards(10, r, 3) for r in range(3)]
    assert sorted(i for part in split for i in part) == list(range(10))
    assert split[1] == [1, 4, 7]
    with pytest.raises(ValueError, match="rank must be in"):
        rank_shards(10, 3, 3)


def test_launch_ranks_write_their_shards_and_rank_zero_finalizes(local_pattern_set: ImageSet,
                                                                 tmp_path: Path) -> None:
    """Two ranks as threads with a real barrier, as `accelerate launch` runs two processes."""
    import threading

    from imgsynth.distributed.ranks import generate_on_rank

    out = tmp_path / "set"
    calls = tmp_path / "calls"
    calls.mkdir()
    barrier = threading.Barrier(2, timeout=30)
    results: dict[int, object] = {}

    def rank(r: int) -> None:
        results[r] = generate_on_rank(PatternJob(calls_dir=str(calls)), out, rank=r, world_size=2,
                                      barrier=barrier.wait)

    threads = [threading.Thread(target=rank, args=(r,)) for r in (1, 0)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results[1] is None
    assert isinstance(results[0], ImageSet) and results[0].id == local_pattern_set.id
    assert computed_shards(calls, PatternJob()) == [0, 1, 2, 3]  # each shard once, by one rank


# --------------------------------------------------------------------------------------------- ray

@pytest.mark.ray
@pytest.mark.slow
def test_ray_two_workers_one_dying_mid_shard_write_the_local_set(ray_cluster, local_pattern_set: ImageSet,
                                                                 tmp_path: Path) -> None:
    out = tmp_path / "set"
    calls = tmp_path / "calls"
    calls.mkdir()
    marker = tmp_path / "crashed"
    crashing = PatternJob(crash_on="b-000002", crash_marker=str(marker),
                                partial_images=str(partial_images(out)), calls_dir=str(calls))
    result = generate(crashing, out, backend="ray", workers=2)
    assert marker.exists(), "no worker died; the test did not test anything"
    assert computed_shards(calls, crashing) == [0, 1, 2, 2, 3]  # shard 2 recomputed after the death, once
    assert verify(result.root).ok  # the truncated PNG was replaced and nothing is stray
    assert result.id == local_pattern_set.id
    assert [r.file_name for r in result.records] == [r.file_name for r in local_pattern_set.records]
    for i in range(len(result)):
        assert result.read_bytes(i) == local_pattern_set.read_bytes(i)


@pytest.mark.ray
@pytest.mark.slow
def test_ray_job_that_keeps_failing_stops_then_one_worker_resumes(ray_cluster, local_pattern_set: ImageSet,
                                                                  tmp_path: Path) -> None:
    out = tmp_path / "set"
    calls = tmp_path / "calls"
    calls.mkdir()
    poisoned = PatternJob(crash_on="b-000002", partial_images=str(partial_images(out)), calls_dir=str(calls))
    with pytest.raises(IncompleteGenerationError, match="ActorDiedError.*run the same command again to resume"):
        generate(poisoned, out, backend="ray", workers=1, retries=0)
    assert not out.exists()
    kept = sorted(int(p.name[6:12]) for p in (out.parent / f".{out.name}.partial" / "shards").iterdir())
    assert 2 not in kept
    for p in calls.iterdir():
        p.unlink()
    healed = PatternJob(calls_dir=str(calls))
    assert generate(healed, out, backend="ray", workers=1).id == local_pattern_set.id
    assert computed_shards(calls, healed) == sorted(set(range(4)) - set(kept))


def mean_colour_extractor():
    """A stand-in FeatureExtractor: each image's mean and a fixed random projection of its pixels."""
    import torch

    from imgsynth.metrics.features import FeatureExtractor

    class MeanColourExtractor(FeatureExtractor):
        name = id = "mean-colour"
        preprocessing = "flatten"
        device = torch.device("cpu")
        projection = torch.randn(64, 5, generator=torch.Generator().manual_seed(0))

        def preprocess(self, image: Image.Image) -> torch.Tensor:
            return torch.from_numpy(np.asarray(image, dtype=np.float32).reshape(-1).copy())

        def forward(self, batch: torch.Tensor) -> torch.Tensor:
            return torch.cat([batch.mean(1, keepdim=True), batch @ self.projection], dim=1)

    return MeanColourExtractor()


@pytest.mark.ray
@pytest.mark.slow
def test_ray_feature_extraction_fills_the_metrics_cache_with_the_local_features(
        ray_cluster, local_pattern_set: ImageSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from imgsynth.distributed.features import warm_feature_cache
    from imgsynth.metrics.features import cached_features

    extractor = mean_colour_extractor()
    local = extractor.extract(local_pattern_set, batch_size=2)
    path = warm_feature_cache(local_pattern_set, extractor, cache_dir=tmp_path, workers=2, batch_size=2, chunk_size=3)
    assert path.is_file()
    # The metrics engine now reads the cache instead of extracting again.
    monkeypatch.setattr(type(extractor), "extract", lambda *a, **k: pytest.fail("cache miss: extracted again"))
    cached = cached_features(local_pattern_set, extractor, cache_dir=tmp_path, batch_size=2)
    assert cached.shape == (12, 6)
    assert torch.equal(cached, local)


# --------------------------------------------------------------------------------------------- real generators

@pytest.mark.ray
@pytest.mark.slow
def test_ray_conditional_set_equals_conditional_sample(ray_cluster, smoke_model: Path, tmp_path: Path) -> None:
    from imgsynth.cli.generate import sample_model
    from imgsynth.pipelines import conditional

    from imgsynth.compute import torch_threads

    settings = dict(seed=3, batch_size=4, shard_size=5, guidance_scale=2.0, noise_temperature=0.9)
    with torch_threads(1):  # CPU floats depend on the thread count; every backend computes with one
        local = conditional.sample(smoke_model, tmp_path / "local", 2, progress=False, **settings)
    # What `imgsynth generate MODEL OUT --backend ray --workers 2` runs.
    spread = sample_model(smoke_model, tmp_path / "ray", 2, settings["seed"], {
        "sample_batch_size": 4, "shard_size": 5, "guidance_scale": 2.0, "noise_temperature": 0.9},
        backend="ray", workers=2, progress=False)
    assert spread.id == local.id
    assert verify(spread.root).ok
    assert spread.manifest["generator"] == local.manifest["generator"]
    assert spread.manifest["config"] == local.manifest["config"]
    assert [r.to_row() for r in spread.records] == [r.to_row() for r in local.records]


def test_accelerate_entry_writes_the_generate_text2image_set(tmp_path: Path) -> None:
    from imgsynth.pipelines.base import kind_for_model
    from imgsynth.pipelines.text2image import Text2ImageSamplingJob
    from imgsynth.pipelines.text2image import generate_text2image
    from imgsynth.testing import tiny_text2image_pipeline

    pipe = tiny_text2image_pipeline(tmp_path / "pipe")
    settings = dict(classes=["kitchen", "bedroom"], per_class=2, sample_steps=2, sample_batch_size=2, shard_size=3, seed=5)
    from imgsynth.compute import torch_threads

    with torch_threads(1):  # CPU floats depend on the thread count; every backend computes with one
        local = generate_text2image(pipe, tmp_path / "local", progress=False, device="cpu", **settings)
    kind = kind_for_model(pipe, {"sample_steps": 2, "sample_batch_size": 2, "shard_size": 3, "device": "cpu"})
    assert isinstance(kind.job(pipe, 2, 5, classes=["kitchen", "bedroom"]), Text2ImageSamplingJob)
    # The accelerate entry point, here as its single process (PartialState without a launcher).
    from typer.testing import CliRunner

    from imgsynth.cli.accelerate_launch import app

    launched = CliRunner().invoke(app, [str(pipe), str(tmp_path / "ranked"), "--per-class", "2", "--classes",
                                        "kitchen,bedroom", "--steps", "2", "--batch-size", "2", "--shard-size", "3",
                                        "--seed", "5"])
    assert launched.exit_code == 0, launched.output
    assert "by 1 process" in launched.output
    ranked = ImageSet.open(tmp_path / "ranked")
    assert ranked.id == local.id
    # A finished set is returned as it is when only the batch size differs (generate_text2image's rule).
    wider = kind_for_model(pipe, {"sample_steps": 2, "sample_batch_size": 3, "shard_size": 3, "device": "cpu"})
    again = generate(wider.job(pipe, 2, 5, classes=["kitchen", "bedroom"]), tmp_path / "local")
    assert again.root == local.root and again.manifest["created"] == local.manifest["created"]
    assert ranked.manifest["generator"] == local.manifest["generator"]
    assert [r.to_row() for r in ranked.records] == [r.to_row() for r in local.records]


def test_torch_threads_is_scoped() -> None:
    import torch

    from imgsynth.compute import torch_threads

    before = torch.get_num_threads()
    with torch_threads(before + 1):
        assert torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="cpu_threads must be at least 1"):
        with torch_threads(0):
            pass


class RecordingDataset:
    """Stands in for a Ray dataset to record what the adapter asks ``map_batches`` for."""

    def __init__(self) -> None:
        self.options: dict = {}

    def iter_rows(self):
        return iter([{"shard": np.int64(3)}])


def test_actor_pool_adapter_speaks_the_installed_and_the_older_ray_api(monkeypatch: pytest.MonkeyPatch) -> None:
    from imgsynth.distributed.backend import map_on_actor_pool

    class Current(RecordingDataset):  # Ray ≥ 2.10: compute=ActorPoolStrategy(size=…), extra remote args
        def map_batches(self, fn, *, batch_size=None, compute=None, fn_constructor_args=None, num_cpus=None,
                        num_gpus=None, concurrency=None, **ray_remote_args):
            self.options = dict(compute=compute, concurrency=concurrency, **ray_remote_args)
            return self

    class Older(RecordingDataset):  # only concurrency=, no extra remote args
        def map_batches(self, fn, *, batch_size=None, fn_constructor_args=None, num_cpus=None, num_gpus=None,
                        concurrency=None):
            self.options = dict(concurrency=concurrency)
            return self

    current = Current()
    assert list(map_on_actor_pool(current, object, workers=2, retries=4)) == [{"shard": 3}]
    assert isinstance(current.options["compute"], ray.data.ActorPoolStrategy)
    assert current.options["concurrency"] is None
    assert (current.options["max_restarts"], current.options["max_task_retries"]) == (4, 4)
    older = Older()
    list(map_on_actor_pool(older, object, workers=2))
    assert older.options == {"concurrency": 2}

    class OldStrategy:  # Ray < 2.10: ActorPoolStrategy(min_size, max_size)
        def __init__(self, min_size=None, max_size=None):
            self.bounds = (min_size, max_size)

    monkeypatch.setattr(ray.data, "ActorPoolStrategy", OldStrategy)
    list(map_on_actor_pool(current, object, workers=3))
    assert current.options["compute"].bounds == (3, 3)


class _Unreachable:
    """Ray as seen from a machine where the named cluster does not answer: ``ray.init`` raises ConnectionError."""

    def is_initialized(self) -> bool:
        return False

    def init(self, address: str | None = None, **options: object) -> None:
        raise ConnectionError(f"Could not find any running Ray instance at {address}")

    def shutdown(self) -> None:
        pass


def test_an_unreachable_ray_cluster_is_one_error_line_naming_the_flag_or_variable(small_digits, run_cli, tmp_path,
                                                                                    monkeypatch):
    """`--address` that does not answer, and Ray's own RAY_ADDRESS when no --address is given: one `error:` line
    saying which of the two named the cluster, and nothing cached."""
    from cli_checks import refused

    from imgsynth.distributed import backend

    monkeypatch.setattr(backend, "require_ray", lambda: _Unreachable())
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cache = tmp_path / "cache"
    command = ("features", small_digits.root, "--features", "pixels", "--backend", "ray", "--cache-dir", cache)
    refused(run_cli(*command, "--address", "10.0.0.9:6379"), "no Ray cluster at --address 10.0.0.9:6379",
            "ray start --head")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.8:6379")
    refused(run_cli(*command), "no Ray cluster at RAY_ADDRESS 10.0.0.8:6379")
    assert not list(cache.rglob("*.safetensors"))  # the cache's files (metrics/feature_cache.py)
