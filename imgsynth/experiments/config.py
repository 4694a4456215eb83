"""Experiment recipes: a TOML file ⇄ a tree of dataclasses, validated before any work starts.

A recipe names the real data, the generator, the loop modes to compare, the metrics and the
classifier. ``load_recipe`` reads TOML, applies ``section.field=value`` overrides from the command line
and validates; ``dump_recipe`` writes the resolved recipe back (saved as ``config.toml`` in the run).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, NoReturn, Sequence

import tomli_w

# The loop modes a recipe may name live in their registry (a mode added there is valid here at once).
from imgsynth.experiments.modes import CURATED_SUFFIX, LOOP_MODES, base_mode
from imgsynth.metrics.extractors.registry import EXTRACTORS as EXTRACTOR_PREFIXES  # the names only: no torch
from imgsynth.metrics.extractors.registry import RESIZE_MODES, offered_resize_modes
from imgsynth.field_types import type_problem
from imgsynth.compute import DEVICE_PATTERN
from imgsynth.limits import MAX_BATCH_SIZE, MAX_EPOCHS, MAX_IMAGE_SIZE, MAX_LORA_RANK, MAX_PER_CLASS, MAX_STEPS
from imgsynth.notes import Note
from imgsynth.structured_files import read_toml

# imgsynth.classifier.architectures.SMALL_RESNET, the default architecture (checked without torch).
_SMALL_RESNET = "resnet18_small"


class RecipeError(ValueError):
    """A recipe is invalid; raised before any work starts, naming the recipe file and the field."""


Fail = Callable[[str], NoReturn]


@dataclass(frozen=True)
class Range:
    """The valid values of a numeric field, ``low``..``high``; an open end excludes its bound."""

    low: float
    high: float
    open_low: bool = False
    open_high: bool = False
    note: str = ""

    def __contains__(self, value: float) -> bool:
        above = value > self.low if self.open_low else value >= self.low
        below = value < self.high if self.open_high else value <= self.high
        return above and below

    def __str__(self) -> str:
        low, high = _number(self.low), _number(self.high)
        return f"{'(' if self.open_low else '['}{low}, {high}{')' if self.open_high else ']'}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


# Seeds feed numpy and torch generators and are offset per generation; 2^31 leaves room for both.
MAX_SEED = 2**31 - 1
MAX_REPLICATES = 1000
# Classifier-free guidance beyond ~30 saturates every pixel; 100 leaves room for odd experiments.
MAX_GUIDANCE_SCALE = 100.0
# DDPM-family schedules are trained with 1000 timesteps; a sampler cannot take more distinct steps.
MAX_SAMPLE_STEPS = 1000
# Keep in step with imgsynth.metrics.alignment.CLIP_SCORE_SCALE (CLIP scores lie in [0, 100]).
CLIP_SCORE_MAX = 100.0

_FRACTION = Range(0.0, 1.0)
_POSITIVE_RATE = Range(0.0, 1.0, open_low=True)
# Every int and float field of every section, by section ("" = the recipe's top level); a test checks
# that none is missing, so a new numeric field cannot skip validation.
RANGES: dict[str, dict[str, Range]] = {
    "": {"seed": Range(0, MAX_SEED)},
    "data": {"size": Range(4, MAX_IMAGE_SIZE, note=f" px ({MAX_IMAGE_SIZE} px is the largest size imgsynth "
                                                   "supports: sets are held in memory whole)"),
             "test_fraction": Range(0.0, 1.0, True, True), "split_seed": Range(0, MAX_SEED),
             "minority_keep": Range(1, MAX_PER_CLASS)},
    "generator": {"train_steps": Range(1, MAX_STEPS), "batch_size": Range(1, MAX_BATCH_SIZE),
                  "lr": _POSITIVE_RATE, "per_class": Range(1, MAX_PER_CLASS),
                  "sample_steps": Range(1, MAX_SAMPLE_STEPS), "guidance_scale": Range(0.0, MAX_GUIDANCE_SCALE),
                  "noise_temperature": Range(0.0, 10.0, open_low=True),
                  "sample_batch_size": Range(1, MAX_BATCH_SIZE), "lora_steps": Range(1, MAX_STEPS),
                  "lora_rank": Range(1, MAX_LORA_RANK)},
    "loop": {"generations": Range(1, 1000), "mix_real_fraction": _FRACTION,
             "fresh_per_class": Range(0, MAX_PER_CLASS, note=" (0: as many as [generator] per_class)"),
             "augment_ratio": Range(0.0, 100.0, open_low=True),
             "subsample_size": Range(0, MAX_PER_CLASS * 1000, note=" (0: the real training set's size)"),
             "real_weight": Range(0.0, 1.0, open_low=True)},
    "metrics": {"bootstrap": Range(0, 100_000), "max_per_class": Range(1, MAX_PER_CLASS)},
    "classifier": {"epochs": Range(1, MAX_EPOCHS), "batch_size": Range(1, MAX_BATCH_SIZE), "lr": _POSITIVE_RATE},
    "curate": {"dedup": Range(-1.0, 1.0), "min_confidence": _FRACTION, "min_clip_score": Range(0.0, CLIP_SCORE_MAX),
               "clip_top_fraction": Range(0.0, 1.0, open_low=True), "best_of": Range(1, 1000)},
}
IMAGE_MODES = {"L": 1, "RGB": 3}
# fresh-mix's synthetic part: the previous generation's output, or every earlier generation's.
FRESH_SYNTHETIC = ("previous", "all")
# Devices are spelled as imgsynth.compute.DEVICE_PATTERN says; whether CUDA is present is the run's
# question (imgsynth.compute.check_device), so a recipe written for a GPU machine still validates on a laptop.


@dataclass
class DataConfig:
    """The real data: a source spec, image size and held-out test split."""

    source: str = "digits"
    size: int = 16
    mode: str = "L"
    test_fraction: float = 0.2
    split_seed: int = 0
    # Minority classes: keep only `minority_keep` real training examples of each listed class.
    minority_classes: list[str] = field(default_factory=list)
    minority_keep: int = 30


@dataclass
class GeneratorConfig:
    """What is retrained each generation (``kind``, its ``[generator.options]``) and how many images per class
    each generation samples.

    ``options`` are the kind's options (``imgsynth.pipelines.base.GENERATOR_KINDS``), checked by its
    ``Options`` dataclass, which holds every default. The flat fields after ``per_class`` are the older
    spelling of some of them: None unless a recipe gives them, and moved into ``options`` once, when the
    recipe is read (:func:`translate_flat_fields`, with a note saying how to write them now).
    """

    kind: str = "conditional"
    per_class: int = 100
    options: dict[str, Any] = field(default_factory=dict)
    preset: str | None = None
    train_steps: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    sample_steps: int | None = None
    guidance_scale: float | None = None
    noise_temperature: float | None = None
    sample_batch_size: int | None = None
    model: str | None = None
    classes: list[str] | None = None
    prompts: str | None = None
    lora_steps: int | None = None
    lora_rank: int | None = None
    device: str | None = None


# The older flat [generator] fields (GeneratorConfig's fields after ``options``).
FLAT_GENERATOR_FIELDS = ("preset", "train_steps", "batch_size", "lr", "sample_steps", "guidance_scale",
                         "noise_temperature", "sample_batch_size", "model", "classes", "prompts", "lora_steps",
                         "lora_rank", "device")


@dataclass
class LoopConfig:
    """Generations and the loop modes compared side by side on the same real data and seeds."""

    generations: int = 5
    # Names registered in imgsynth.experiments.modes.LOOP_MODES, each optionally with CURATED_SUFFIX.
    modes: list[str] = field(default_factory=lambda: ["replace", "accumulate", "mix"])
    mix_real_fraction: float = 0.1
    # The settings of the modes added later; None (not written to config.toml) means LoopData's default, so
    # the resolved recipe of a run that uses none of them is what it was before they existed.
    # fresh-mix and weighted: new real images per class each generation (0 or None: [generator] per_class).
    fresh_per_class: int | None = None
    # fresh-mix's synthetic part: the "previous" generation's output or that of "all" earlier generations.
    fresh_synthetic: str | None = None
    # augment: λ, the synthetic images added to the whole real set as a multiple of its size (None: 0.1).
    augment_ratio: float | None = None
    # accumulate-subsample: the training set's size each generation (0 or None: the real training set's).
    subsample_size: int | None = None
    # weighted: w, the real part's share of the training weight, the synthetic part 1 − w (None: 0.5).
    real_weight: float | None = None
    # Replicates: a count n (seeds recipe.seed, recipe.seed + 1, …) or an explicit list of seeds. Each seed
    # draws its own generator weights, training noise, samples and classifiers; the real data stays fixed.
    seeds: int | list[int] = 1


@dataclass
class MetricsConfig:
    """Feature extractors ('domain' = the classifier trained on real data), bootstrap and CLIP weights."""

    extractors: list[str] = field(default_factory=lambda: ["domain"])
    per_class: bool = True
    bootstrap: int = 0
    clip: str = ""
    max_per_class: int | None = None
    # Per extractor, as named in ``extractors``: its resize convention (RESIZE_MODES), e.g.
    # [metrics.resize_mode] inception = "pytorch-fid". Absent: each extractor's default.
    resize_mode: dict[str, str] | None = None
    # Opt-in: also measure every generation against its own training set (memorisation rate, authenticity,
    # k-NN entropy of the samples and of the training set; imgsynth.metrics.memorisation and .entropy).
    train_set_metrics: bool = False


@dataclass
class ClassifierSettings:
    """The classifier trained on every generation's samples and scored on the real test set (CAS).

    ``use_weights``: the classifiers weigh their loss by a training set's weights (its ``weight`` column); the
    real training set must then carry them (the reference classifier refuses one without), while generated
    samples, which never do, train unweighted.
    """

    arch: str = "resnet18_small"
    epochs: int = 4
    batch_size: int = 128
    lr: float | None = None
    enabled: bool = True
    use_weights: bool = False


@dataclass
class CurateConfig:
    """Optional curation filters applied to every generation's samples before they feed the next one."""

    enabled: bool = False
    dedup: float | None = None
    min_confidence: float | None = None
    min_clip_score: float | None = None
    clip_top_fraction: float | None = None
    rebalance: bool = True
    modes: list[str] = field(default_factory=list)
    # Dedup space: "" = pixels:16, or pixels:<size>, domain (the reference classifier), clip:<name>.
    embedding: str = ""
    # Best-of-K (imgsynth.curation.best_of): a curating generation samples best_of × per_class per class and
    # keeps the best of every best_of candidates under `reward` (imgsynth.curation.rewards.REWARDS).
    best_of: int | None = None
    reward: str = "confidence"


