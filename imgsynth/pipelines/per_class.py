"""Kinds fitted class by class, in closed form, to flattened uint8 pixels (``gaussian``, ``kde``).

A subclass of :class:`PerClassKind` gives ``name``, ``Options`` (a dataclass with ``validate()`` and
``shard_size``), ``fit_class(points) -> arrays`` and ``draw(arrays, rng) -> flat pixel values``; fitting
(locked, returning at once when done), the model folder (``model.safetensors`` plus
``imgsynth_model_info.json``, checked on load and before a fit is taken as finished: the info's schema,
the weights' hash, and every class's arrays through the kind's ``check_arrays``) and the sampling job
(:class:`PerClassJob`) are shared here.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping, Sequence

import numpy as np

from imgsynth.atomic_files import atomic_path, write_json_atomic
from imgsynth.safe_paths import refuse_links_below
from imgsynth.generator_record import GeneratorRecord
from imgsynth.imageset import ImageSet, Sample, weights_digest
from imgsynth.pipelines.base import MODEL_INFO, GeneratorKind, kind_class, options_from_dict, read_info_file
from imgsynth.pipelines.sharding import SameSet, SetJob, SetSpec
from imgsynth.pipelines.work import WorkItem, balanced_work

if TYPE_CHECKING:
    from PIL import Image

MODEL_WEIGHTS = "model.safetensors"
PIXEL_MAX = 255.0  # the largest uint8 pixel value: bounds what a fit of pixels can hold


def check_shapes(arrays: Mapping[str, np.ndarray], shapes: Mapping[str, tuple[int, ...]], where: str) -> None:
    """Refuse (``ValueError`` starting with ``where``) arrays other than ``shapes`` names, or of other shapes."""
    missing, unknown = sorted(set(shapes) - set(arrays)), sorted(set(arrays) - set(shapes))
    if missing or unknown:
        raise ValueError(f"{where}: arrays {sorted(arrays)}, expected {sorted(shapes)}")
    for name, shape in shapes.items():
        if tuple(arrays[name].shape) != tuple(shape):
            raise ValueError(f"{where}: array {name!r} has shape {list(arrays[name].shape)}, expected {list(shape)}")


def write_model(out: Path, kind: str, tensors: Mapping[str, np.ndarray], info: Mapping[str, Any]) -> Path:
    """Write a fitted model folder: ``model.safetensors`` (numpy arrays) then the info JSON, which marks it whole.

    The info records the kind, the weights' sha256 and the software; callers add classes, options, parent.
    """
    from safetensors.numpy import save_file

    from imgsynth.provenance import sha256_file, software_versions

    out.mkdir(parents=True, exist_ok=True)
    refuse_links_below(out)  # the files below replace what is there; a link there is refused, not replaced
    with atomic_path(out / MODEL_WEIGHTS) as tmp:
        save_file({k: v for k, v in tensors.items()}, str(tmp))
    record = {**info, "kind": kind, "weights_sha256": sha256_file(out / MODEL_WEIGHTS),
              "software": software_versions()}
    write_json_atomic(out / MODEL_INFO, record, indent=2)  # last: the info file marks the folder whole
    return out


def read_model_info(model_dir: Path, kind: str) -> dict[str, Any]:
    """A per-class model folder's ``imgsynth_model_info.json``, checked against the kind's schema (the weights
    are not read): every problem is one ``ValueError`` naming the file and the field."""
    return _read_info(Path(model_dir), kind)[0]


def _read_info(model_dir: Path, kind: str) -> tuple[dict[str, Any], Any]:
    """(the info as stored, its validated options)."""
    info_path = model_dir / MODEL_INFO
    if not info_path.is_file():
        raise ValueError(f"{model_dir}: not a {kind} model folder ({MODEL_INFO} is missing)")
    info = read_info_file(info_path)
    return info, check_model_info(info, kind, info_path)


def check_model_info(info: Mapping[str, Any], kind: str, path: Path) -> Any:
    """The schema of a per-class kind's info file: kind, classes, image_shape, options (through the kind's
    ``Options`` and its ``validate()``), parent and weights_sha256, present and of the right types; returns
    the validated options."""
    from imgsynth.field_types import is_int, json_kind
    from imgsynth.set_schema import MAX_SIDE, label_problem

    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            value = info.get(key)
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:60] + "…"
            raise ValueError(f"{path}: {key} = {shown} ({json_kind(value)}) {what}")

    for key in ("kind", "classes", "image_shape", "options", "parent", "weights_sha256"):
        if key not in info:
            raise ValueError(f"{path}: missing field {key!r}")
    if info["kind"] != kind:
        raise ValueError(f"{path}: a {info['kind']!r} model, not {kind!r}")
    classes = info["classes"]
    need(isinstance(classes, list) and bool(classes) and all(label_problem(c) is None for c in classes)
         and len(set(classes)) == len(classes), "classes", "should be a non-empty list of distinct class names")
    shape = info["image_shape"]
    need(isinstance(shape, list) and len(shape) in (2, 3) and all(is_int(v) and 1 <= v <= MAX_SIDE for v in shape)
         and (len(shape) == 2 or shape[2] in (3, 4)), "image_shape",
         f"should be [height, width] or [height, width, 3 or 4], sides 1..{MAX_SIDE}")
    need(isinstance(info["options"], dict), "options", f"should be an object of {kind} options")
    options = options_from_dict(kind, info["options"], f"{path}: options")
    parent = info["parent"]
    need(isinstance(parent, dict) and all(isinstance(parent.get(k), str) for k in ("id", "path", "kind")),
         "parent", "should be an object whose id, path and kind are strings")
    digest = info["weights_sha256"]
    need(isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest),
         "weights_sha256", "should be a sha256 hex digest")
    need(isinstance(info.get("training_set", ""), str), "training_set", "should be a set id")
    return options


def read_model(model_dir: Path, kind: str | type[PerClassKind]
               ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(info, per-class arrays) of a model folder :func:`write_model` wrote; the info's schema, the weights'
    hash, the tensor names and every fitted class's arrays (shapes, finite values: the kind's
    ``check_arrays``) are checked.

    Tensor names are ``<class index>.<name>``; the result maps each class name to its arrays.
    """
    from imgsynth.provenance import sha256_file
    from imgsynth.safe_loading import load_safetensors

    cls = kind_class(kind) if isinstance(kind, str) else kind
    model_dir = Path(model_dir)
    info, options = _read_info(model_dir, cls.name)
    weights = model_dir / MODEL_WEIGHTS
    if not weights.is_file() or sha256_file(weights) != info["weights_sha256"]:
        raise ValueError(f"{weights}: missing, or its content does not match the sha256 recorded in {MODEL_INFO}")
    classes = info["classes"]
    parameters: dict[str, dict[str, Any]] = {}
    for key, value in load_safetensors(weights, f"{cls.name} model weights", numpy=True).items():
        index, _, name = key.partition(".")
        if not (index.isascii() and index.isdigit() and int(index) < len(classes) and name):
            raise ValueError(f"{weights}: tensor {key[:60]!r} is not named <class index>.<array> for one of the "
                             f"{len(classes)} classes in {MODEL_INFO}")
        parameters.setdefault(classes[int(index)], {})[name] = value
    if not parameters:
        raise ValueError(f"{weights}: holds no fitted class")
    if issubclass(cls, PerClassKind):
        dim = int(np.prod(info["image_shape"]))
        for label, arrays in parameters.items():
            cls.check_arrays(arrays, dim, options, f"{weights}: class {label!r}")
    return info, parameters


