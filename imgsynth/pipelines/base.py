"""The generator-kind contract and the ``GENERATOR_KINDS`` registry: a new kind is one file plus one line.

A kind is a subclass of :class:`GeneratorKind`: an ``Options`` dataclass (its recipe table
``[generator.options]``, the ``--option`` flags of ``imgsynth train`` and the sampling flags of
``imgsynth generate``, all checked by :func:`options_from_dict`: an unknown option is an error naming the
option and the kind; the dataclass holds the kind's defaults, the only place they live), ``fit`` and
``job`` (its sampling job, a :class:`~imgsynth.pipelines.sharding.SetJob`). Everything else has a
default here: ``sample`` writes the job's set with the one driver every backend shares, and the optional
hooks (``owns``, ``options_for_model``, ``check_data``, ``pretrained``, ``recipe_fields``) say nothing.

Which kind a model folder or id belongs to (:func:`model_kind`) is one rule, independent of the order
kinds were registered in:

1. a folder whose ``imgsynth_model_info.json`` names a kind is that kind's;
2. otherwise every kind's ``owns(model)`` is asked; kinds with their own model files
   (``ownership = "specific"``) win over kinds that take anything of a broad format
   (``ownership = "fallback"``: text2image takes any diffusers pipeline folder or Hub id, so it cannot
   tell a class-conditional model folder, which is also a diffusers pipeline folder, from its own);
3. two owners of the same rank are an error naming both, as is no owner at all.

The registry maps a kind's name to ``"module:Class"``, imported only when the kind is used, so listing
kinds costs no imports. The CLI, the accelerate entry, the Ray backend and the experiment loop all find
kinds here.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Mapping, Protocol, Sequence, TypeVar

from imgsynth.notes import Note
from imgsynth.pipelines.sharding import SetJob, write_set
from imgsynth.pipelines.work import check_per_class
from imgsynth.registry import Registry

if TYPE_CHECKING:
    from imgsynth.imageset import ImageSet

MODEL_INFO = "imgsynth_model_info.json"

OptionsT = TypeVar("OptionsT", bound="KindOptions")


class KindOptions(Protocol):
    """A kind's options: an ordinary dataclass whose ``validate`` returns it checked (or raises ``ValueError``
    naming the field) and whose ``shard_size`` fixes the shards of its sampling job."""

    shard_size: int

    def validate(self: OptionsT) -> OptionsT: ...


class GeneratorKind:
    """Base class of every generator kind; lists every hook a kind may have, with its default.

    Required: ``name`` (the registry name), ``Options`` (a :class:`KindOptions` dataclass), ``fit`` and
    ``job``. ``ownership`` ranks ``owns`` in :func:`model_kind` (see the module docstring).
    """

    name: ClassVar[str]
    Options: ClassVar[type[Any]]
    ownership: ClassVar[Literal["specific", "fallback"]] = "specific"
    # The flat [generator] fields of older recipes, and the option each one is (experiments.config reads
    # them once, with a note saying how to write them in [generator.options]).
    recipe_fields: ClassVar[Mapping[str, str]] = {}
    # Option names this kind used before, and each one's name now: still accepted, with a note.
    renamed_options: ClassVar[Mapping[str, str]] = {}

    def __init__(self, options: Any = None) -> None:
        self.options = (options if options is not None else self.Options()).validate()

    # ------------------------------------------------------------------------------------------ required
    def fit(self, train_set: ImageSet, out: Path, seed: int, progress: bool = True) -> Path:
        """Fit a model to ``train_set`` at ``out`` (resuming, or returning at once when it is there); returns it."""
        raise NotImplementedError(f"generator kind {self.name!r} cannot be fitted")

    def job(self, model_dir: Path, per_class: int, seed: int, generation: int | None = None,
            classes: Sequence[str] | None = None) -> SetJob:
        """The job that writes ``per_class`` images of each class (or of ``classes``) of the model at
        ``model_dir``: what ``sample`` runs here and a backend (Ray actors, accelerate ranks) runs elsewhere."""
        raise NotImplementedError(f"generator kind {self.name!r} cannot sample")

    # ------------------------------------------------------------------------------------ with defaults
    def sample(self, model_dir: Path, out: Path, per_class: int, seed: int, generation: int | None = None,
               progress: bool = True, classes: Sequence[str] | None = None) -> ImageSet:
        """Write the job's set at ``out`` in this process (resumes; a finished set is returned as it is)."""
        check_per_class(per_class)  # before the job opens its output: an absurd count allocates for minutes
        return write_set(self.job(model_dir, per_class, seed, generation=generation, classes=classes), out,
                         progress=progress)

    @classmethod
    def owns(cls, model: str | Path) -> bool:
        """Whether ``model`` (a folder or an id) is a model of this kind (asked by :func:`model_kind`)."""
        return False

    @classmethod
    def options_for_model(cls, model: str | Path) -> dict[str, Any]:
        """The options a model implies for sampling it (those it was fitted with, or its id)."""
        return {}

    def check_data(self, image_size: int, channels: int) -> object:
        """Refuse (``ValueError``) square images of ``image_size`` px with ``channels`` that this kind cannot fit,
        before any work starts; returns what it would fit them with (None: nothing to say)."""
        return None

    @property
    def pretrained(self) -> str | None:
        """What generation 0 samples without fitting (a pretrained model), or None: generation 0 is fitted."""
        return None


