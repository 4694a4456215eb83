"""The generator contract and the ``GENERATORS`` registry: a new generator is one file plus one line here.

A generator kind is a class with an ``Options`` dataclass (its recipe table ``[generator.options]``,
the ``--option`` flags of ``imgsynth train`` and the sampling flags of ``imgsynth generate``, all
checked by :func:`options_from_dict`: an unknown option is an error naming the option and the kind) and
the methods of :class:`Generator`: ``fit`` and ``sample`` (both resume, or return at once when their
output is already there), ``shard_generator`` (the same sampling job for a backend: Ray actors,
accelerate ranks; see :mod:`imgsynth.pipelines.sharding`) and ``owns(model)`` (whether a model folder or
id is this kind's). A kind that starts from a pretrained model has ``pretrained``: generation 0 samples
it without fitting. The registry maps a kind to ``"module:Class"``, imported only when the kind is used,
so listing kinds costs no imports. The CLI, the accelerate entry, the Ray backend and the experiment loop
all find generators here.
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping, Protocol, Sequence

import numpy as np

from imgsynth.generator_record import GeneratorRecord
from imgsynth.imageset import ImageSet
from imgsynth.pipelines.sharding import SetSpec, ShardGenerator
from imgsynth.pipelines.work import WorkItem, balanced_work

if TYPE_CHECKING:
    from PIL import Image

GENERATORS: dict[str, str] = {
    "conditional": "imgsynth.pipelines.conditional.kind:ConditionalGenerator",
    "text2image": "imgsynth.pipelines.text2image.generator:Text2ImageKind",
    "gaussian": "imgsynth.pipelines.gaussian:GaussianGenerator",
    "kde": "imgsynth.pipelines.kde:KdeGenerator",
}


class Generator(Protocol):
    """What the loop and the CLI need from a generator kind (see the module docstring)."""

    kind: ClassVar[str]
    Options: ClassVar[type]

    def fit(self, train_set: ImageSet, out: Path, seed: int, progress: bool = True) -> Path: ...

    def sample(self, model_dir: Path, out: Path, per_class: int, seed: int, generation: int | None = None,
               progress: bool = True, classes: list[str] | None = None) -> ImageSet: ...

    def shard_generator(self, model_dir: Path, per_class: int, seed: int, generation: int | None = None,
                        classes: list[str] | None = None) -> ShardGenerator: ...

    @staticmethod
    def owns(model: str | Path) -> bool: ...


def register_generator(kind: str, target: str | type) -> None:
    """Add a kind (``"module:Class"`` or a class, e.g. a throwaway generator in a test)."""
    GENERATORS[kind] = target if isinstance(target, str) else f"{target.__module__}:{target.__qualname__}"


def generator_class(kind: str) -> type:
    """The class registered for ``kind``; an unknown kind is a ``ValueError`` listing the known ones."""
    if kind not in GENERATORS:
        raise ValueError(f"unknown generator kind {kind!r}; registered: {sorted(GENERATORS)}")
    module, _, name = GENERATORS[kind].partition(":")
    found: Any = importlib.import_module(module)
    for part in name.split("."):
        found = getattr(found, part)
    return found


def options_from_dict(kind: str, values: Mapping[str, Any], where: str = "[generator.options]") -> Any:
    """The kind's options dataclass from a recipe table, refusing unknown names and wrong types in one line."""
    options_type = generator_class(kind).Options
    known = {f.name: f for f in dataclasses.fields(options_type)}
    # A recipe's table reads "[generator] preset 'x' is ..."; a command's flags "imgsynth train: ...".
    label = where if where.startswith("[") else f"{where}:"
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"{label} unknown option(s) {unknown} for generator kind {kind!r}; known: {sorted(known)}")
    try:
        return options_type(**dict(values)).validate()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{label} {exc}") from None


def build_generator(kind: str, options: Mapping[str, Any] | None = None, where: str = "[generator.options]") -> Generator:
    """An instance of ``kind`` with validated options (``where`` names them in messages)."""
    return generator_class(kind)(options_from_dict(kind, options or {}, where))


