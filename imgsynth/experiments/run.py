"""A run folder's layout: where every seed, mode and generation lives, and which of them are finished.

The loop writes through it and reports read a run only through it (the recipe included), so nothing else
globs a run folder::

    runs/<name>/
      config.toml                          resolved recipe
      real/train real/test real/classifier  shared by every seed (the real split is fixed by data.split_seed)
      real/reference.json                  real-data reference values (real train vs real test, CAS of the
                                           classifier trained on real data, chance accuracy)
      seed_<s>/gen_0/                      generation 0 of seed s, shared by every mode of that seed
      seed_<s>/<mode>/gen_<k>/             generation k of one (seed, mode) chain
      run.json                             what ran: seeds, software, machine, wall time per stage
      theory.json                          exact-theory kinds only: each mode's closed-form expectations

Run folders written before seeds existed keep their flat layout (``gen_0/`` at the top) for their one
seed; seeds added later go under ``seed_<s>/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from imgsynth.experiments.config import Recipe, dump_recipe, load_recipe, replicate_seeds
from imgsynth.imageset import ImageSet, ImageSetError

CONFIG_FILE = "config.toml"
METRICS_FILE = "metrics.json"
REFERENCE_FILE = "reference.json"
RUN_INFO_FILE = "run.json"
THEORY_FILE = "theory.json"  # closed-form expectations of the exact-theory kinds (experiments.theory)
SEED_PREFIX = "seed_"
# What a generation passes on, first found first: its curated samples when it curated them, else its samples.
OUTPUT_FOLDERS = ("curated", "samples")


@dataclass(frozen=True)
class GenerationKey:
    """One generation of one chain: ``mode`` is ``"base"`` for the generation 0 a seed's modes share."""

    seed: int
    mode: str
    generation: int

    def label(self) -> str:
        if self.generation == 0:
            return f"seed {self.seed} gen 0"
        return f"seed {self.seed} {self.mode} gen {self.generation}"


class RunFolder:
    """The layout of one run folder (see the module docstring); cheap to build, reads only small files."""

    def __init__(self, root: str | Path, recipe: Recipe | None = None) -> None:
        self.root = Path(root)
        self._recipe = recipe

    @property
    def is_run(self) -> bool:
        """Whether the folder holds a run (its saved recipe, ``config.toml``)."""
        return (self.root / CONFIG_FILE).is_file()

    @property
    def recipe(self) -> Recipe:
        """The run's recipe: the one it was built with, else the saved ``config.toml`` (read once)."""
        if self._recipe is None:
            path = self.root / CONFIG_FILE
            if not path.is_file():
                raise FileNotFoundError(f"{self.root}: not a run folder (no {CONFIG_FILE})")
            self._recipe = load_recipe(path)
        return self._recipe

    def recipe_text(self) -> str:
        """The resolved recipe as TOML text, as ``config.toml`` holds it."""
        return dump_recipe(self.recipe)

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def seeds(self) -> list[int]:
        return replicate_seeds(self.recipe)

    @property
    def modes(self) -> list[str]:
        return list(self.recipe.loop.modes)

    @property
    def generations(self) -> int:
        return self.recipe.loop.generations

    @property
    def real_dir(self) -> Path:
        return self.root / "real"

    @property
    def reference_path(self) -> Path:
        return self.real_dir / REFERENCE_FILE

    @property
    def info_path(self) -> Path:
        return self.root / RUN_INFO_FILE

    @property
    def theory_path(self) -> Path:
        return self.root / THEORY_FILE

    def theory(self) -> dict[str, Any]:
        """``theory.json`` (empty when the run's kind has no closed forms), checked (:func:`check_theory`)."""
        if not self.theory_path.is_file():
            return {}
        payload = read_run_file(self.theory_path)
        check_theory(payload, self.theory_path)
        return payload

    def seed_dir(self, seed: int) -> Path:
        """Where a seed's generations live (the run root itself for a run written before seeds existed)."""
        if seed == self.seeds[0] and (self.root / "gen_0").is_dir():
            return self.root
        return self.root / f"{SEED_PREFIX}{seed}"

    def generation_dir(self, key: GenerationKey) -> Path:
        if key.generation == 0:
            return self.seed_dir(key.seed) / "gen_0"
        return self.seed_dir(key.seed) / key.mode / f"gen_{key.generation}"

    def curated_start_dir(self, seed: int, mode: str) -> Path:
        """Generation 0's samples curated for one curating mode, when the shared generation 0 is not."""
        return self.seed_dir(seed) / mode / "gen_0" / "curated"

    def output(self, key: GenerationKey) -> ImageSet | None:
        """The set generation ``key`` passed on (see ``OUTPUT_FOLDERS``); None before it has a complete one."""
        for name in OUTPUT_FOLDERS:
            try:
                return ImageSet.open(self.generation_dir(key) / name)
            except ImageSetError:
                continue
        return None

    def keys(self) -> Iterator[GenerationKey]:
        """Every generation of the recipe: per seed, generation 0, then each mode's chain."""
        for seed in self.seeds:
            yield GenerationKey(seed, "base", 0)
            for mode in self.modes:
                for k in range(1, self.generations):
                    yield GenerationKey(seed, mode, k)

    def finished(self) -> Iterator[tuple[GenerationKey, dict[str, Any]]]:
        """(key, metrics.json payload) of every finished generation, in :meth:`keys` order; each payload is
        checked (:func:`check_metrics_file`)."""
        for key in self.keys():
            path = self.generation_dir(key) / METRICS_FILE
            if path.is_file():
                yield key, read_metrics_file(path)

    def reference(self) -> dict[str, Any]:
        """The real-data reference values the loop recorded (empty for runs made before they existed), checked."""
        if not self.reference_path.is_file():
            return {}
        payload = read_run_file(self.reference_path)
        check_rows(payload, self.reference_path)
        return payload

    def check(self) -> None:
        """Read and check every run file (the recipe, each generation's ``metrics.json``, ``reference.json``,
        ``run.json``) before a report uses any: the first problem is one ``ValueError`` naming its file, and
        nothing has been written yet."""
        _ = self.recipe  # reading it checks it
        for _ in self.finished():
            pass
        self.reference()
        self.info()
        self.theory()

    def info(self) -> dict[str, Any]:
        """``run.json`` (empty before the run first finished), checked (:func:`check_run_info`)."""
        if not self.info_path.is_file():
            return {}
        payload = read_run_file(self.info_path)
        check_run_info(payload, self.info_path)
        return payload


