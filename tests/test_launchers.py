"""Under a launcher (torchrun here; ``accelerate launch`` sets the same variables): two CPU processes
over gloo write the one-process set, and train the one-process model.

Training: each process computes half the rows of every global batch after drawing the whole batch's
noise, and DistributedDataParallel averages the gradients, so the result equals one process's up to
float summation order; a run checkpointed by one process resumes with two.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from imgsynth.compute import torch_threads
from imgsynth.imageset import ImageSet
from imgsynth.pipelines import conditional

STEPS, BATCH = 12, 16


def torchrun(*args: str | Path | float, processes: int = 2, module: str = "imgsynth") -> subprocess.CompletedProcess[str]:
    """``torchrun --nproc_per_node N -m imgsynth …`` on CPUs, one torch thread per process.

    With ``module=""`` the first argument names the module to run.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    args = (module, *args) if module else args
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
               "--standalone", "-m", *map(str, args)]
    launcher = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
    try:
        stdout, stderr = launcher.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(launcher.pid, signal.SIGKILL)  # the workers too, not only the launcher
        raise
    return subprocess.CompletedProcess(command, launcher.returncode, stdout, stderr)


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / conditional.WEIGHTS_FILE))


def assert_same_model(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.fixture(scope="module")
def small_set(digits_sets: tuple[ImageSet, ImageSet]) -> ImageSet:
    return digits_sets[1]  # 359 images, ten classes


@pytest.fixture(scope="module")
def one_process_model(small_set: ImageSet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = conditional.preset("smoke", steps=STEPS, batch_size=BATCH, device="cpu")
    with torch_threads(1):
        return conditional.train(small_set, tmp_path_factory.mktemp("one") / "model", config, progress=False)


@pytest.mark.slow
def test_two_processes_train_the_one_process_model(small_set: ImageSet, one_process_model: Path,
                                                   tmp_path: Path) -> None:
    done = torchrun("train", small_set.root, tmp_path / "two", "--preset", "smoke", "--steps", STEPS,
                    "--batch-size", BATCH, "--no-progress")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("model:") == 1  # process 0 reports, the other stays quiet
    assert_same_model(one_process_model, tmp_path / "two")
    info = conditional.read_model_info(tmp_path / "two")
    assert info["stats"]["processes"] == 2
    assert info["config_fingerprint"] == conditional.read_model_info(one_process_model)["config_fingerprint"]
    assert info["parent"]["id"] == small_set.id


@pytest.mark.slow
def test_one_process_checkpoint_resumes_with_two(small_set: ImageSet, one_process_model: Path,
                                                 tmp_path: Path) -> None:
    config = conditional.preset("smoke", steps=STEPS, batch_size=BATCH, device="cpu", checkpoint_every=4,
                                keep_checkpoints=True)
    out = tmp_path / "model"

    def killed_after_eight(step: int, loss: float) -> None:
        if step == 8:
            raise RuntimeError("killed")

    with torch_threads(1), pytest.raises(RuntimeError, match="killed"):
        conditional.train(small_set, out, config, progress=False, callback=killed_after_eight)
    assert (out / conditional.CHECKPOINTS / "step-00000008").is_dir()
    done = torchrun("train", small_set.root, out, "--preset", "smoke", "--steps", STEPS, "--batch-size", BATCH,
                    "--no-progress")
    assert done.returncode == 0, done.stderr[-3000:]
    info = conditional.read_model_info(out)
    assert info["stats"]["resumed_from_step"] == 8 and info["stats"]["processes"] == 2
    assert_same_model(one_process_model, out)


@pytest.mark.slow
def test_a_batch_that_does_not_split_over_the_processes_is_refused(small_set: ImageSet, tmp_path: Path) -> None:
    done = torchrun("train", small_set.root, tmp_path / "model", "--preset", "smoke", "--steps", 2,
                    "--batch-size", 15, "--no-progress")
    assert done.returncode != 0
    assert "batch_size 15 does not split evenly over 2 processes" in done.stderr
    assert not (tmp_path / "model" / conditional.MODEL_FILE).exists()


def test_diffusion_loss_parts_are_the_rows_of_the_whole_batch() -> None:
    """The mean of the parts' losses is the whole batch's loss, for every draw the loss makes."""
    config = conditional.preset("smoke", hflip=True, label_dropout=0.5)
    unet = conditional.build_unet(config, num_classes=3)
    scheduler = conditional.build_noise_scheduler(config)
    x0 = torch.rand(8, 1, 16, 16) * 2 - 1
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])

    def loss(part: tuple[int, int]) -> torch.Tensor:
        rank, world = part
        generator = torch.Generator().manual_seed(7)
        with torch.no_grad():
            return conditional.diffusion_loss(unet, scheduler, x0[rank::world], labels[rank::world], generator,
                                              config, null_class=3, part=part)

    whole = loss((0, 1))
    parts = torch.stack([loss((r, 4)) for r in range(4)])
    torch.testing.assert_close(parts.mean(), whole, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(parts[0], parts[1])  # the parts really are different rows



@pytest.mark.slow
def test_two_processes_generate_the_one_process_set(one_process_model: Path, tmp_path: Path) -> None:
    settings = dict(seed=4, batch_size=4, shard_size=4, guidance_scale=2.0, steps=3)
    with torch_threads(1):
        local = conditional.sample(one_process_model, tmp_path / "local", 3, progress=False, **settings)
    done = torchrun("imgsynth.cli.accelerate_launch", one_process_model, tmp_path / "ranked",
                    "--per-class", 3, "--seed", 4, "--batch-size", 4, "--shard-size", 4, "--guidance", 2.0,
                    "--steps", 3, module="")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "by 2 processes" in done.stdout
    ranked = ImageSet.open(tmp_path / "ranked")
    assert ranked.id == local.id and len(ranked) == 30  # 8 shards, 4 per process
    assert [r.to_row() for r in ranked.records] == [r.to_row() for r in local.records]


def test_device_option_under_a_launcher_is_refused(small_set: ImageSet, run_cli, monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")  # as a launcher sets it; the check comes before any process group
    code, _, err = run_cli("train", small_set.root, tmp_path / "model", "--preset", "smoke", "--device", "cpu")
    assert code != 0
    assert "drop --device" in err
    assert not (tmp_path / "model").exists()