def model_kind(model: str | Path) -> str:
    """The kind of a model folder or id: the one its ``imgsynth_model_info.json`` names, else the first
    registered kind that ``owns`` it (in registry order; text2image, last of the built-in ones, takes
    any diffusers pipeline folder or Hub id)."""
    info = Path(model) / MODEL_INFO
    if info.is_file():
        kind = read_model_info(info).get("kind", "")
        generator_class(kind)  # an unknown kind names the registered ones
        return kind
    for kind in GENERATORS:
        owns = getattr(generator_class(kind), "owns", None)
        if owns is not None and owns(model):
            return kind
    raise ValueError(f"{model}: not a model folder of any registered generator kind ({', '.join(GENERATORS)}): no "
                     f"imgsynth_model.json, {MODEL_INFO} or model_index.json")


def generator_for_model(model: str | Path, options: Mapping[str, Any] | None = None,
                        where: str = "imgsynth generate", device: str | None = None) -> tuple[str, Generator]:
    """(kind, generator) for sampling an existing model with ``options``: one check of the options for the
    CLI, the accelerate entry and the Ray backend. A kind may say which options a model implies
    (``options_for_model``: those it was fitted with, or the model id itself); ``options`` add to them.
    ``device`` (a launcher's) applies to the kinds whose options have one."""
    kind = model_kind(model)
    cls = generator_class(kind)
    own = getattr(cls, "options_for_model", None)
    base = dict(own(model)) if own is not None else {}
    if device is not None and "device" in {f.name for f in dataclasses.fields(cls.Options)}:
        base["device"] = device  # a launcher's device for the kinds that run on one
    return kind, build_generator(kind, {**base, **dict(options or {})}, where)


# --------------------------------------------------------------------------------------------- shared parts

MODEL_INFO = "imgsynth_model_info.json"
MODEL_WEIGHTS = "model.safetensors"


def read_model_info(path: Path) -> dict[str, Any]:
    """A registered kind's ``imgsynth_model_info.json``: a JSON object, or one error line naming the file."""
    from imgsynth.set_schema import parse_json

    info = parse_json(Path(path).read_bytes(), str(path))
    if not isinstance(info, dict):
        raise ValueError(f"{path}: should hold a JSON object")
    return info