# ------------------------------------------------------------------------------------- the run files' schemas

def read_run_file(path: Path) -> dict[str, Any]:
    """A run folder's JSON file as an object; malformed, too deep or not an object is one ``ValueError``
    naming the file."""
    from imgsynth.structured_files import read_json_object

    return read_json_object(path)


def read_metrics_file(path: Path) -> dict[str, Any]:
    """A generation's ``metrics.json``, checked (:func:`check_metrics_file`)."""
    payload = read_run_file(path)
    check_metrics_file(payload, path)
    return payload


def _problem(path: Path, field: str, value: Any, what: str) -> ValueError:
    from imgsynth.field_types import json_kind

    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:60] + "…"
    return ValueError(f"{path}: {field} = {shown} ({json_kind(value)}) {what}")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_rows(payload: Any, path: Path) -> None:
    """``rows``: a list of metric rows, each an object with string ``metric`` and ``class_name``, a number
    (or null) ``value``, numbers or nulls ``ci_low``/``ci_high``, a whole-number or null ``n`` and a string
    or null ``extractor`` (what reports read of them)."""
    from imgsynth.field_types import is_int

    rows = payload.get("rows")
    if not isinstance(rows, list):
        raise _problem(path, "rows", rows, "should be a list of metric rows")
    for i, row in enumerate(rows):
        where = f"rows[{i}]"
        if not isinstance(row, dict):
            raise _problem(path, where, row, "should be an object (metric, class_name, value, ...)")
        for key in ("metric", "class_name", "value"):
            if key not in row:
                raise ValueError(f"{path}: {where}: missing field {key!r}")
        for key in ("metric", "class_name"):
            if not isinstance(row[key], str):
                raise _problem(path, f"{where}.{key}", row[key], "should be a string")
        if row.get("extractor") is not None and not isinstance(row["extractor"], str):
            raise _problem(path, f"{where}.extractor", row["extractor"], "should be a string or null")
        for key in ("value", "ci_low", "ci_high"):
            if row.get(key) is not None and not _number(row[key]):
                raise _problem(path, f"{where}.{key}", row[key], "should be a number or null")
        if row.get("n") is not None and not is_int(row["n"]):
            raise _problem(path, f"{where}.n", row["n"], "should be a whole number or null")


def check_metrics_file(payload: Mapping[str, Any], path: Path) -> None:
    """A generation's ``metrics.json``: its rows (:func:`check_rows`) and the stage timings reports sum."""
    check_rows(payload, path)
    stages = payload.get("stage_seconds", {})
    if not (isinstance(stages, dict) and all(_number(v) for v in stages.values())):
        raise _problem(path, "stage_seconds", stages, "should map stage names to seconds")


def check_run_info(payload: Mapping[str, Any], path: Path) -> None:
    """``run.json``: the objects and numbers the report shows, of the types the loop writes."""
    for key in ("machine", "software", "stages_last_invocation", "stage_seconds_all_generations"):
        if key in payload and not isinstance(payload[key], dict):
            raise _problem(path, key, payload[key], "should be an object")
    for key in ("stages_last_invocation", "stage_seconds_all_generations"):
        if not all(_number(v) for v in payload.get(key, {}).values()):
            raise _problem(path, key, payload[key], "should map stage names to seconds")
    for key in ("workers", "threads_per_task", "generations"):
        if payload.get(key) is not None and not _number(payload[key]):
            raise _problem(path, key, payload[key], "should be a number")
    if payload.get("backend") is not None and not isinstance(payload["backend"], str):
        raise _problem(path, "backend", payload["backend"], "should be a string")


def check_theory(payload: Mapping[str, Any], path: Path) -> None:
    """``theory.json``: ``modes`` maps each mode to ``derived`` (a boolean) and, when derived, each metric of
    ``metrics`` to a list of numbers (one per generation); reports read nothing else of it."""
    metrics, modes = payload.get("metrics", []), payload.get("modes")
    if not (isinstance(metrics, list) and all(isinstance(m, str) for m in metrics)):
        raise _problem(path, "metrics", metrics, "should be a list of metric names")
    if not isinstance(modes, dict):
        raise _problem(path, "modes", modes, "should map loop modes to their expectations")
    for mode, entry in modes.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("derived"), bool):
            raise _problem(path, f"modes.{mode}", entry, "should be an object with a boolean 'derived'")
        for metric in metrics if entry["derived"] else ():
            values = entry.get(metric)
            if not (isinstance(values, list) and all(_number(v) for v in values)):
                raise _problem(path, f"modes.{mode}.{metric}", values, "should be a list of numbers")
