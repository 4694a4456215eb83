"""Classifier checkpoints on disk, and the loaded classifier every consumer uses.

A checkpoint is a folder::

    model.safetensors   weights (safetensors only: pickle-based formats can run code when loaded)
    classifier.json     classes, architecture, training config, preprocessing, training set and metrics

Writes go to a hidden sibling folder renamed into place, so a folder holding ``classifier.json`` is
always a whole checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn

from imgsynth.classifier.architectures import (ClassifierError, build_model, check_arch, classification_head,
                                                logits_of)
from imgsynth.classifier.config import ClassifierConfig
from imgsynth.classifier.preprocessing import Preprocessing
from imgsynth.compute import resolve_device

WEIGHTS = "model.safetensors"
METADATA = "classifier.json"
FORMAT_VERSION = 1


class LoadedClassifier:
    """A classifier in eval mode with its classes and preprocessing.

    ``features``, ``logits`` and ``predict_proba`` take a batch of *preprocessed* images (stack the
    outputs of ``preprocess``), run without gradients on the classifier's device, and return float32
    tensors on the CPU.
    """

    def __init__(self, model: nn.Module, classes: list[str], preprocessing: Preprocessing,
                 metadata: Mapping[str, Any], path: Path | None, device: torch.device) -> None:
        self.model = model.eval().to(device)
        self.classes = list(classes)
        self.preprocessing = preprocessing
        self.metadata = dict(metadata)
        self.config = ClassifierConfig.from_dict(metadata.get("config", {}))
        self.path = path
        self.device = device
        self._head = classification_head(self.model)

    def __repr__(self) -> str:
        return (f"LoadedClassifier({str(self.path)!r}, arch={self.arch}, classes={len(self.classes)}, "
                f"input={self.mode} {self.image_size[0]}x{self.image_size[1]}, device={self.device})")

    @property
    def arch(self) -> str:
        return str(self.metadata["model"]["arch"])

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the model input."""
        return self.preprocessing.image_size

    @property
    def mode(self) -> str:
        """PIL mode of the model input: 'L' (1 channel) or 'RGB'."""
        return self.preprocessing.mode

    @property
    def feature_dim(self) -> int:
        return int(self._head.in_features)

    @property
    def preprocess(self) -> Callable[[Image.Image], torch.Tensor]:
        """PIL image → normalised float tensor (C, H, W) at the classifier's size and mode."""
        return self.preprocessing

    def _run(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        captured: list[torch.Tensor] = []
        hook = self._head.register_forward_hook(lambda _m, inputs, _o: captured.append(inputs[0]))
        try:
            with torch.inference_mode():
                logits = logits_of(self.model(batch.to(self.device, torch.float32)))
        finally:
            hook.remove()
        return captured[0].flatten(1).float().cpu(), logits.float().cpu()

    def features(self, batch: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features (the classification head's input), shape (N, D)."""
        return self._run(batch)[0]

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Class scores before softmax, shape (N, K), columns in ``classes`` order."""
        return self._run(batch)[1]

    def predict_proba(self, batch: torch.Tensor) -> torch.Tensor:
        """Class probabilities, shape (N, K), columns in ``classes`` order."""
        return torch.softmax(self.logits(batch), dim=1)


def save_checkpoint(model: nn.Module, metadata: Mapping[str, Any], out_dir: Path) -> Path:
    """Write weights and metadata to a hidden sibling folder, then rename it to ``out_dir``."""
    out_dir = Path(out_dir).absolute()
    partial = out_dir.parent / f".{out_dir.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    save_model(model, str(partial / WEIGHTS), metadata={"format": "pt", "arch": str(metadata["model"]["arch"])})
    (partial / METADATA).write_text(json.dumps(metadata, indent=2), encoding="utf-8")
    if out_dir.exists():
        out_dir.rmdir()  # train_classifier checked it is empty
    os.rename(partial, out_dir)
    return out_dir


def check_output_folder(out_dir: Path) -> None:
    """Refuse to train into a folder that holds anything (a finished checkpoint is never overwritten)."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        what = "a classifier checkpoint" if (out_dir / METADATA).is_file() else "other files"
        raise ClassifierError(f"{out_dir}: already holds {what}; remove it or choose another folder")


def checkpoint_dir(checkpoint: str | os.PathLike) -> Path:
    """The checkpoint folder for a path to the folder or to one of its two files; clear errors otherwise."""
    path = Path(checkpoint).absolute()
    if path.is_file():
        if path.name in (WEIGHTS, METADATA):
            return path.parent
        raise ClassifierError(f"{path}: not a classifier checkpoint; expected a folder with {WEIGHTS} and "
                              f"{METADATA} (only safetensors weights are loaded, never pickled "
                              f"{path.suffix or 'files'})")
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such classifier checkpoint")
    if not (path / WEIGHTS).is_file():
        others = sorted(p.name for p in path.iterdir() if p.suffix in (".pt", ".pth", ".bin", ".ckpt", ".pkl"))
        found = f"; found {', '.join(others)}, but only safetensors weights are loaded (pickle can run code)" \
            if others else ""
        raise ClassifierError(f"{path}: missing {WEIGHTS}{found}")
    if not (path / METADATA).is_file():
        raise ClassifierError(f"{path}: missing {METADATA} (classes and preprocessing); not a classifier checkpoint")
    return path


def read_metadata(path: Path) -> dict[str, Any]:
    """A checkpoint folder's ``classifier.json``, checked against its schema (:func:`check_metadata`): one
    ``ClassifierError`` naming the file and the field for anything malformed, mistyped or inconsistent."""
    from imgsynth.errors import ImageSetError
    from imgsynth.set_schema import parse_json

    file = path / METADATA
    try:
        metadata = parse_json(file.read_bytes(), str(file))
    except ImageSetError as exc:  # bad JSON or UTF-8, huge numbers, absurd nesting: already names the file
        raise ClassifierError(str(exc)) from None
    check_metadata(metadata, file)
    return metadata


def check_metadata(metadata: Any, file: Path) -> None:
    """The schema of ``classifier.json``: classes (distinct class names), model (arch, num_classes matching the
    classes, in_channels matching the preprocessing, width), preprocessing (mode, image_size, numeric finite
    mean and std, one per channel) and config (each field of the type ``ClassifierConfig`` declares)."""
    from dataclasses import fields

    from imgsynth.field_types import is_int, json_kind, type_problem
    from imgsynth.set_schema import MAX_SIDE, label_problem

    def need(ok: bool, field: str, value: Any, what: str) -> None:
        if not ok:
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:60] + "…"
            raise ClassifierError(f"{file}: {field} = {shown} ({json_kind(value)}) {what}")

    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    if not isinstance(metadata, dict):
        raise ClassifierError(f"{file}: expected a JSON object, found {json_kind(metadata)}")
    for key in ("classes", "model", "preprocessing"):
        if key not in metadata:
            raise ClassifierError(f"{file}: missing field {key!r}")
    version = metadata.get("format_version", FORMAT_VERSION)
    need(is_int(version), "format_version", version, "should be an integer")
    if version > FORMAT_VERSION:
        raise ClassifierError(f"{file}: format_version {version} is newer than this imgsynth reads ({FORMAT_VERSION})")
    classes = metadata["classes"]
    need(isinstance(classes, list) and bool(classes) and all(label_problem(c) is None for c in classes)
         and len(set(classes)) == len(classes), "classes", classes, "should be a non-empty list of distinct class names")
    model = metadata["model"]
    need(isinstance(model, dict), "model", model, "should be an object (arch, num_classes, in_channels, width)")
    for key in ("arch", "num_classes", "in_channels"):
        if key not in model:
            raise ClassifierError(f"{file}: missing field 'model.{key}'")
    need(isinstance(model["arch"], str), "model.arch", model["arch"], "should be an architecture name")
    try:
        check_arch(model["arch"])
    except ClassifierError as exc:
        raise ClassifierError(f"{file}: model.arch: {exc}") from None
    need(is_int(model["num_classes"]) and model["num_classes"] == len(classes), "model.num_classes",
         model["num_classes"], f"should be {len(classes)}, the number of classes")
    need(model["in_channels"] in (1, 3) and is_int(model["in_channels"]), "model.in_channels", model["in_channels"],
         "should be 1 or 3")
    width = model.get("width")
    need(width is None or (is_int(width) and width >= 1), "model.width", width, "should be a whole number ≥ 1 or null")
    prep = metadata["preprocessing"]
    need(isinstance(prep, dict), "preprocessing", prep, "should be an object (mode, image_size, mean, std)")
    for key in ("mode", "image_size", "mean", "std"):
        if key not in prep:
            raise ClassifierError(f"{file}: missing field 'preprocessing.{key}'")
    channels = 1 if prep["mode"] == "L" else 3
    need(prep["mode"] in ("L", "RGB") and channels == model["in_channels"], "preprocessing.mode", prep["mode"],
         f"should be {'L' if model['in_channels'] == 1 else 'RGB'!r} for model.in_channels = {model['in_channels']}")
    size = prep["image_size"]
    need(isinstance(size, list) and len(size) == 2 and all(is_int(v) and 1 <= v <= MAX_SIDE for v in size),
         "preprocessing.image_size", size, f"should be [height, width] in pixels (1..{MAX_SIDE})")
    for key in ("mean", "std"):
        values = prep[key]
        need(isinstance(values, list) and len(values) == channels and all(number(v) for v in values)
             and (key == "mean" or all(v > 0 for v in values)), f"preprocessing.{key}", values,
             f"should be a list of {channels} finite number(s){', each > 0' if key == 'std' else ''}")
    config = metadata.get("config", {})
    need(isinstance(config, dict), "config", config, "should be an object (the training configuration)")
    for spec in fields(ClassifierConfig):
        if spec.name in config:
            problem = type_problem(str(spec.type), config[spec.name])
            need(problem is None, f"config.{spec.name}", config[spec.name], problem or "")
    try:
        ClassifierConfig.from_dict(config)
    except ClassifierError as exc:
        raise ClassifierError(f"{file}: {exc}") from None


def load_classifier(checkpoint: str | os.PathLike | LoadedClassifier,
                    device: str | torch.device | None = None) -> LoadedClassifier:
    """Load a checkpoint folder (or pass a loaded one through) onto ``device`` (None: CUDA if available)."""
    if isinstance(checkpoint, LoadedClassifier):
        return checkpoint
    path = checkpoint_dir(checkpoint)
    metadata = read_metadata(path)
    spec = metadata["model"]
    model = build_model(spec["arch"], int(spec["num_classes"]), int(spec["in_channels"]), int(spec.get("width") or 16))
    try:
        load_model(model, str(path / WEIGHTS), strict=True)
    except (SafetensorError, RuntimeError, OSError) as exc:
        raise ClassifierError(f"{path / WEIGHTS}: cannot load as {spec['arch']} weights ({exc})") from exc
    if len(metadata["classes"]) != int(spec["num_classes"]):
        raise ClassifierError(f"{path / METADATA}: {len(metadata['classes'])} classes but the model has "
                              f"{spec['num_classes']} outputs")
    return LoadedClassifier(model, metadata["classes"], Preprocessing.from_dict(metadata["preprocessing"]),
                            metadata, path, resolve_device(device))