def finished_fit(out: Path, record: Mapping[str, Any], kind: str | type[PerClassKind] | None = None) -> bool:
    """True when ``out`` already holds the model of this fit (``record``'s fields match) and its weights
    pass :func:`read_model` (hash, arrays) when ``kind`` is given; another fit there is an error, so a
    changed recipe never silently reuses a model, and damaged weights are never taken for a finished fit."""

    info_path = Path(out) / MODEL_INFO
    if not info_path.is_file():
        return False
    done = read_info_file(info_path)
    if {k: done.get(k) for k in record} != dict(record):
        raise ValueError(f"{out}: already holds a model fitted to another set or with other options")
    if kind is not None:
        read_model(Path(out), kind)
    return True


def fit_record(train_set: ImageSet, out: Path, options: Any) -> dict[str, Any]:
    """What identifies a fit: the training set and the options (plus where the training set is); for a set
    with training weights also their hash (a set's id covers its images and labels, not their weights)."""
    record = {"training_set": train_set.id, "options": recorded_options(options), "classes": train_set.classes,
              "image_shape": [int(v) for v in np.asarray(train_set.load_image(0)).shape],
              "parent": {"id": train_set.id, "path": os.path.relpath(train_set.root, Path(out).absolute()),
                         "kind": train_set.kind}}
    weights = train_set.weights
    if weights is not None:
        record["weights_of_training_set"] = weights_digest(weights)
    return record



