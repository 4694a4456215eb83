"""The model folder ``imgsynth train`` writes, and loading it back (checked before anything is allocated).

Layout (a diffusers pipeline folder: ``DiffusionPipeline.from_pretrained`` loads it, see ``pipeline.py``)::

    model_index.json                         the pipeline: its class, components and config (class names, ...)
    unet/config.json                         the EMA UNet (save_pretrained, safetensors only)
    unet/diffusion_pytorch_model.safetensors
    scheduler/scheduler_config.json          the training (DDPM) scheduler; samplers derive from it
    imgsynth_model.json                      classes, training config, parent set, weights' sha256; written
                                             last, its presence marks a finished model
    checkpoints/                             training checkpoints (removed at the end unless kept)

Folders written before the pipeline layout (``config.json``, ``scheduler_config.json`` and the weights at
the root, no ``model_index.json``) still load and sample identically: ``ModelLayout`` finds the files.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import torch

from imgsynth.atomic_files import write_json_atomic
from imgsynth.compute import resolve_device
from imgsynth.field_types import is_int, json_kind
from imgsynth.imageset import ImageSet
from imgsynth.pipelines import device as devices
from imgsynth.pipelines.base import read_info_file
from imgsynth.pipelines.conditional.config import (TrainConfig, _jsonable, _short,
                                                   train_config_from_dict)
from imgsynth.pipelines.conditional.model import (ModelSize, check_model_size, estimate_size,
                                                  noise_scheduler_config, unet_config)
from imgsynth.provenance import sha256_file, software_versions
from imgsynth.safe_loading import PICKLE_SUFFIXES

PIPELINE_NAME = "ClassConditionalDiffusion"
PIPELINE_CLASS = "ClassConditionalPipeline"  # the _class_name model_index.json records (pipeline.py)
MODEL_FILE = "imgsynth_model.json"
PIPELINE_FILE = "model_index.json"
UNET_FOLDER, SCHEDULER_FOLDER = "unet", "scheduler"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
WEIGHTS_FILE = f"{UNET_FOLDER}/{WEIGHTS_NAME}"
UNET_CONFIG_FILE = f"{UNET_FOLDER}/config.json"
SCHEDULER_CONFIG_FILE = f"{SCHEDULER_FOLDER}/scheduler_config.json"
MODEL_FILES = (PIPELINE_FILE, MODEL_FILE, UNET_CONFIG_FILE, SCHEDULER_CONFIG_FILE, WEIGHTS_FILE)
CHECKPOINTS = "checkpoints"
MODEL_FORMAT_VERSION = 2  # 2: diffusers pipeline layout; 1: the flat layout before it


@dataclass(frozen=True)
class ModelLayout:
    """Where a model folder keeps its UNet and scheduler: the pipeline layout, or the flat one of format 1."""

    root: Path
    unet: Path
    scheduler: Path

    @classmethod
    def of(cls, folder: Path) -> ModelLayout:
        """The layout of ``folder``: the pipeline layout when ``model_index.json`` is there, else the flat one."""
        if (folder / PIPELINE_FILE).is_file():
            return cls(folder, folder / UNET_FOLDER, folder / SCHEDULER_FOLDER)
        return cls(folder, folder, folder)

    @property
    def weights(self) -> Path:
        return self.unet / WEIGHTS_NAME

    @property
    def unet_config(self) -> Path:
        return self.unet / "config.json"

    @property
    def scheduler_config(self) -> Path:
        return self.scheduler / "scheduler_config.json"


def _check_safetensors_only(folder: Path, what: str) -> None:
    places = [folder, folder / UNET_FOLDER]
    unsafe = sorted(p.name for place in places if place.is_dir() for p in place.iterdir()
                    if p.suffix in PICKLE_SUFFIXES)
    if unsafe:
        raise ValueError(f"{folder}: {what} holds pickle-based weights ({', '.join(unsafe)}) and no safetensors "
                         "file; imgsynth loads weights from safetensors only (pickle files can run code). "
                         "Convert them with safetensors.torch.save_file first")


def _write_model_info(out: Path, config: TrainConfig, data: Any, image_set: ImageSet,
                      identity: Mapping[str, Any], stats: Mapping[str, Any]) -> None:
    """Write ``imgsynth_model.json`` after the weights: its presence marks a finished model."""
    info = {
        "format_version": MODEL_FORMAT_VERSION,
        "pipeline": PIPELINE_NAME,
        "classes": data.classes,
        "null_class_index": len(data.classes),
        "class_captions": data.class_captions,
        "image_size": [config.image_size, config.image_size],
        "image_mode": data.mode,
        "channels": config.channels,
        "patch_size": config.patch_size,
        "sampler": config.sampler,
        "sample_steps": config.sample_steps,
        "guidance_scale": config.guidance_scale,
        "training_config": _jsonable(dataclasses.asdict(config)),
        "config_fingerprint": identity["config"],
        "parent": {"id": image_set.id, "path": os.path.relpath(image_set.root, out), "kind": image_set.kind,
                   "num_images": len(image_set),
                   # only for a set with training weights, so an unweighted model's file stays as it was
                   **({"training_weights_sha256": identity["weights"]} if "weights" in identity else {})},
        "weights": WEIGHTS_FILE,
        "weights_sha256": sha256_file(ModelLayout.of(out).weights),
        "stats": dict(stats),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "software": software_versions(),
    }
    write_json_atomic(out / MODEL_FILE, info, indent=2)



def is_model_dir(path: str | os.PathLike) -> bool:
    """True when ``path`` is a folder written by ``train`` (it holds ``imgsynth_model.json``)."""
    return (Path(path) / MODEL_FILE).is_file()


def is_pipeline_of_this_kind(path: str | os.PathLike) -> bool:
    """True when ``path`` holds a ``model_index.json`` naming the class-conditional pipeline ``train`` writes:
    a model folder of this kind even when ``imgsynth_model.json`` is missing (an unfinished or damaged one,
    refused when read, never taken for a text-to-image pipeline)."""
    index = Path(path) / PIPELINE_FILE
    if not index.is_file():
        return False
    try:
        return read_info_file(index).get("_class_name") == PIPELINE_CLASS
    except ValueError:
        return False


def read_model_info(model_dir: str | os.PathLike) -> dict[str, Any]:
    """The model dir's ``imgsynth_model.json``, checked: the fields sampling needs, their types, and the
    training config (``TrainConfig.validate``), which the other fields must agree with."""
    return _read_model_info(Path(model_dir))[0]


def _read_model_info(folder: Path) -> tuple[dict[str, Any], TrainConfig]:
    """(the info as stored, its validated training config); ``ValueError`` naming the file and field."""
    path = folder / MODEL_FILE
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such model folder")
    if not path.is_file():
        if is_pipeline_of_this_kind(folder):
            raise ValueError(f"{folder}: not a complete conditional model folder: {MODEL_FILE} is missing (training "
                             "did not finish, or the file was removed)")
        raise ValueError(f"{folder}: not a class-conditional model folder ({MODEL_FILE} is missing)")
    info = read_info_file(path)
    for key in ("classes", "image_size", "image_mode", "patch_size", "training_config", "weights_sha256"):
        if key not in info:
            raise ValueError(f"{path}: missing field {key!r}")
    config = train_config_from_dict(info["training_config"], f"{path}: training_config")
    _check_info_fields(info, config, path)
    return info, config


def _check_info_fields(info: Mapping[str, Any], config: TrainConfig, path: Path) -> None:
    """The fields sampling reads directly: right types, and in agreement with the training config."""
    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise ValueError(f"{path}: {key} = {_short(info.get(key))} {what}")

    classes = info["classes"]
    need(isinstance(classes, list) and len(classes) >= 2 and all(isinstance(c, str) and c for c in classes)
         and len(set(classes)) == len(classes), "classes", "should be a list of two or more distinct class names")
    side = config.image_size
    need(info["image_size"] == [side, side] and all(is_int(v) for v in info["image_size"]), "image_size",
         f"should be [{side}, {side}], the training config's image_size")
    need(info["image_mode"] == ("L" if config.channels == 1 else "RGB"), "image_mode",
         f"should be {'L' if config.channels == 1 else 'RGB'!r} for the training config's channels={config.channels}")
    need(is_int(info["patch_size"]) and info["patch_size"] == config.patch_size, "patch_size",
         f"should be {config.patch_size}, the training config's patch_size")
    need(is_int(info.get("channels", config.channels)) and info.get("channels", config.channels) == config.channels,
         "channels", f"should be {config.channels}, the training config's channels")
    null_class = info.get("null_class_index", len(classes))
    need(is_int(null_class) and null_class == len(classes), "null_class_index",
         f"should be {len(classes)}, the number of classes")
    digest = info["weights_sha256"]
    need(isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest),
         "weights_sha256", "should be a sha256 hex digest")
    captions = info.get("class_captions") or {}  # sampling reads a null as no captions
    need(isinstance(captions, dict) and all(isinstance(v, str) for v in captions.values()), "class_captions",
         "should map class names to caption strings")
    parent = info.get("parent") or {}
    need(isinstance(parent, dict) and all(isinstance(parent.get(k, ""), str) for k in ("id", "path")), "parent",
         "should be an object whose id and path are strings")
    version = info.get("format_version", MODEL_FORMAT_VERSION)
    need(is_int(version) and version <= MODEL_FORMAT_VERSION, "format_version",
         f"should be an integer ≤ {MODEL_FORMAT_VERSION} (a newer format needs a newer imgsynth)")


def check_model_dir(model_dir: str | os.PathLike,
                    device: torch.device | None = None) -> tuple[dict[str, Any], TrainConfig, ModelSize]:
    """Check a model folder without allocating the model: (info, training config, size estimate).

    Reads ``imgsynth_model.json``, ``config.json`` and ``scheduler_config.json``; both configs must be the
    ones ``imgsynth train`` writes for the training config (``unet_config``, ``noise_scheduler_config``,
    diffusers' defaults for the rest), and the model must fit ``check_model_size`` for one image on
    ``device``. Every problem is a ``ValueError`` naming the file and the field; this takes milliseconds.
    """
    folder = Path(model_dir).absolute()
    info, config = _read_model_info(folder)
    from diffusers import DDPMScheduler, UNet2DModel

    layout = ModelLayout.of(folder)
    unet = _read_model_file(layout.unet_config)
    _check_config_file(layout.unet_config, _square_sample(unet), UNet2DModel,
                       _square_sample(unet_config(config, len(info["classes"]))))
    _check_config_file(layout.scheduler_config, _read_model_file(layout.scheduler_config),
                       DDPMScheduler, noise_scheduler_config(config))
    size = estimate_size(config, len(info["classes"]))
    check_model_size(size, 1, layout.unet_config, device)
    return info, config, size


def _read_model_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ValueError(f"{path.parent}: missing {path.name} (a model folder from `imgsynth train` holds "
                         f"{', '.join(MODEL_FILES)})")
    return read_info_file(path)


def _square_sample(values: Mapping[str, Any]) -> dict[str, Any]:
    # diffusers takes sample_size as one side or [height, width]; compare both spellings as the pair.
    side = values.get("sample_size")
    return {**values, "sample_size": [side, side]} if is_int(side) else dict(values)


def _check_config_file(path: Path, found: Mapping[str, Any], cls: type, expected: Mapping[str, Any]) -> None:
    """``found`` holds what ``imgsynth train`` writes for ``cls``: ``expected`` for the fields the training
    config decides, ``cls``'s defaults for the rest; keys ``cls`` does not know are ignored, as diffusers
    ignores them."""
    defaults = _init_defaults(cls)
    name = found.get("_class_name", cls.__name__)
    if name != cls.__name__:
        raise ValueError(f"{path}: _class_name = {_short(name)} should be {cls.__name__!r}")
    for key in sorted(set(found) | set(expected)):
        if key.startswith("_") or (key not in expected and key not in defaults):
            continue
        want = _jsonable(expected[key] if key in expected else defaults[key])
        source = f"the training config in {MODEL_FILE}" if key in expected else "`imgsynth train`"
        if key not in found:
            if key in defaults and _same(_jsonable(defaults[key]), want):
                continue  # an older diffusers left it out; the default is what training used
            raise ValueError(f"{path}: missing field {key!r} ({source} gives {_short(want)})")
        value = found[key]
        if _same(value, want):
            continue
        kinds = {json_kind(value), json_kind(want)}
        if len(kinds) > 1 and not kinds <= {"an integer", "a number"}:
            example = "" if want is None else f" ({_short(want)})"
            raise ValueError(f"{path}: {key} = {_short(value)} should be {json_kind(want)}{example}")
        raise ValueError(f"{path}: {key} = {_short(value)} does not match {source}, which gives {_short(want)}")


@functools.lru_cache(maxsize=None)
def _init_defaults(cls: type) -> Mapping[str, Any]:
    import inspect

    parameters = inspect.signature(cls.__init__).parameters.values()
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


def _same(a: Any, b: Any) -> bool:
    """JSON equality that keeps true apart from 1 (Python's ``True == 1``) and NaN apart from itself."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return type(a) is type(b) and a == b


@dataclass
class LoadedModel:
    """A trained model ready to sample: the UNet on its device, its info and the training scheduler config."""

    unet: Any
    info: dict[str, Any]
    scheduler_config: dict[str, Any]
    weights_hash: str
    device: torch.device
    path: Path = field(default_factory=Path)
    size: ModelSize | None = None


def load_model(model_dir: str | os.PathLike, device: str | None = None) -> LoadedModel:
    """Load a model dir (safetensors weights only), verifying the weights against the recorded hash.

    The folder is checked first (``check_model_dir``), so a damaged or hand-edited one is refused in one
    line before anything is allocated.
    """
    from diffusers import DDPMScheduler

    folder = Path(model_dir).absolute()
    resolved = resolve_device(device)
    info, _, size = check_model_dir(folder, resolved)
    layout = ModelLayout.of(folder)
    weights = layout.weights
    if not weights.is_file():
        _check_safetensors_only(folder, "the model folder")
        raise ValueError(f"{folder}: no weights ({weights.relative_to(folder)} is missing); the training run did not finish "
                         "or the file was removed")
    weights_hash = check_weights(layout, info)
    unet = devices.prepare_module(_load_unet(layout), resolved).eval()
    scheduler_config = dict(DDPMScheduler.load_config(layout.scheduler))
    return LoadedModel(unet, info, scheduler_config, weights_hash, resolved, folder, size)


def check_weights(layout: ModelLayout, info: Mapping[str, Any]) -> str:
    """The weights' sha256 when it is the one ``imgsynth_model.json`` records; else a ``ValueError`` naming
    the file (loading and "already finished" both check it)."""
    weights = layout.weights
    if not weights.is_file():
        _check_safetensors_only(layout.root, "the model folder")
        raise ValueError(f"{layout.root}: no weights ({weights.relative_to(layout.root)} is missing); the training "
                         "run did not finish or the file was removed")
    weights_hash = sha256_file(weights)
    if weights_hash != info["weights_sha256"]:
        raise ValueError(f"{weights}: content does not match the sha256 recorded in {MODEL_FILE}; "
                         "the weights were changed or damaged after training")
    return weights_hash


def _load_unet(layout: ModelLayout) -> Any:
    from diffusers import UNet2DModel
    from safetensors import SafetensorError

    from imgsynth.safe_loading import UnsafeFileError, first_line

    try:
        return UNet2DModel.from_pretrained(layout.unet, use_safetensors=True)
    except SafetensorError as exc:  # the recorded hash matched, but the file is no safetensors (a renamed pickle)
        raise UnsafeFileError(f"{layout.weights}: not a readable safetensors file ({first_line(exc)})") from None
    except (ValueError, RuntimeError, KeyError) as exc:
        # Both configs were edited alike, so they agree, but the weights (whose hash matched) are the trained ones.
        text = " ".join(str(exc).split()) or type(exc).__name__
        reason = text.split(". ")[0].replace("Cannot load because ", "")[:300]
        raise ValueError(f"{layout.weights}: does not fit {layout.unet_config.name} and the training config in "
                         f"{MODEL_FILE} ({reason}); were they edited after training?") from exc

