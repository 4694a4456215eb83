"""An exact-theory generator: per class, a Gaussian fitted to the training images' pixels.

Fitting is closed form (mean and covariance of the flattened uint8 pixels, in float64), so what a
recursive loop does to it has closed-form expectations (``assets/experiments/gaussian-theory.toml``):
with the maximum-likelihood covariance (divide by n) the expected variance shrinks by (n − 1)/n per
generation under ``replace``, with the unbiased one (divide by n − 1) it stays, while the mean random-walks.
Sampling draws each image from its own seed (``work.image_seed``), rounds to uint8 and writes an
ImageSet like any other generator, in fixed shards, so sets are byte-identical however they are resumed.

Covariance: ``full`` (D × D; D = pixels × channels) or, for large images, the top ``rank`` principal
directions plus the residual diagonal (a probabilistic-PCA-style low-rank + diagonal model).

A model folder holds ``gaussian.safetensors`` (per class ``mean`` and a ``factor`` F with Σ = F Fᵀ, plus
``residual`` for the low-rank model) and ``imgsynth_gaussian.json`` (classes, image shape, options,
training set, per-class counts, the weights' sha256).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from imgsynth.imageset import ImageSet, ImageSetWriter, Sample
from imgsynth.locking import folder_lock
from imgsynth.pipelines.work import balanced_work, shards
from imgsynth.provenance import sha256_file, software_versions

MODEL_FILE = "imgsynth_gaussian.json"
WEIGHTS_FILE = "gaussian.safetensors"
ESTIMATORS = ("mle", "unbiased")


@dataclass
class GaussianOptions:
    """``estimator``: "mle" (covariance / n) or "unbiased" (/ (n − 1)); ``rank``: 0 for the full covariance,
    else the number of principal directions kept (plus the residual diagonal); ``shard_size``: images per
    shard when sampling."""

    estimator: str = "mle"
    rank: int = 0
    shard_size: int = 256

    def validate(self) -> GaussianOptions:
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {self.estimator!r}")
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 0:
            raise ValueError(f"rank must be a whole number ≥ 0 (0: full covariance), got {self.rank!r}")
        if not isinstance(self.shard_size, int) or self.shard_size < 1:
            raise ValueError(f"shard_size must be a whole number ≥ 1, got {self.shard_size!r}")
        return self


def fit_class(pixels: np.ndarray, options: GaussianOptions) -> dict[str, np.ndarray]:
    """Mean and covariance factor of one class's flattened images (N, D) in float64."""
    n = len(pixels)
    mean = pixels.mean(axis=0)
    centred = pixels - mean
    divisor = n if options.estimator == "mle" else n - 1
    if divisor < 1:
        raise ValueError(f"the unbiased estimator needs at least 2 images per class, got {n}")
    covariance = centred.T @ centred / divisor
    values, vectors = np.linalg.eigh(covariance)
    values = np.clip(values, 0.0, None)  # round-off can make a zero eigenvalue slightly negative
    if options.rank and options.rank < len(values):
        top = np.argsort(values)[::-1][:options.rank]
        factor = vectors[:, top] * np.sqrt(values[top])
        residual = np.clip(np.diag(covariance) - (factor ** 2).sum(axis=1), 0.0, None)
        return {"mean": mean, "factor": factor, "residual": np.sqrt(residual)}
    return {"mean": mean, "factor": vectors * np.sqrt(values)}