@dataclass
class ProvenanceConfig:
    """Opt-in marks inside every generated image, beyond the XMP marker each always carries
    (:mod:`imgsynth.provenance.markers`): an invisible watermark (changes pixels, so metrics may move), and
    C2PA manifests signed with ``c2pa_cert`` (a PEM chain) and ``c2pa_key`` (its PEM key), with a timestamp
    authority only when ``tsa_url`` names one."""

    watermark: bool = False
    c2pa_cert: str | None = None
    c2pa_key: str | None = None
    tsa_url: str | None = None

    def marking(self) -> Any:
        """The :class:`~imgsynth.provenance.markers.Marking` these settings ask for (a ``RecipeError`` when
        only one of the certificate and the key is given)."""
        from imgsynth.provenance.markers import Marking

        try:
            return Marking.of(watermark=self.watermark, c2pa_cert=self.c2pa_cert, c2pa_key=self.c2pa_key,
                              tsa_url=self.tsa_url)
        except ValueError as exc:
            raise RecipeError(f"[provenance]: {exc}") from None


@dataclass
class TrackingConfig:
    """Experiment trackers the run's numbers, grids and reports are logged to (``imgsynth.tracking``):
    names registered in ``TRACKERS`` (``wandb``, ``mlflow``, ``tensorboard``), offline into the run folder.
    ``mlflow_uri``: an MLflow tracking URI instead of the run folder's SQLite store (``MLFLOW_TRACKING_URI``,
    MLflow's own convention, wins over both). Trackers never change a run's results."""

    trackers: list[str] = field(default_factory=list)
    mlflow_uri: str = ""


