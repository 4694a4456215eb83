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

Run folders written before seeds existed keep their flat layout (``gen_0/`` at the top) for their one
seed; seeds added later go under ``seed_<s>/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from imgsynth.experiments.config import Recipe, dump_recipe, load_recipe, replicate_seeds
from imgsynth.imageset import ImageSet, ImageSetError
from imgsynth.structured_files import read_json

CONFIG_FILE = "config.toml"
METRICS_FILE = "metrics.json"
REFERENCE_FILE = "reference.json"
RUN_INFO_FILE = "run.json"
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
        """(key, metrics.json payload) of every finished generation, in :meth:`keys` order."""
        for key in self.keys():
            path = self.generation_dir(key) / METRICS_FILE
            if path.is_file():
                yield key, read_json(path)

    def reference(self) -> dict[str, Any]:
        """The real-data reference values the loop recorded (empty for runs made before they existed)."""
        if not self.reference_path.is_file():
            return {}
        return read_json(self.reference_path)

    def info(self) -> dict[str, Any]:
        if not self.info_path.is_file():
            return {}
        return read_json(self.info_path)
