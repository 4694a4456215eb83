"""Classifier checkpoints on disk, and the loaded classifier every consumer uses.

A checkpoint is a folder::

    model.safetensors   weights (safetensors only: pickle-based formats can run code when loaded)
    classifier.json     classes, architecture, training config, preprocessing, training set and metrics

Writes go to a hidden sibling folder renamed into place, so a folder holding ``classifier.json`` is
always a whole checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn

from imgsynth.classifier.architectures import ClassifierError, build_model, classification_head, logits_of
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
    file = path / METADATA
    try:
        metadata = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as exc:  # bad JSON or UTF-8, huge numbers, absurd nesting
        raise ClassifierError(f"{file}: malformed JSON ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(metadata, dict):
        raise ClassifierError(f"{file}: expected a JSON object")
    for key in ("classes", "model", "preprocessing"):
        if key not in metadata:
            raise ClassifierError(f"{file}: missing field {key!r}")
    if metadata.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
        raise ClassifierError(f"{file}: format_version {metadata['format_version']} is newer than this "
                              f"imgsynth reads ({FORMAT_VERSION})")
    return metadata


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