@dataclass
class Recipe:
    """A whole experiment."""

    name: str = "experiment"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    classifier: ClassifierSettings = field(default_factory=ClassifierSettings)
    curate: CurateConfig = field(default_factory=CurateConfig)
    provenance: ProvenanceConfig = field(default_factory=ProvenanceConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def to_dict(self) -> dict[str, Any]:
        values = _drop_none(dataclasses.asdict(self))
        # recipes and run folders that never asked for these sections keep their text
        if self.provenance == ProvenanceConfig():
            values.pop("provenance")
        if self.tracking == TrackingConfig():
            values.pop("tracking")
        return values


def _drop_none(value: Any) -> Any:
    # TOML has no null: unset optional fields are simply absent.
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    return value


def _build(cls: type, values: Mapping[str, Any], where: str) -> Any:
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise RecipeError(f"{where}: unknown field(s) {unknown}; known: {sorted(known)}")
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        nested = _SECTIONS.get(name) if cls is Recipe else None
        if nested is None:
            kwargs[name] = _checked(known[name], value, where)
        elif not isinstance(value, Mapping):
            raise RecipeError(f"{where}: [{name}] must be a table")
        else:
            kwargs[name] = _build(nested, value, f"{where} [{name}]")
    return cls(**kwargs)


def _checked(spec: dataclasses.Field, value: Any, where: str) -> Any:
    """Check a value against its field's declared type (the annotation text, as written above)."""
    if str(spec.type).startswith("dict"):
        if not isinstance(value, Mapping):
            raise RecipeError(f"{where}: [{spec.name}] must be a table, got {value!r}")
        return dict(value)
    problem = type_problem(str(spec.type), value)
    if problem is not None and problem.startswith("should be a list of"):
        raise RecipeError(f"{where}: {spec.name} must be a list of {problem.rpartition(' ')[2]}, got {value!r}")
    if problem is not None:
        raise RecipeError(f"{where}: {spec.name} = {value!r} should be {spec.type}")
    return value


_SECTIONS: dict[str, type] = {
    "data": DataConfig, "generator": GeneratorConfig, "loop": LoopConfig,
    "metrics": MetricsConfig, "classifier": ClassifierSettings, "curate": CurateConfig,
    "provenance": ProvenanceConfig,
    "tracking": TrackingConfig,
}


def _parse_override(text: str) -> tuple[list[str], Any]:
    from imgsynth.assignments import parse_assignment
    from imgsynth.structured_files import StructuredFileError

    try:
        key, value = parse_assignment(text)
    except StructuredFileError as exc:  # a value too long or too deeply nested
        raise RecipeError(f"--set {exc}") from None
    except ValueError:
        raise RecipeError(f"override {text!r}: expected section.field=value") from None
    return key.split("."), value


def check_override(text: str) -> None:
    """Refuse a ``section.field=value`` override that names no recipe field or gives it a wrong type.

    The message starts with ``--set <text>``, so a typo on the command line is never blamed on the recipe
    file, e.g. ``--set loop.generationz=3: unknown field 'generationz' in [loop]; known: ...``.
    """
    path, value = _parse_override(text)
    where = f"--set {text.strip()}"
    cls: type = Recipe
    for depth, part in enumerate(path):
        known = {f.name: f for f in dataclasses.fields(cls)}
        section = "the recipe's top level" if cls is Recipe else f"[{_section_name(cls)}]"
        if part not in known:
            raise RecipeError(f"{where}: unknown field {part!r} in {section}; known: {', '.join(sorted(known))}")
        nested = _SECTIONS.get(part) if cls is Recipe else None
        last = depth == len(path) - 1
        if nested is not None and last:
            raise RecipeError(f"{where}: [{part}] is a section; set one of its fields, e.g. {part}."
                              f"{dataclasses.fields(nested)[0].name}=...")
        if nested is None:
            if str(known[part].type).startswith("dict"):
                return  # a free-form table ([generator.options]); its keys are checked by whoever owns it
            if not last:
                raise RecipeError(f"{where}: {part} in {section} is a field, not a section")
            _checked(known[part], value, where)
            return
        cls = nested


def _section_name(cls: type) -> str:
    return next(name for name, section in _SECTIONS.items() if section is cls)


def apply_overrides(values: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``section.field=value`` overrides (values parsed as TOML, bare words as strings)."""
    for text in overrides:
        path, value = _parse_override(text)
        target = values
        for part in path[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise RecipeError(f"override {text!r}: {part} is not a section")
        target[path[-1]] = value
    return values


def validate(recipe: Recipe, where: str = "recipe") -> Recipe:
    """Check every field that could otherwise fail minutes or hours into a run, and return ``recipe``.

    Each problem is one ``RecipeError`` line, ``<where>: [section] field ...``, naming the bad value.
    """
    def fail(message: str) -> NoReturn:
        raise RecipeError(f"{where}: {message}")

    _check_name(recipe.name, fail)
    _check_numbers(recipe, fail)
    _check_loop(recipe.loop, fail)
    _check_data(recipe.data, fail, where)
    _check_generator(recipe, fail, where)
    _check_metrics(recipe.metrics, fail)
    _check_classifier(recipe.classifier, fail)
    _check_curate(recipe, fail)
    _check_provenance(recipe.provenance, fail)
    _check_tracking(recipe.tracking, fail)
    return recipe


def _check_provenance(provenance: ProvenanceConfig, fail: Fail) -> None:
    """Both or neither of the C2PA certificate and key, and both files there (signing itself is checked when
    the first set is signed)."""
    if (provenance.c2pa_cert is None) != (provenance.c2pa_key is None):
        fail("[provenance] c2pa_cert and c2pa_key go together: give both (a PEM chain and its key) or neither")
    if provenance.tsa_url is not None and provenance.c2pa_cert is None:
        fail("[provenance] tsa_url applies only to C2PA signing; give c2pa_cert and c2pa_key too")
    for name in ("c2pa_cert", "c2pa_key"):
        value = getattr(provenance, name)
        if value is not None and not Path(value).expanduser().is_file():
            fail(f"[provenance] {name} = {value!r}: no such file")


def _check_numbers(recipe: Recipe, fail: Fail) -> None:
    """Every numeric field finite and in its range (TOML allows ``nan`` and ``inf``, which pass the types)."""
    for section, ranges in RANGES.items():
        values = getattr(recipe, section) if section else recipe
        for name, valid in ranges.items():
            value = getattr(values, name)
            if value is None:
                continue
            label = f"[{section}] {name}" if section else name
            if isinstance(value, float) and not math.isfinite(value):
                fail(f"{label} must be a finite number in {valid}, got {value!r}")
            if value not in valid:
                fail(f"{label} must lie in {valid}, got {value!r}{valid.note}")


def _check_name(name: str, fail: Fail) -> None:
    """``name`` becomes ``runs/<name>``: a plain folder name, so a run never lands in ``.`` or ``runs/``."""
    bad = (not name.strip() or name in (".", "..") or name != name.strip() or len(name.encode()) > 255
           or any(c in "/\\" or ord(c) < 32 for c in name))
    if bad:
        fail(f"name {name!r} must be a plain folder name: not empty, not '.' or '..', no '/', '\\' or control "
             "characters, no leading or trailing spaces, at most 255 bytes")


def _check_strings(label: str, values: Sequence[str], fail: Fail) -> None:
    empty = [v for v in values if not v.strip()]
    if empty:
        fail(f"{label}: empty name in {list(values)}")
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        fail(f"{label}: repeated {repeated}")


def _check_loop(loop: LoopConfig, fail: Fail) -> None:
    unknown = [m for m in loop.modes if base_mode(m) not in LOOP_MODES]
    if unknown:
        fail(f"[loop] modes: unknown mode(s) {unknown}; known: {LOOP_MODES.names()}, "
             f"each optionally with {CURATED_SUFFIX!r}")
    if not loop.modes:
        fail("[loop] modes: at least one loop mode is needed")
    if loop.fresh_synthetic is not None and loop.fresh_synthetic not in FRESH_SYNTHETIC:
        fail(f"[loop] fresh_synthetic must be one of {list(FRESH_SYNTHETIC)}, got {loop.fresh_synthetic!r}")
    if len(set(loop.modes)) != len(loop.modes):
        fail(f"[loop] modes: repeated mode in {loop.modes}")
    seeds = loop.seeds
    if isinstance(seeds, int) and not 1 <= seeds <= MAX_REPLICATES:
        fail(f"[loop] seeds must be a count in [1, {MAX_REPLICATES}] or a list of seeds, got {seeds!r}")
    if isinstance(seeds, list):
        if not seeds:
            fail("[loop] seeds: an empty list; give at least one seed (or a count, e.g. seeds = 3)")
        if len(seeds) > MAX_REPLICATES or not all(0 <= s <= MAX_SEED for s in seeds):
            fail(f"[loop] seeds: at most {MAX_REPLICATES} seeds, each in [0, {MAX_SEED}], got {seeds!r}")
        if len(set(seeds)) != len(seeds):
            fail(f"[loop] seeds: repeated seed(s) {sorted({s for s in seeds if seeds.count(s) > 1})}")


def _check_data(data: DataConfig, fail: Fail, where: str) -> None:
    if not data.source:
        fail("[data] source is missing (e.g. source = \"digits\" or \"folder:/path/to/classes\")")
    _validate_source(data.source, where)
    if data.mode not in IMAGE_MODES:
        fail(f"[data] mode must be one of {list(IMAGE_MODES)}, got {data.mode!r}")
    _check_strings("[data] minority_classes", data.minority_classes, fail)


def translate_flat_fields(g: GeneratorConfig) -> tuple[GeneratorConfig, str | None]:
    """``g`` with its flat fields moved into ``options``, the one place options live from then on, and the
    note to show when there were any (None otherwise).

    A flat field is the option its kind's ``recipe_fields`` name (e.g. ``preset``, ``sample_steps``); where
    the ``[generator.options]`` table gives the same option, the table wins. Flat fields the kind does not
    read are dropped (run folders written before this change list every flat field with its old default).
    """
    from imgsynth.pipelines.base import kind_class

    # Run folders written before this change list every flat field, with "" and [] meaning "not given".
    given = {name: getattr(g, name) for name in FLAT_GENERATOR_FIELDS if getattr(g, name) not in (None, "", [])}
    if not given:
        return dataclasses.replace(g, **{name: None for name in FLAT_GENERATOR_FIELDS}), None
    fields = kind_class(g.kind).recipe_fields
    moved = {fields[name]: value for name, value in given.items() if name in fields}
    ignored = sorted(set(given) - set(fields))
    # JSON spells strings, numbers, booleans and lists as TOML does, on one line.
    table = ", ".join(f"{option} = {json.dumps(value)}" for option, value in moved.items())
    note = (f"flat [generator] fields are read as the {g.kind} kind's options; write them under "
            f"[generator.options] instead ({table or 'none of them applies'})")
    if ignored:
        one = len(ignored) == 1
        note += (f"; {', '.join(ignored)} {'is not an option' if one else 'are not options'} of the {g.kind} kind "
                 f"and {'is' if one else 'are'} ignored")
    return dataclasses.replace(g, options={**moved, **g.options}, **{name: None for name in FLAT_GENERATOR_FIELDS}), note


def _check_generator(recipe: Recipe, fail: Fail, where: str) -> None:
    g, data = recipe.generator, recipe.data
    from imgsynth.pipelines.base import GENERATOR_KINDS, build_kind

    if g.kind not in GENERATOR_KINDS:
        fail(f"[generator] kind must be one of {GENERATOR_KINDS.names()}, got {g.kind!r}")
    if g.device and not DEVICE_PATTERN.match(g.device):
        fail(f"[generator] device {g.device!r} is not a device imgsynth runs on; use 'auto', 'cpu', 'cuda' "
             "or 'cuda:N'")
    _check_strings("[generator] classes", g.classes or [], fail)
    # Messages name the table the user wrote: the flat fields when they gave no [generator.options].
    table = "[generator.options]" if g.options else "[generator]"
    g, note = translate_flat_fields(g)
    # The recipe's bounds of the flat fields hold for the options of the same name, whichever kind reads them.
    for name, valid in RANGES["generator"].items():
        value = g.options.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and \
                (value not in valid or (isinstance(value, float) and not math.isfinite(value))):
            fail(f"{table} {name} must lie in {valid}, got {value!r}{valid.note}")
    device = g.options.get("device")
    if isinstance(device, str) and device and not DEVICE_PATTERN.match(device):
        fail(f"{table} device {device!r} is not a device imgsynth runs on; use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    try:
        kind = build_kind(g.kind, g.options, table)
    except ValueError as exc:
        fail(str(exc))
    try:
        kind.check_data(image_size=data.size, channels=IMAGE_MODES.get(data.mode, 1))
    except ValueError as exc:
        fail(f"[data] size = {data.size}, mode = {data.mode!r} do not fit the {g.kind} generator: {exc}")
    if note is not None:  # only for a recipe that is valid: a refused one gets its one error line
        warnings.warn(f"{where}: {note}", Note, stacklevel=3)
    recipe.generator = g


def _check_metrics(metrics: MetricsConfig, fail: Fail) -> None:
    if not metrics.extractors:
        fail("[metrics] extractors: at least one feature extractor is needed (e.g. \"domain\")")
    for name in metrics.extractors:
        if name.split(":", 1)[0] not in EXTRACTOR_PREFIXES:
            fail(f"[metrics] extractors: unknown extractor {name!r}; known prefixes: {list(EXTRACTOR_PREFIXES)}")
    _check_strings("[metrics] extractors", metrics.extractors, fail)
    _check_resize_modes(metrics, fail)


def _check_resize_modes(metrics: MetricsConfig, fail: Fail) -> None:
    """``[metrics.resize_mode]``: keys among ``extractors``, values among RESIZE_MODES, each extractor able to
    resize that way (which imports the extractor's module, and so torch: only when the table is given)."""
    for name, mode in (metrics.resize_mode or {}).items():
        if name not in metrics.extractors:
            fail(f"[metrics.resize_mode] {name!r} is not among [metrics] extractors {metrics.extractors}")
        if not isinstance(mode, str) or mode not in RESIZE_MODES:
            fail(f"[metrics.resize_mode] {name} = {mode!r}: choose one of {', '.join(RESIZE_MODES)}")
        offered = offered_resize_modes(name.split(":", 1)[0])
        if mode not in offered:
            fail(f"[metrics.resize_mode] {name} = {mode!r}: the {name.split(':', 1)[0]} extractor "
                 + (f"offers {', '.join(offered)}" if offered else
                    "has a preprocessing of its own (resize modes are for inception)"))


def _check_classifier(settings: ClassifierSettings, fail: Fail) -> None:
    if settings.arch == _SMALL_RESNET:
        return  # the default; checking any other name needs torchvision's model list (and so torch)
    from imgsynth.classifier.architectures import check_arch

    try:
        check_arch(settings.arch)
    except ValueError as exc:
        fail(f"[classifier] arch: {exc}")


def _check_curate(recipe: Recipe, fail: Fail) -> None:
    c = recipe.curate
    bad_modes = [m for m in c.modes if m not in recipe.loop.modes]
    if bad_modes:
        fail(f"[curate] modes {bad_modes} are not among [loop] modes {recipe.loop.modes}")
    if c.embedding:
        _check_embedding(c.embedding, fail)
    curating = c.enabled or any(m.endswith(CURATED_SUFFIX) for m in recipe.loop.modes)
    if c.best_of is not None:
        _check_best_of(recipe, fail)
    no_filter = all(v is None for v in (c.dedup, c.min_confidence, c.min_clip_score, c.clip_top_fraction,
                                        c.best_of))
    if curating and no_filter and not c.rebalance:
        fail("[curate] nothing to do: set best_of, dedup, min_confidence, min_clip_score, clip_top_fraction or "
             f"rebalance (needed by enabled = true and by {CURATED_SUFFIX!r} modes)")
    clip_filter = [n for n in ("min_clip_score", "clip_top_fraction") if getattr(c, n) is not None]
    if curating and clip_filter and not recipe.metrics.clip:
        fail(f"[curate] {clip_filter[0]} needs a CLIP model: set [metrics] clip (open_clip weights on disk)")


def _check_tracking(tracking: TrackingConfig, fail: Fail) -> None:
    from imgsynth.tracking.registry import TRACKERS  # the names only: no tracker package is imported

    unknown = [name for name in tracking.trackers if name not in TRACKERS]
    if unknown:
        fail(f"[tracking] trackers: unknown tracker(s) {unknown}; known: {TRACKERS.names()}")
    _check_strings("[tracking] trackers", tracking.trackers, fail)


def _check_best_of(recipe: Recipe, fail: Fail) -> None:
    from imgsynth.curation.rewards import CLIP, REWARDS

    c = recipe.curate
    if c.reward not in REWARDS:
        fail(f"[curate] reward {c.reward!r} is not a registered reward; registered: {', '.join(REWARDS.names())}")
    if c.best_of > 1 and CLIP in REWARDS[c.reward].needs and not recipe.metrics.clip:
        fail(f"[curate] reward {c.reward!r} needs a CLIP model: set [metrics] clip (open_clip weights on disk)")
    if recipe.generator.per_class * c.best_of > MAX_PER_CLASS:
        fail(f"[curate] best_of = {c.best_of} samples {recipe.generator.per_class * c.best_of} candidates per class "
             f"([generator] per_class × best_of); at most {MAX_PER_CLASS}")


def _check_embedding(embedding: str, fail: Fail) -> None:
    from imgsynth.curation.similarity import PIXELS, parse_pixel_spec

    prefix = embedding.split(":", 1)[0]
    try:
        pixels = parse_pixel_spec(embedding) if prefix == PIXELS else None
    except ValueError as exc:
        fail(f"[curate] embedding: {exc}")
    if pixels is None and prefix not in EXTRACTOR_PREFIXES:
        fail(f"[curate] embedding: unknown space {embedding!r}; use pixels:<size>, \"domain\" (the reference "
             f"classifier) or an extractor ({', '.join(EXTRACTOR_PREFIXES)})")
    if pixels is not None and pixels.size > MAX_IMAGE_SIZE:
        fail(f"[curate] embedding {embedding!r}: thumbnails larger than {MAX_IMAGE_SIZE} px are not supported")


def check_recipe_devices(recipe: Recipe) -> None:
    """Refuse, before a run loads anything, a recipe whose devices this machine does not have (e.g. ``cuda``
    on a machine without CUDA): ``validate`` checks only their spelling, so a recipe stays portable."""
    from imgsynth.compute import check_device

    check_device(recipe.generator.device, "[generator] device")
    device = recipe.generator.options.get("device")
    check_device(device if isinstance(device, str) else None, "[generator.options] device")


def pin_auto_preset(recipe: Recipe, started: Recipe) -> Recipe:
    """``recipe`` with ``[generator.options] preset = "auto"`` replaced by ``started``'s preset when ``auto``
    resolves to it for ``recipe``'s data (a run folder begun before the default recipe said ``auto``
    continues as it began); ``recipe`` itself otherwise."""
    from imgsynth.pipelines.base import build_kind

    g, before = recipe.generator, started.generator
    chosen = before.options.get("preset")
    if g.options.get("preset") != "auto" or g.kind != before.kind or chosen in (None, "auto"):
        return recipe
    try:
        config = build_kind(g.kind, g.options).check_data(image_size=recipe.data.size,
                                                            channels=IMAGE_MODES.get(recipe.data.mode, 1))
    except ValueError:
        return recipe
    if getattr(config, "preset", None) != chosen:
        return recipe
    return dataclasses.replace(recipe, generator=dataclasses.replace(g, options={**g.options, "preset": chosen}))


def replicate_seeds(recipe: Recipe) -> list[int]:
    """The seeds of a recipe's replicates, in order: ``[loop] seeds`` as a list, or a count from ``seed``."""
    seeds = recipe.loop.seeds
    return list(seeds) if isinstance(seeds, list) else [recipe.seed + i for i in range(seeds)]


def _validate_source(spec: str, where: str) -> None:
    from imgsynth.sources import SOURCES

    name, _, location = spec.partition(":")
    if name not in SOURCES:
        raise RecipeError(f"{where}: [data] source {spec!r}: unknown source; known: {sorted(SOURCES)}")
    if name in ("folder", "hf") and location and not Path(location).exists():
        raise RecipeError(f"{where}: [data] source {spec!r}: {location} does not exist")


def recipe_from_dict(values: Mapping[str, Any], where: str = "recipe") -> Recipe:
    """Build and validate a recipe from plain data."""
    return validate(_build(Recipe, values, where), where)


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """Read a TOML recipe, apply command-line overrides, validate.

    A problem an override causes is reported as that override's (``--set <override>: ...``): each is
    checked for a known field and type first; when the merged recipe fails validation though the file
    alone passes, the message names the overrides without which it would pass (all, if no single one).
    """
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    values = read_toml(path, error=RecipeError)  # size, depth and UTF-8 limits, one line naming the file
    if not overrides:
        return recipe_from_dict(values, str(path))
    for text in overrides:
        check_override(text)
    try:
        return recipe_from_dict(apply_overrides(copy.deepcopy(values), overrides), str(path))
    except RecipeError:
        if _fails(values, [], str(path)):
            raise  # the file is invalid by itself: the merged recipe's message names it
    # The file is fine, so the overrides broke it: blame those without which it passes (all, if none is).
    blamed = [text for i, text in enumerate(overrides)
              if len(overrides) == 1 or not _fails(values, [*overrides[:i], *overrides[i + 1:]], str(path))]
    where = " ".join(f"--set {text.strip()}" for text in blamed or overrides)
    return recipe_from_dict(apply_overrides(copy.deepcopy(values), overrides), where)


def _fails(values: Mapping[str, Any], overrides: Sequence[str], where: str) -> bool:
    """Whether ``values`` with ``overrides`` applied fails validation."""
    try:
        recipe_from_dict(apply_overrides(copy.deepcopy(dict(values)), overrides), where)
    except RecipeError:
        return True
    return False


def dump_recipe(recipe: Recipe) -> str:
    """The recipe as TOML text; ``recipe_from_dict(tomllib.loads(dump_recipe(r)))`` gives ``r`` back."""
    return tomli_w.dumps(recipe.to_dict())
