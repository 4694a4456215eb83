"""Experiment recipes: a TOML file ⇄ a tree of dataclasses, validated before any work starts.

A recipe names the real data, the generator, the loop modes to compare, the metrics and the
classifier. ``load_recipe`` reads TOML, applies ``section.field=value`` overrides from the command line
and validates; ``dump_recipe`` writes the resolved recipe back (saved as ``config.toml`` in the run).
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

import tomli_w

LOOP_MODES = ("replace", "accumulate", "mix", "fresh")
# A loop mode with this suffix ("replace+curate") runs the base mode with the [curate] filters applied,
# so one run can compare a mode with and without curation.
CURATED_SUFFIX = "+curate"
GENERATOR_KINDS = ("conditional", "text2image")
EXTRACTOR_PREFIXES = ("domain", "inception", "clip", "dinov2")


class RecipeError(ValueError):
    """A recipe is invalid; raised before any work starts, naming the recipe file and the field."""


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
    """What is retrained each generation and how it samples (guidance is the sampling-bias knob)."""

    kind: str = "conditional"
    preset: str = "digits16-cpu"
    train_steps: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    per_class: int = 100
    sample_steps: int = 25
    guidance_scale: float = 2.0
    noise_temperature: float = 1.0
    sample_batch_size: int = 256
    # text2image generators: a local diffusers pipeline (or hub id in the user's cache), LoRA settings.
    model: str = ""
    classes: list[str] = field(default_factory=list)
    prompts: str = ""
    lora_steps: int = 200
    lora_rank: int = 8
    device: str | None = None


@dataclass
class LoopConfig:
    """Generations and the loop modes compared side by side on the same real data and seeds."""

    generations: int = 5
    modes: list[str] = field(default_factory=lambda: ["replace", "accumulate", "mix"])
    mix_real_fraction: float = 0.1


@dataclass
class MetricsConfig:
    """Feature extractors ('domain' = the classifier trained on real data), bootstrap and CLIP weights."""

    extractors: list[str] = field(default_factory=lambda: ["domain"])
    per_class: bool = True
    bootstrap: int = 0
    clip: str = ""
    max_per_class: int | None = None


@dataclass
class ClassifierSettings:
    """The classifier trained on every generation's samples and scored on the real test set (CAS)."""

    arch: str = "resnet18_small"
    epochs: int = 4
    batch_size: int = 128
    lr: float | None = None
    enabled: bool = True


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

    def to_dict(self) -> dict[str, Any]:
        return _drop_none(dataclasses.asdict(self))


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
    kinds = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,), "list": (list,)}
    allowed = [k for k in kinds if k in str(spec.type).replace("list[str]", "list")]
    if value is None and "None" in str(spec.type):
        return value
    ok = any(isinstance(value, kinds[k]) and not (k in ("int", "float") and isinstance(value, bool))
             for k in allowed)
    if allowed and not ok:
        raise RecipeError(f"{where}: {spec.name} = {value!r} should be {spec.type}")
    if isinstance(value, list) and not all(isinstance(v, str) for v in value):
        raise RecipeError(f"{where}: {spec.name} must be a list of strings, got {value!r}")
    return value


_SECTIONS: dict[str, type] = {
    "data": DataConfig, "generator": GeneratorConfig, "loop": LoopConfig,
    "metrics": MetricsConfig, "classifier": ClassifierSettings, "curate": CurateConfig,
}


