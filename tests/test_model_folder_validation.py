"""A model folder is checked before anything is allocated: every damaged or hand-edited field is one line.

One tiny model is trained per module; each test tampers a copy of it and runs `imgsynth generate`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from imgsynth.imageset import ImageSet
from imgsynth.pipelines import conditional

MODEL, UNET, SCHEDULER = conditional.MODEL_FILE, conditional.UNET_CONFIG_FILE, conditional.SCHEDULER_CONFIG_FILE


def _edit(name: str, change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        values = json.loads((folder / name).read_text())
        change(values)
        (folder / name).write_text(json.dumps(values))
    return apply


def _set(name: str, **values: Any) -> Callable[[Path], None]:
    return _edit(name, lambda d: d.update(values))


def _set_training(**values: Any) -> Callable[[Path], None]:
    return _edit(MODEL, lambda d: d["training_config"].update(values))


def _both(*edits: Callable[[Path], None]) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        for edit in edits:
            edit(folder)
    return apply


def _write(name: str, text: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).write_text(text)


def _remove(name: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).unlink()


def _drop(name: str, key: str) -> Callable[[Path], None]:
    return _edit(name, lambda d: d.pop(key))


# (id, tampering, file the message names, what else it must say)
TAMPERED = [
    ("unet-layers-100000", _set(UNET, layers_per_block=100000), UNET, "layers_per_block = 100000"),
    ("unet-wide-channels", _set(UNET, block_out_channels=[100000, 100000]), UNET, "block_out_channels"),
    ("unet-sample-size", _set(UNET, sample_size=[30000, 30000]), UNET, "sample_size = [30000, 30000]"),
    ("unet-string-int", _set(UNET, layers_per_block="1"), UNET, "layers_per_block = '1' should be an integer"),
    ("unet-bool-int", _set(UNET, layers_per_block=True), UNET, "layers_per_block = True should be an integer"),
    ("unet-time-embedding", _set(UNET, time_embedding_dim=10**7), UNET, "time_embedding_dim"),
    ("unet-class-name", _set(UNET, _class_name="UNet2DConditionModel"), UNET, "_class_name"),
    ("unet-missing-layers", _drop(UNET, "layers_per_block"), UNET, "missing field 'layers_per_block'"),
    ("unet-malformed", _write(UNET, '{"layers_per_block": 1,'), UNET, "malformed JSON"),
    ("unet-not-object", _write(UNET, "[1, 2]"), UNET, "should hold a JSON object"),
    ("unet-missing", _remove(UNET), UNET, "missing config.json (a model folder from `imgsynth train` holds"),
    ("scheduler-missing", _remove(SCHEDULER), SCHEDULER, "missing scheduler_config.json"),
    ("scheduler-malformed", _write(SCHEDULER, "{nope"), SCHEDULER, "malformed JSON"),
    ("scheduler-timesteps", _set(SCHEDULER, num_train_timesteps=10**9), SCHEDULER, "num_train_timesteps = 1000000000"),
    ("scheduler-beta-schedule", _set(SCHEDULER, beta_schedule="cubic"), SCHEDULER, "beta_schedule = 'cubic'"),
    ("scheduler-prediction", _set(SCHEDULER, prediction_type="sample"), SCHEDULER, "prediction_type = 'sample'"),
    ("scheduler-trained-betas", _set(SCHEDULER, trained_betas=[0.1] * 1000), SCHEDULER, "trained_betas"),
    ("scheduler-string-int", _set(SCHEDULER, num_train_timesteps="1000"), SCHEDULER, "should be an integer"),
    ("info-malformed", _write(MODEL, "{"), MODEL, "malformed JSON"),
    ("info-image-size", _set(MODEL, image_size=[30000, 30000]), MODEL, "image_size = [30000, 30000]"),
    ("info-image-size-string", _set(MODEL, image_size="16x16"), MODEL, "image_size = '16x16'"),
    ("info-patch-string", _set(MODEL, patch_size="2"), MODEL, "patch_size = '2'"),
    ("info-image-mode", _set(MODEL, image_mode="CMYK"), MODEL, "image_mode = 'CMYK'"),
    ("info-classes-string", _set(MODEL, classes="0123456789"), MODEL, "classes = '0123456789'"),
    ("info-classes-one", _set(MODEL, classes=["0"]), MODEL, "classes = ['0']"),
    ("info-null-class", _set(MODEL, null_class_index=3), MODEL, "null_class_index = 3"),
    ("info-sha-number", _set(MODEL, weights_sha256=12), MODEL, "weights_sha256 = 12"),
    ("info-training-not-object", _set(MODEL, training_config=[1]), MODEL, "training_config must be a JSON object"),
    ("info-training-string-int", _set_training(layers_per_block="1"), MODEL, "layers_per_block = '1' should be int"),
    ("info-training-list", _set_training(block_out_channels="8,16"), MODEL, "block_out_channels = '8,16' should be"),
    ("info-training-nan", _set_training(guidance_scale=math.nan), MODEL, "guidance_scale must be a finite number"),
    ("info-training-image-size", _set_training(image_size=30000), MODEL, "image_size must lie in [4, 1024]"),
    ("info-training-groups-zero", _set_training(norm_num_groups=0), MODEL, "norm_num_groups must be at least 1"),
    ("both-layers-100000", _both(_set(UNET, layers_per_block=100000), _set_training(layers_per_block=100000)),
     MODEL, "layers_per_block must lie in [1, 16], got 100000"),
    # Both files are wide; the training config is checked first now (TrainConfig.validate bounds the size too).
    ("both-wide-channels", _both(_set(UNET, block_out_channels=[100000, 200000]),
                                 _set_training(block_out_channels=[100000, 200000])),
     MODEL, "block_out_channels=[100000, 200000], layers_per_block=1, sample_size=8 give a UNet of ~"),
    ("both-sizes-30000", _both(_set(UNET, sample_size=15000), _set_training(image_size=30000),
                               _set(MODEL, image_size=[30000, 30000])), MODEL, "image_size must lie in [4, 1024]"),
    ("both-fits-not-the-weights", _both(_set(UNET, block_out_channels=[16, 32]),
                                        _set_training(block_out_channels=[16, 32])),
     conditional.WEIGHTS_FILE, "does not fit config.json"),
] + [(f"info-missing-{key}", _drop(MODEL, key), MODEL, f"missing field {key!r}")
     for key in ("classes", "image_size", "image_mode", "patch_size", "training_config", "weights_sha256")]


def _tampered_copy(smoke_model: Path, tmp_path: Path, tamper: Callable[[Path], None]) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(smoke_model, folder)
    tamper(folder)
    return folder


def _refused_in_one_line(run_cli, model: Path, out: Path, *extra: str) -> str:
    start = time.perf_counter()
    code, stdout, stderr = run_cli("generate", model, out, "--per-class", "1", "--no-progress", *extra)
    assert time.perf_counter() - start < 5.0, "the check must come before any work"
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr + stdout
    assert not out.exists(), "no output set may be written"
    return lines[0]


@pytest.mark.parametrize("tamper, file_name, detail", [t[1:] for t in TAMPERED], ids=[t[0] for t in TAMPERED])
def test_cli_generate_refuses_a_tampered_model_folder_in_one_line(smoke_model, tmp_path, run_cli, tamper,
                                                                   file_name, detail):
    folder = _tampered_copy(smoke_model, tmp_path, tamper)
    line = _refused_in_one_line(run_cli, folder, tmp_path / "out")
    assert str(folder) in line and file_name in line and detail in line, line


def test_the_check_is_fast_and_builds_no_model(smoke_model, tmp_path, monkeypatch):
    from diffusers import UNet2DModel

    huge = _tampered_copy(smoke_model, tmp_path, _both(_set(UNET, block_out_channels=[100000, 200000]),
                                                       _set_training(block_out_channels=[100000, 200000])))
    conditional.check_model_dir(smoke_model)  # imports diffusers once, outside the timing

    def no_building(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the check built a UNet")

    monkeypatch.setattr(UNet2DModel, "__init__", no_building)
    start = time.perf_counter()
    info, config, size = conditional.check_model_dir(smoke_model)
    with pytest.raises(ValueError, match=r"~4\.\d+e\+12 parameters, more than imgsynth loads"):
        conditional.check_model_dir(huge)
    assert time.perf_counter() - start < 0.5
    assert config == conditional.preset("smoke") and info["classes"] == [str(d) for d in range(10)]
    assert size.parameters < 100_000


def test_memory_limit_is_stated_and_set_by_the_environment(smoke_model, tmp_path, run_cli, monkeypatch):
    monkeypatch.setenv(conditional.MAX_MODEL_GB_ENV, "0.0001")
    line = _refused_in_one_line(run_cli, smoke_model, tmp_path / "out")
    assert f"{UNET}: block_out_channels=[8, 16]" in line and "to sample one image" in line
    assert f"0.0001 GB limit (set by {conditional.MAX_MODEL_GB_ENV}" in line
    monkeypatch.setenv(conditional.MAX_MODEL_GB_ENV, "lots")
    line = _refused_in_one_line(run_cli, smoke_model, tmp_path / "out")
    assert f"{conditional.MAX_MODEL_GB_ENV}='lots'" in line


def test_a_batch_over_the_limit_is_refused_before_sampling(smoke_model, tmp_path, monkeypatch):
    size = conditional.estimate_size(conditional.preset("smoke"), 10)
    monkeypatch.setenv(conditional.MAX_MODEL_GB_ENV, str(size.sampling_bytes(2) / 1e9))
    with pytest.raises(ValueError, match="to sample a batch of 64, over the .* or lower the batch size"):
        conditional.sample(smoke_model, tmp_path / "big", 1, batch_size=64, steps=2, progress=False)
    small = conditional.sample(smoke_model, tmp_path / "small", 1, batch_size=2, steps=2, progress=False)
    assert len(small) == 10


def test_the_default_limit_is_the_machine_memory(monkeypatch):
    monkeypatch.delenv(conditional.MAX_MODEL_GB_ENV, raising=False)
    limit, source = conditional.max_model_bytes(torch.device("cpu"))
    assert limit > 1e9 and source == "this machine's RAM"


def test_an_untampered_copy_loads_and_samples_byte_identically(smoke_model, tmp_path):
    copy = _tampered_copy(smoke_model, tmp_path, lambda folder: None)
    one = conditional.sample(smoke_model, tmp_path / "one", 1, steps=2, seed=3, progress=False)
    two = conditional.sample(copy, tmp_path / "two", 1, steps=2, seed=3, progress=False)
    assert [one.read_bytes(i) for i in range(len(one))] == [two.read_bytes(i) for i in range(len(two))]
    assert ImageSet.open(tmp_path / "two").id == one.id


@pytest.mark.parametrize("name", list(conditional.PRESETS))
@pytest.mark.parametrize("change", [{}, {"layers_per_block": 2, "mid_block": True, "attention_levels": (0,)},
                                    {"layers_per_block": 3, "mid_block": False, "attention_levels": (1,)}])
def test_parameter_estimate_is_the_built_unets_count(name, change):
    config = dataclasses.replace(conditional.preset(name), **change)
    with torch.device("meta"):  # shapes only, nothing allocated
        unet = conditional.build_unet(config, 10)
    assert conditional.estimate_size(config, 10).parameters == sum(p.numel() for p in unet.parameters())


@pytest.mark.parametrize("change, message", [
    ({"layers_per_block": 17}, r"layers_per_block must lie in \[1, 16\], got 17"),
    ({"layers_per_block": "2"}, "layers_per_block = '2' should be int"),
    ({"image_size": 2048}, r"image_size must lie in \[4, 1024\], got 2048"),
    ({"norm_num_groups": 0}, "norm_num_groups must be at least 1"),
    ({"beta_schedule": "cubic"}, "beta_schedule must be one of"),
    ({"num_train_timesteps": 10**6}, r"num_train_timesteps must lie in \[2, 100000\]"),
    ({"sample_steps": 1001}, r"sample_steps must lie in \[1, num_train_timesteps = 1000\], got 1001"),
    ({"guidance_scale": math.inf}, "guidance_scale must be a finite number"),
    ({"lr": math.nan}, "lr must be positive, got nan"),
    ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
    ({"ema_power": 0.0}, "ema_power must be positive"),
    ({"weight_decay": -1.0}, "weight_decay must be ≥ 0"),
    ({"snr_gamma": "5"}, r"snr_gamma = '5' should be float \| None"),
])
def test_train_config_rules_refuse_out_of_range_and_mistyped_fields(change, message):
    with pytest.raises(ValueError, match=message):
        conditional.preset("smoke", **change)


def test_train_config_from_dict_ignores_fields_of_newer_versions_and_fills_missing_ones():
    values = dataclasses.asdict(conditional.preset("smoke"))
    values["from_the_future"] = 1
    del values["compile"]
    assert conditional.train_config_from_dict(values, "here") == conditional.preset("smoke")