def recorded_options(options: Any) -> dict[str, Any]:
    """The options a fit records: every field, except those the kind added later (its ``Options.added_later``)
    while they keep their default, so that folders fitted before such a field existed are still this fit."""
    later = getattr(type(options), "added_later", ())
    defaults = {f.name: f.default for f in dataclasses.fields(options)}
    return {name: value for name, value in dataclasses.asdict(options).items()
            if not (name in later and value == defaults[name])}


def set_arguments(model_dir: Path, out: Path, info: Mapping[str, Any], classes: list[str], per_class: int,
                  seed: int, generation: int | None, pipeline: str) -> dict[str, Any]:
    """The ImageSetWriter arguments of a per-class kind's sampled set (its generator record and config)."""
    model_dir, out = Path(model_dir).absolute(), Path(out).absolute()
    parent = (model_dir / info["parent"]["path"]).resolve()
    return dict(
        classes=list(info["classes"]), kind="generated",
        parents=[{"id": info["parent"]["id"], "path": os.path.relpath(parent, out), "kind": info["parent"]["kind"]}],
        generator=GeneratorRecord(info["kind"], pipeline, str(model_dir), info["weights_sha256"], seed,
                                  settings={"options": info["options"]}).to_dict(),
        config={"per_class": per_class, "generation": generation, "classes": classes},
        license={"name": "generated", "note": f"sampled from a {info['kind']} model fitted to the parent set; "
                 "the parent's license terms apply"})


def to_image(pixels: np.ndarray, shape: list[int]) -> Image.Image:
    """Round and clip a flat float vector of pixel values to a uint8 image of ``shape`` (H, W[, 3])."""
    from PIL import Image

    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8).reshape(shape))