GENERATOR_KINDS: Registry[type[GeneratorKind]] = Registry("generator kind")
GENERATOR_KINDS.register("conditional", "imgsynth.pipelines.conditional.kind:ConditionalKind")
GENERATOR_KINDS.register("text2image", "imgsynth.pipelines.text2image.kind:Text2ImageKind")
GENERATOR_KINDS.register("gaussian", "imgsynth.pipelines.gaussian:GaussianKind")
GENERATOR_KINDS.register("kde", "imgsynth.pipelines.kde:KdeKind")


def register_kind(name: str, target: str | type[GeneratorKind]) -> None:
    """Add a kind (``"module:Class"`` or a class, e.g. a throwaway kind in a test); a taken name is refused."""
    GENERATOR_KINDS.register(name, target)


def kind_class(name: str) -> type[GeneratorKind]:
    """The class registered as ``name``; an unknown name is a ``ValueError`` listing the registered ones."""
    return GENERATOR_KINDS[name]


def options_from_dict(name: str, values: Mapping[str, Any], where: str = "[generator.options]") -> Any:
    """The kind's options dataclass from a recipe table, refusing unknown names and wrong types in one line."""
    cls = kind_class(name)
    options_type = cls.Options
    known = {f.name for f in dataclasses.fields(options_type)}
    # A recipe's table reads "[generator] preset 'x' is ..."; a command's flags "imgsynth train: ...".
    label = where if where.startswith("[") else f"{where}:"
    values = dict(values)
    for old, new in cls.renamed_options.items():
        if old in values and old not in known:
            if new in values:
                raise ValueError(f"{label} {old!r} and {new!r} are one option ({new!r}, formerly {old!r}); give it once")
            warnings.warn(f"{label} option {old!r} of generator kind {name!r} is now called {new!r}; "
                          f"{old!r} still works", Note, stacklevel=2)
            values[new] = values.pop(old)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{label} unknown option(s) {unknown} for generator kind {name!r}; known: {sorted(known)}")
    try:
        return options_type(**dict(values)).validate()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{label} {exc}") from None


def build_kind(name: str, options: Mapping[str, Any] | None = None,
               where: str = "[generator.options]") -> GeneratorKind:
    """An instance of kind ``name`` with validated options (``where`` names them in messages)."""
    return kind_class(name)(options_from_dict(name, options or {}, where))


def read_info_file(path: Path) -> dict[str, Any]:
    """A model folder's JSON file (``imgsynth_model_info.json``, ``imgsynth_model.json``, ``imgsynth_lora.json``,
    a diffusers config): a JSON object, or one error line naming the file (not a regular file, too large, bad
    UTF-8, malformed or too deeply nested JSON, not an object). Every kind reads its files through this."""
    from imgsynth.structured_files import read_json_object

    return read_json_object(path)


def model_kind(model: str | Path) -> str:
    """The kind of a model folder or id, by the rule in the module docstring."""
    info = Path(model) / MODEL_INFO
    if info.is_file():
        name = read_info_file(info).get("kind")
        if not isinstance(name, str) or name not in GENERATOR_KINDS:
            raise ValueError(f"{info}: kind = {name!r} is not a registered generator kind "
                             f"({', '.join(GENERATOR_KINDS.names())})")
        return name
    owners: dict[str, list[str]] = {"specific": [], "fallback": []}
    for name, cls in GENERATOR_KINDS.items():
        if cls.owns(model):
            owners[cls.ownership].append(name)
    for rank in ("specific", "fallback"):
        if len(owners[rank]) > 1:
            raise ValueError(f"{model}: claimed by several generator kinds ({', '.join(owners[rank])}); "
                             "a kind's owns() must recognise only its own model folders")
        if owners[rank]:
            return owners[rank][0]
    raise ValueError(f"{model}: not a model folder of any registered generator kind "
                     f"({', '.join(GENERATOR_KINDS.names())}): no imgsynth_model.json, {MODEL_INFO} or "
                     "model_index.json")


def kind_for_model(model: str | Path, options: Mapping[str, Any] | None = None,
                   where: str = "imgsynth generate", device: str | None = None) -> GeneratorKind:
    """The kind that samples an existing model, with ``options``: one check of the options for the CLI, the
    accelerate entry and the Ray backend. The kind's ``options_for_model`` (those the model was fitted with,
    or the model id itself) come first and ``options`` add to them. ``device`` (a launcher's) applies to
    the kinds whose options have one."""
    name = model_kind(model)
    cls = kind_class(name)
    base = dict(cls.options_for_model(model))
    if device is not None and "device" in {f.name for f in dataclasses.fields(cls.Options)}:
        base["device"] = device  # a launcher's device for the kinds that run on one
    return build_kind(name, {**base, **dict(options or {})}, where)