def _parse_override(text: str) -> tuple[list[str], Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise RecipeError(f"override {text!r}: expected section.field=value")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # bare strings need no quotes on the command line
    return key.strip().split("."), value


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
    """Check every field that could otherwise fail hours into a run."""
    def fail(message: str) -> None:
        raise RecipeError(f"{where}: {message}")

    if not recipe.name or "/" in recipe.name:
        fail(f"name {recipe.name!r} must be a non-empty folder name")
    unknown = [m for m in recipe.loop.modes if base_mode(m) not in LOOP_MODES]
    if unknown:
        fail(f"[loop] modes: unknown mode(s) {unknown}; known: {list(LOOP_MODES)}, "
             f"each optionally with {CURATED_SUFFIX!r}")
    if not recipe.loop.modes:
        fail("[loop] modes: at least one loop mode is needed")
    if len(set(recipe.loop.modes)) != len(recipe.loop.modes):
        fail(f"[loop] modes: repeated mode in {recipe.loop.modes}")
    if not 0.0 <= recipe.loop.mix_real_fraction <= 1.0:
        fail(f"[loop] mix_real_fraction must lie in [0, 1], got {recipe.loop.mix_real_fraction}")
    if recipe.loop.generations < 1:
        fail(f"[loop] generations must be at least 1, got {recipe.loop.generations}")
    if not recipe.data.source:
        fail("[data] source is missing (e.g. source = \"digits\" or \"folder:/path/to/classes\")")
    _validate_source(recipe.data.source, where)
    if not 0.0 < recipe.data.test_fraction < 1.0:
        fail(f"[data] test_fraction must lie in (0, 1), got {recipe.data.test_fraction}")
    if recipe.generator.kind not in GENERATOR_KINDS:
        fail(f"[generator] kind must be one of {list(GENERATOR_KINDS)}, got {recipe.generator.kind!r}")
    if recipe.generator.kind == "text2image" and not recipe.generator.model:
        fail("[generator] model: a text2image generator needs a local pipeline path or hub id")
    if recipe.generator.per_class < 1:
        fail(f"[generator] per_class must be at least 1, got {recipe.generator.per_class}")
    if not recipe.metrics.extractors:
        fail("[metrics] extractors: at least one feature extractor is needed (e.g. \"domain\")")
    for name in recipe.metrics.extractors:
        if name.split(":", 1)[0] not in EXTRACTOR_PREFIXES:
            fail(f"[metrics] extractors: unknown extractor {name!r}; known prefixes: {list(EXTRACTOR_PREFIXES)}")
    if recipe.metrics.bootstrap < 0:
        fail(f"[metrics] bootstrap must be ≥ 0, got {recipe.metrics.bootstrap}")
    bad_curate_modes = [m for m in recipe.curate.modes if m not in recipe.loop.modes]
    if bad_curate_modes:
        fail(f"[curate] modes {bad_curate_modes} are not among [loop] modes {recipe.loop.modes}")
    c = recipe.curate
    if c.embedding:
        from imgsynth.curation.similarity import PIXELS, parse_pixel_spec

        prefix = c.embedding.split(":", 1)[0]
        try:
            known = prefix == PIXELS and parse_pixel_spec(c.embedding) is not None or prefix in EXTRACTOR_PREFIXES
        except ValueError as exc:
            fail(f"[curate] embedding: {exc}")
        if not known:
            fail(f"[curate] embedding: unknown space {c.embedding!r}; use pixels:<size>, \"domain\" (the reference "
                 f"classifier) or an extractor ({', '.join(EXTRACTOR_PREFIXES)})")
    curating = c.enabled or any(m.endswith(CURATED_SUFFIX) for m in recipe.loop.modes)
    no_filter = all(v is None for v in (c.dedup, c.min_confidence, c.min_clip_score, c.clip_top_fraction))
    if curating and no_filter and not c.rebalance:
        fail("[curate] nothing to do: set dedup, min_confidence, min_clip_score, clip_top_fraction or "
             f"rebalance (needed by enabled = true and by {CURATED_SUFFIX!r} modes)")
    return recipe


def base_mode(mode: str) -> str:
    """The loop mode a mode name runs: ``replace+curate`` → ``replace``."""
    return mode.removesuffix(CURATED_SUFFIX)


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
    """Read a TOML recipe, apply command-line overrides, validate."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{path}: not valid TOML ({exc})") from exc
    return recipe_from_dict(apply_overrides(values, overrides), str(path))


def dump_recipe(recipe: Recipe) -> str:
    """The recipe as TOML text; ``recipe_from_dict(tomllib.loads(dump_recipe(r)))`` gives ``r`` back."""
    return tomli_w.dumps(recipe.to_dict())