class PerClassKind(GeneratorKind):
    """A kind fitted class by class, in closed form, to the flattened uint8 pixels of each class."""

    # The ``pipeline`` a sampled set's generator record names. Sets written before the kinds were renamed
    # recorded the class name of the time (``GaussianGenerator``); keeping it lets those sets be found
    # finished when a run resumes.
    pipeline: ClassVar[str]

    def fit_class(self, points: np.ndarray, weights: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The arrays that describe one class, from its flattened images (N, D) and, for a set with a ``weight``
        column, their training weights (N,) (a kind that cannot weigh its fit refuses them with ``ValueError``)."""
        raise NotImplementedError

    @classmethod
    def fitted_moments(cls, arrays: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
        """(per-pixel mean, per-pixel variance) of the distribution one class's arrays sample (before rounding to
        uint8), or None when the kind has no closed form for them (the loop's theory rows need them)."""
        return None

    @classmethod
    def check_arrays(cls, arrays: Mapping[str, np.ndarray], dim: int, options: Any, where: str) -> None:
        """Refuse (``ValueError`` starting with ``where``) one class's arrays that ``fit_class`` could not have
        written for images of ``dim`` pixel values with ``options``: names, shapes, dtypes, finite values.
        The default checks that every array is finite; a kind adds its names and shapes."""
        for name, value in arrays.items():
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                raise ValueError(f"{where}: array {name!r} holds NaN or infinite values")

    def draw(self, parameters: Mapping[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
        """One image's flat pixel values, drawn with ``rng`` from a class's arrays."""
        raise NotImplementedError

    def fit(self, train_set: ImageSet, out: Path, seed: int, progress: bool = True) -> Path:
        """Fit every class of ``train_set`` (deterministic: ``seed`` is unused); returns ``out``."""
        from imgsynth.locking import folder_lock

        out = Path(out)
        with folder_lock(out):
            record = fit_record(train_set, out, self.options)
            if finished_fit(out, record, type(self)):
                return out
            flat = train_set.as_array().reshape(len(train_set), -1)
            labels = np.asarray(train_set.labels)
            weights = train_set.weights
            tensors: dict[str, np.ndarray] = {}
            for index in range(len(train_set.classes)):
                points = flat[labels == index]
                if not len(points):  # a class lost in an earlier generation stays lost
                    continue
                # Only a weighted set passes weights, so a kind's unweighted fit stays exactly what it was.
                arrays = self.fit_class(points) if weights is None else self.fit_class(points, weights[labels == index])
                tensors.update({f"{index}.{k}": v for k, v in arrays.items()})
            return write_model(out, self.name, tensors, record)

    @classmethod
    def load(cls, model_dir: Path) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
        """(info, per-class arrays) of a fitted model, checked (:func:`read_model`)."""
        return read_model(model_dir, cls)

    @classmethod
    def owns(cls, model: str | Path) -> bool:
        """Whether ``model`` is a folder this kind fitted (its info file names the kind)."""
        info = Path(model) / MODEL_INFO
        return info.is_file() and read_info_file(info).get("kind") == cls.name

    @classmethod
    def options_for_model(cls, model: str | Path) -> dict[str, Any]:
        """The options the model was fitted with (sampling takes them as they are), from its checked info."""
        return dict(read_model_info(Path(model), cls.name)["options"])

    def drawer(self, model_dir: Path) -> tuple[dict[str, Any], list[str], Callable[[WorkItem], Image.Image]]:
        """(info, the fitted classes, the function making one work item's image) of a fitted model."""
        info, parameters = self.load(model_dir)
        shape = info["image_shape"]

        def image(item: WorkItem) -> Image.Image:
            return to_image(self.draw(parameters[item.label], np.random.default_rng(item.seed)), shape)

        return info, [c for c in info["classes"] if c in parameters], image

    def job(self, model_dir: Path, per_class: int, seed: int, generation: int | None = None,
            classes: Sequence[str] | None = None) -> PerClassJob:
        """``per_class`` images of every fitted class (or of ``classes``), each drawn from its own seed."""
        return PerClassJob(self, str(Path(model_dir).absolute()), per_class, seed, generation,
                           None if classes is None else list(classes))


def chosen_classes(fitted: list[str], classes: list[str] | None) -> list[str]:
    """``classes`` (in the order asked, once each) when the model knows them all; every fitted class when None."""
    if classes is None:
        return fitted
    unknown = [c for c in classes if c not in fitted]
    if unknown or not classes:
        raise ValueError(f"classes {unknown or classes} are not classes of this model; it knows {fitted}")
    return list(dict.fromkeys(classes))


@dataclasses.dataclass
class PerClassJob(SetJob):
    """A per-class kind's sampling job: one image per work item, drawn from its class's arrays."""

    # The same weights, options, seed and counts make the same set wherever the model folder now lies (the
    # record's model_path is where it was when the set was made).
    same_set: ClassVar[SameSet] = SameSet(generator=("kind", "pipeline", "weights_sha256", "seed", "options"),
                                          config=("per_class", "generation", "classes"))

    kind: PerClassKind
    model_dir: str
    per_class: int
    seed: int
    generation: int | None = None
    classes: list[str] | None = None

    def __post_init__(self) -> None:
        self.shard_size = self.kind.options.shard_size
        self._image: Callable[[WorkItem], Image.Image] | None = None
        self._chosen: list[str] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_image": None}  # workers load the model themselves

    def spec(self, out: Path) -> SetSpec:
        info, fitted, self._image = self.kind.drawer(Path(self.model_dir))
        self._chosen = chosen_classes(fitted, self.classes)
        return SetSpec(**set_arguments(Path(self.model_dir), out, info, self._chosen, self.per_class, self.seed,
                                       self.generation, self.kind.pipeline))

    def work(self) -> list[WorkItem]:
        if self._chosen is None:
            raise RuntimeError("PerClassJob.work() needs spec(out) first")
        return balanced_work(self._chosen, self.per_class, self.seed)

    def load(self) -> None:
        if self._image is None:
            _, _, self._image = self.kind.drawer(Path(self.model_dir))

    def generate(self, items: Sequence[WorkItem]) -> list[Sample]:
        assert self._image is not None, "load() first"
        return [Sample(self._image(item), item.label, seed=item.seed, image_id=item.image_id,
                       extra={"generation": self.generation}) for item in items]