def write_model(out: Path, kind: str, tensors: Mapping[str, Any], info: Mapping[str, Any]) -> Path:
    """Write a fitted model folder: ``model.safetensors`` (numpy arrays) then the info JSON, which marks it whole.

    The info records the kind, the weights' sha256 and the software; callers add classes, options, parent.
    """
    import json
    import os

    from safetensors.numpy import save_file

    from imgsynth.provenance import sha256_file, software_versions

    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{MODEL_WEIGHTS}.tmp"
    save_file({k: v for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, out / MODEL_WEIGHTS)
    record = {**info, "kind": kind, "weights_sha256": sha256_file(out / MODEL_WEIGHTS),
              "software": software_versions()}
    tmp = out / f".{MODEL_INFO}.tmp"
    tmp.write_text(json.dumps(record, indent=2), encoding="utf-8")
    os.replace(tmp, out / MODEL_INFO)
    return out


def read_model(model_dir: Path, kind: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(info, per-class arrays) of a model folder :func:`write_model` wrote; the weights' hash is checked.

    Tensor names are ``<class index>.<name>``; the result maps each class name to its arrays.
    """

    from safetensors.numpy import load_file

    from imgsynth.provenance import sha256_file

    model_dir = Path(model_dir)
    info_path = model_dir / MODEL_INFO
    if not info_path.is_file():
        raise ValueError(f"{model_dir}: not a {kind} model folder ({MODEL_INFO} is missing)")
    info = read_model_info(info_path)
    if info.get("kind") != kind:
        raise ValueError(f"{info_path}: a {info.get('kind')!r} model, not {kind!r}")
    weights = model_dir / MODEL_WEIGHTS
    if not weights.is_file() or sha256_file(weights) != info.get("weights_sha256"):
        raise ValueError(f"{weights}: missing, or its content does not match the sha256 recorded in {MODEL_INFO}")
    parameters: dict[str, dict[str, Any]] = {}
    for key, value in load_file(str(weights)).items():
        index, _, name = key.partition(".")
        parameters.setdefault(info["classes"][int(index)], {})[name] = value
    return info, parameters


def finished_fit(out: Path, record: Mapping[str, Any]) -> bool:
    """True when ``out`` already holds the model of this fit (``record``'s fields match); another fit there
    is an error, so a changed recipe never silently reuses a model."""

    info_path = Path(out) / MODEL_INFO
    if not info_path.is_file():
        return False
    done = read_model_info(info_path)
    if {k: done.get(k) for k in record} != dict(record):
        raise ValueError(f"{out}: already holds a model fitted to another set or with other options")
    return True


def fit_record(train_set: ImageSet, out: Path, options: Any) -> dict[str, Any]:
    """What identifies a fit: the training set and the options (plus where the training set is)."""
    import os

    return {"training_set": train_set.id, "options": dataclasses.asdict(options), "classes": train_set.classes,
            "image_shape": [int(v) for v in np.asarray(train_set.load_image(0)).shape],
            "parent": {"id": train_set.id, "path": os.path.relpath(train_set.root, Path(out).absolute()),
                       "kind": train_set.kind}}


def set_arguments(model_dir: Path, out: Path, info: Mapping[str, Any], classes: list[str], per_class: int,
                  seed: int, generation: int | None, pipeline: str) -> dict[str, Any]:
    """The ImageSetWriter arguments of a registered kind's sampled set (its generator record and config)."""
    import os

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


def sample_set(model_dir: Path, out: Path, info: Mapping[str, Any], classes: list[str], per_class: int, seed: int,
               generation: int | None, shard_size: int, draw: Callable[[WorkItem], "Image.Image"],
               pipeline: str) -> ImageSet:
    """The one resumable sampling loop: ``per_class`` images of each class, one seed per image (``draw``
    makes the image of one work item), written shard by shard; finished shards are skipped on a rerun."""
    from imgsynth.imageset import ImageSetWriter
    from imgsynth.pipelines.work import shards

    writer = ImageSetWriter(Path(out).absolute(), **set_arguments(model_dir, out, info, classes, per_class, seed,
                                                                  generation, pipeline))
    done = writer.done_shards
    for index, items in enumerate(shards(balanced_work(classes, per_class, seed), shard_size)):
        if index not in done:
            writer.write_shard(index, [_sample(draw, item, generation) for item in items])
    return writer.finalize()


def _sample(draw: Callable[[WorkItem], "Image.Image"], item: WorkItem, generation: int | None) -> Any:
    from imgsynth.imageset import Sample

    return Sample(draw(item), item.label, seed=item.seed, image_id=item.image_id, extra={"generation": generation})


def to_image(pixels: np.ndarray, shape: list[int]) -> "Image.Image":
    """Round and clip a flat float vector of pixel values to a uint8 image of ``shape`` (H, W[, 3])."""
    from PIL import Image

    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8).reshape(shape))


class PerClassGenerator:
    """A generator fitted class by class, in closed form, to the flattened uint8 pixels of each class.

    A subclass gives ``kind``, ``Options`` (a dataclass with ``validate()`` and ``shard_size``),
    ``fit_class(points) -> arrays`` and ``draw(arrays, rng) -> flat pixel values``; fitting (locked,
    returning at once when done), loading (hash-checked) and the resumable sampling loop are shared.
    """

    kind: ClassVar[str]
    Options: ClassVar[type]

    def __init__(self, options: Any = None) -> None:
        self.options = (options or self.Options()).validate()

    def fit_class(self, points: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def draw(self, parameters: Mapping[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def fit(self, train_set: ImageSet, out: Path, seed: int, progress: bool = True) -> Path:
        """Fit every class of ``train_set`` (deterministic: ``seed`` is unused); returns ``out``."""
        from imgsynth.locking import folder_lock

        out = Path(out)
        with folder_lock(out):
            record = fit_record(train_set, out, self.options)
            if finished_fit(out, record):
                return out
            flat = train_set.as_array().reshape(len(train_set), -1)
            labels = np.asarray(train_set.labels)
            tensors: dict[str, np.ndarray] = {}
            for index in range(len(train_set.classes)):
                points = flat[labels == index]
                if len(points):  # a class lost in an earlier generation stays lost
                    tensors.update({f"{index}.{k}": v for k, v in self.fit_class(points).items()})
            return write_model(out, self.kind, tensors, record)

    @classmethod
    def load(cls, model_dir: Path) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
        """(info, per-class arrays) of a fitted model, the weights checked against the recorded hash."""
        return read_model(model_dir, cls.kind)

    @classmethod
    def owns(cls, model: str | Path) -> bool:
        """Whether ``model`` is a folder this kind fitted (its info file names the kind)."""

        info = Path(model) / MODEL_INFO
        return info.is_file() and read_model_info(info).get("kind") == cls.kind

    @staticmethod
    def options_for_model(model: str | Path) -> dict[str, Any]:
        """The options the model was fitted with (sampling takes them as they are)."""

        return dict(read_model_info(Path(model) / MODEL_INFO).get("options") or {})

    def drawer(self, model_dir: Path) -> tuple[dict[str, Any], list[str], Callable[[WorkItem], "Image.Image"]]:
        """(info, the fitted classes, the function making one work item's image) of a fitted model."""
        info, parameters = self.load(model_dir)
        shape = info["image_shape"]

        def image(item: WorkItem) -> "Image.Image":
            return to_image(self.draw(parameters[item.label], np.random.default_rng(item.seed)), shape)

        return info, [c for c in info["classes"] if c in parameters], image

    def _classes(self, fitted: list[str], classes: list[str] | None) -> list[str]:
        if classes is None:
            return fitted
        unknown = [c for c in classes if c not in fitted]
        if unknown or not classes:
            raise ValueError(f"classes {unknown or classes} are not classes of this model; it knows {fitted}")
        return list(dict.fromkeys(classes))

    def sample(self, model_dir: Path, out: Path, per_class: int, seed: int, generation: int | None = None,
               progress: bool = True, classes: list[str] | None = None) -> ImageSet:
        """``per_class`` images of every fitted class, each drawn from its own seed; resumes by shard."""
        info, fitted, image = self.drawer(model_dir)
        return sample_set(model_dir, out, info, self._classes(fitted, classes), per_class, seed, generation,
                          self.options.shard_size, image, type(self).__name__)

    def shard_generator(self, model_dir: Path, per_class: int, seed: int, generation: int | None = None,
                        classes: list[str] | None = None) -> PerClassShardGenerator:
        """The same job as ``sample``, for a backend."""
        return PerClassShardGenerator(self, str(Path(model_dir).absolute()), per_class, seed, generation, classes)


@dataclasses.dataclass
class PerClassShardGenerator:
    """A per-class kind's sampling job for a backend: the set ``PerClassGenerator.sample`` writes."""

    generator: PerClassGenerator
    model_dir: str
    per_class: int
    seed: int
    generation: int | None = None
    classes: list[str] | None = None
    num_gpus: float = 0.0

    def __post_init__(self) -> None:
        self.shard_size = self.generator.options.shard_size
        self._image: Callable[[WorkItem], "Image.Image"] | None = None
        self._chosen: list[str] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_image": None}  # workers load the model themselves

    def spec(self, out: Path) -> SetSpec:
        info, fitted, self._image = self.generator.drawer(Path(self.model_dir))
        self._chosen = self.generator._classes(fitted, self.classes)
        return SetSpec(**set_arguments(Path(self.model_dir), out, info, self._chosen, self.per_class, self.seed,
                                       self.generation, type(self.generator).__name__))

    def work(self) -> list[WorkItem]:
        if self._chosen is None:
            raise RuntimeError("PerClassShardGenerator.work() needs spec(out) first")
        return balanced_work(self._chosen, self.per_class, self.seed)

    def load(self) -> None:
        if self._image is None:
            _, _, self._image = self.generator.drawer(Path(self.model_dir))

    def generate(self, items: Sequence[WorkItem]) -> list[Any]:
        return [_sample(self._image, item, self.generation) for item in items]