class GaussianGenerator:
    """The ``gaussian`` generator kind (see the module docstring)."""

    kind: ClassVar[str] = "gaussian"
    Options: ClassVar[type] = GaussianOptions

    def __init__(self, options: GaussianOptions | None = None) -> None:
        self.options = (options or GaussianOptions()).validate()

    def fit(self, train_set: ImageSet, out: Path, seed: int, progress: bool = True) -> Path:
        """Fit every class of ``train_set`` (``seed`` is unused: the fit is deterministic); returns ``out``."""
        from safetensors.numpy import save_file

        out = Path(out)
        with folder_lock(out):
            info_path = out / MODEL_FILE
            record = {"training_set": train_set.id, "options": asdict(self.options)}
            if info_path.is_file():
                done = json.loads(info_path.read_text(encoding="utf-8"))
                if {k: done.get(k) for k in record} == record:
                    return out
                raise ValueError(f"{out}: already holds a Gaussian fitted to another set or with other options")
            images = train_set.as_array().astype(np.float64)
            shape = list(images.shape[1:])
            flat = images.reshape(len(images), -1)
            labels = np.asarray(train_set.labels)
            tensors: dict[str, np.ndarray] = {}
            counts = {}
            for index, name in enumerate(train_set.classes):
                members = flat[labels == index]
                if len(members) == 0:
                    continue  # a class lost in an earlier generation stays lost
                counts[name] = len(members)
                tensors.update({f"{index}.{key}": value for key, value in fit_class(members, self.options).items()})
            out.mkdir(parents=True, exist_ok=True)
            tmp = out / f".{WEIGHTS_FILE}.tmp"
            save_file(tensors, str(tmp))
            os.replace(tmp, out / WEIGHTS_FILE)
            info = {**record, "kind": self.kind, "classes": train_set.classes, "fitted_counts": counts,
                    "image_shape": shape, "image_mode": train_set.manifest.get("image_mode") or "L",
                    "parent": {"id": train_set.id, "path": os.path.relpath(train_set.root, out.absolute()),
                               "kind": train_set.kind},
                    "weights_sha256": sha256_file(out / WEIGHTS_FILE), "software": software_versions()}
            tmp = out / f".{MODEL_FILE}.tmp"
            tmp.write_text(json.dumps(info, indent=2), encoding="utf-8")
            os.replace(tmp, info_path)  # its presence marks a finished model
        return out

    @staticmethod
    def load(model_dir: Path) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
        """(info, per-class parameters) of a fitted model, the weights checked against the recorded hash."""
        from safetensors.numpy import load_file

        model_dir = Path(model_dir)
        info_path = model_dir / MODEL_FILE
        if not info_path.is_file():
            raise ValueError(f"{model_dir}: not a Gaussian model folder ({MODEL_FILE} is missing)")
        info = json.loads(info_path.read_text(encoding="utf-8"))
        weights = model_dir / WEIGHTS_FILE
        if sha256_file(weights) != info.get("weights_sha256"):
            raise ValueError(f"{weights}: content does not match the sha256 recorded in {MODEL_FILE}")
        parameters: dict[str, dict[str, np.ndarray]] = {}
        for key, value in load_file(str(weights)).items():
            index, _, name = key.partition(".")
            parameters.setdefault(info["classes"][int(index)], {})[name] = value
        return info, parameters

    def sample(self, model_dir: Path, out: Path, per_class: int, seed: int, generation: int | None = None,
               progress: bool = True) -> ImageSet:
        """``per_class`` images of every fitted class, each from its own seed; resumes by shard."""
        model_dir = Path(model_dir).absolute()
        info, parameters = self.load(model_dir)
        classes = [c for c in info["classes"] if c in parameters]
        out = Path(out).absolute()
        parent = (model_dir / info["parent"]["path"]).resolve()
        writer = ImageSetWriter(
            out, info["classes"], kind="generated",
            parents=[{"id": info["parent"]["id"], "path": os.path.relpath(parent, out), "kind": info["parent"]["kind"]}],
            generator={"pipeline": "GaussianGenerator", "model_path": str(model_dir),
                       "weights_sha256": info["weights_sha256"], "seed": seed, "options": info["options"]},
            config={"per_class": per_class, "generation": generation, "classes": classes},
            license={"name": "generated", "note": "sampled from a Gaussian fitted to the parent set; "
                     "the parent's license terms apply"})
        work = shards(balanced_work(classes, per_class, seed), self.options.shard_size)
        done = writer.done_shards
        shape = info["image_shape"]
        for index, items in enumerate(work):
            if index in done:
                continue
            writer.write_shard(index, [Sample(self._draw(parameters[item.label], item.seed, shape), item.label,
                                              seed=item.seed, image_id=item.image_id,
                                              extra={"generation": generation}) for item in items])
        return writer.finalize()

    @staticmethod
    def _draw(parameters: dict[str, np.ndarray], seed: int, shape: list[int]) -> Image.Image:
        rng = np.random.default_rng(seed)
        factor = parameters["factor"]
        pixels = parameters["mean"] + factor @ rng.standard_normal(factor.shape[1])
        if "residual" in parameters:
            pixels = pixels + parameters["residual"] * rng.standard_normal(len(pixels))
        array = np.clip(np.rint(pixels), 0, 255).astype(np.uint8).reshape(shape)
        return Image.fromarray(array)  # 2-D uint8 is "L", H×W×3 is "RGB": the fitted set's own mode
