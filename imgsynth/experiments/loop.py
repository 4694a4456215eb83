"""The recursive-generation loop: each generation's generator learns from the previous generation's output.

A run holds several replicates (``[loop] seeds``); each seed's generation 0 trains on the real data and
is shared by that seed's modes, after which every (seed, mode) *chain* is independent. The chains run
as tasks (:mod:`imgsynth.distributed.tasks`): in this process, in local worker processes
(``workers``) or on Ray, every one with the same torch thread count, so the numbers do not depend on
how the work was split. The folder layout is :class:`imgsynth.experiments.run.RunFolder`'s.

Every stage reads and writes ImageSets or model folders on disk, and ``metrics.json`` is written last
(atomically), so a generation with a ``metrics.json`` is finished and never recomputed; a killed run
continues where it stopped, and a run extended with more seeds computes only the new ones.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import shutil
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from imgsynth.atomic_files import write_json_atomic, write_text_atomic
from imgsynth.experiments.config import (Recipe, RecipeError, dump_recipe, load_recipe, pin_auto_preset,
                                         recipe_from_dict, replicate_seeds)
from imgsynth.experiments.modes import (CURATED_SUFFIX, LOOP_MODES, LoopData, LoopMode, ModeInputs, base_mode,
                                        loop_seed, mode_settings)
from imgsynth.experiments.run import CONFIG_FILE, METRICS_FILE, GenerationKey, RunFolder
from imgsynth.imageset import ImageSet, ImageSetError
from imgsynth.locking import folder_lock
from imgsynth.notes import Note
from imgsynth.progress import RunMonitor, current_observer, emit, in_process_events, task_events, task_scope
from imgsynth.sources import import_source
from imgsynth.terminal import NORMAL, VERBOSE, say
from imgsynth.safe_paths import make_dirs_inside, refuse_links_below

if TYPE_CHECKING:
    from imgsynth.pipelines.base import GeneratorKind

# Torch threads of every task (generation 0 of a seed, a chain), wherever it runs: CPU results depend on
# the thread count, so a fixed count keeps serial, parallel and Ray runs identical. One thread per
# process is also what small models use best: two one-thread chains beat one two-thread chain.
TASK_THREADS = 1
# What [metrics] train_set_metrics adds (the metrics declared with the TRAIN_FEATURES need); for them, the
# real-data reference is the real test set against the real training set.
TRAIN_SET_METRICS = ("memorisation_rate", "authenticity", "knn_entropy", "train_knn_entropy")
# Recipe fields a started run may change: more (or other) replicates only add seed folders.
EXTENSIBLE_FIELDS = ("loop.seeds",)


def _log(message: str, level: int = VERBOSE) -> None:
    """A line of the loop's own log: per-generation lines show with ``--verbose`` (the progress display stands
    for them otherwise), the few lines of the run's setup (``level=NORMAL``) show by default."""
    if not emit("log", message=message, level=level):  # inside a task: the parent decides what shows
        say(message, level=level)


def task_name(seed: int, mode: str | None = None) -> str:
    """A task's name, as the parent schedules it and its progress events name it."""
    return f"seed {seed} gen 0" if mode is None else f"seed {seed} {mode} chain"


class _AnnouncedStages:
    """The stage hook wrapped so every stage is also a progress event (picklable: a module-level class)."""

    def __init__(self, hook: Callable[[str, GenerationKey], None]) -> None:
        self.hook = hook

    def __call__(self, stage: str, key: GenerationKey) -> None:
        emit("stage", stage=stage, key=key.label())
        self.hook(stage, key)


def _open_if_complete(path: Path) -> ImageSet | None:
    try:
        return ImageSet.open(path)
    except ImageSetError:
        return None


def _no_hook(stage: str, key: GenerationKey) -> None:
    """The default stage hook (module level, so an Experiment pickles to worker processes)."""


class Experiment:
    """One run folder for one recipe; ``run()`` does (or finishes) every generation of every seed and mode."""

    def __init__(self, recipe: Recipe, run_dir: str | Path,
                 stage_hook: Callable[[str, GenerationKey], None] | None = None, *, workers: int = 1,
                 backend: str = "local", address: str | None = None, progress: bool = True,
                 after_task: Callable[[], None] | None = None, verbose: bool = False) -> None:
        self.recipe = recipe
        self.run_dir = Path(run_dir)
        self.folder = RunFolder(self.run_dir, recipe)
        # Called before every stage; tests use it to simulate a crash at an exact point (serial runs only).
        self.stage_hook = _AnnouncedStages(stage_hook or _no_hook)
        self.workers, self.backend, self.address = workers, backend, address
        self.progress = progress and workers == 1 and backend == "local"  # bars of parallel tasks would mix
        # Called in this process after each finished task (trackers log what is new: imgsynth.tracking).
        self.after_task = after_task
        self.verbose = verbose  # Ray's own log lines in the terminal

    # ------------------------------------------------------------------ entry points
    @classmethod
    def resume(cls, run_dir: str | Path, overrides: Sequence[str] = (), **kwargs: Any) -> Experiment:
        """Reopen a run folder with the recipe saved in it; ``overrides`` may change only ``loop.seeds``."""
        run_dir = Path(run_dir)
        for text in overrides:
            key = text.partition("=")[0].strip()
            if key not in EXTENSIBLE_FIELDS:
                raise RecipeError(f"--set {text}: a started run can change only {', '.join(EXTENSIBLE_FIELDS)} "
                                  "(to add replicates); start a new run folder to change anything else")
        return cls(load_recipe(run_dir / CONFIG_FILE, overrides), run_dir, **kwargs)

    def run(self) -> Path:
        """Run every generation of every seed and loop mode; returns the run folder.

        The run folder is locked for the whole run: a second ``imgsynth run`` into it is refused at once.
        Reports are not the loop's business: whoever ran it builds them from the folder
        (:func:`imgsynth.reports.build.run_and_report` does both, as ``imgsynth run`` does).
        """
        with folder_lock(self.run_dir):
            return self._run()

    def _run(self) -> Path:
        import torch  # noqa: F401 - loaded before torch_threads, which only sets an imported torch

        from imgsynth.compute import torch_threads
        from imgsynth.distributed.tasks import run_tasks

        started = time.perf_counter()
        stages: dict[str, float] = {}
        # Below the run folder everything is imgsynth's: a link anywhere in it (a resumed or extended run)
        # would make a later write land outside it.
        refuse_links_below(self.run_dir)
        self._save_config()
        with torch_threads(TASK_THREADS):
            t0 = time.perf_counter()
            real_train, real_test, full_train = self._real_data()
            self._check_modes(self._loop_data(real_train, full_train))
            self._write_theory(self._loop_data(real_train, full_train))
            stages["real data"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            reference_ckpt = self._reference_classifier(full_train)
            self._reference_values(real_train, real_test, reference_ckpt)
            stages["real-data reference"] = time.perf_counter() - t0
        tasks = self._pending_tasks()
        if tasks:
            where = f"{self.workers} local worker(s)" if self.backend == "local" else "Ray"
            _log(f"{len(tasks)} task(s) to run on {where}, {TASK_THREADS} torch thread(s) each", NORMAL)
        t0 = time.perf_counter()
        # Progress and notes of the tasks reach the parent's observer (the CLI's display), wherever they run.
        observer = current_observer()
        observer.plan([t.name for t in tasks], sum(not self._finished(k) for k in self.folder.keys()))
        with RunMonitor(self.run_dir, observer), in_process_events(observer):
            run_tasks(tasks, workers=self.workers, backend=self.backend, address=self.address, threads=TASK_THREADS,
                      on_done=self._task_done, verbose=self.verbose)
        stages["generations (wall)"] = time.perf_counter() - t0
        self._write_info(stages, time.perf_counter() - started)
        return self.run_dir

    def _task_done(self, task: Any) -> None:
        if self.after_task is not None:
            self.after_task()

    def _pending_tasks(self) -> list[Any]:
        """One task per seed's generation 0 and per (seed, mode) chain, leaving out the finished ones."""
        from imgsynth.distributed.tasks import Task

        # In this process the tasks are this object's own methods (so a stage hook sees them); elsewhere
        # module functions that rebuild the Experiment from the recipe.
        serial = self.workers == 1 and self.backend == "local"
        tasks = []
        for seed in replicate_seeds(self.recipe):
            base = GenerationKey(seed, "base", 0)
            base_name = task_name(seed)
            base_done = self._finished(base)
            if not base_done:
                tasks.append(Task(base_name, self.base, (seed,)) if serial else
                             Task(base_name, run_base, (self.recipe, str(self.run_dir), seed)))
            for mode in self.recipe.loop.modes:
                keys = [GenerationKey(seed, mode, k) for k in range(1, self.recipe.loop.generations)]
                start_done = not self._curated_start_needed(mode) or \
                    _open_if_complete(self.folder.curated_start_dir(seed, mode)) is not None
                if not (start_done and all(map(self._finished, keys))):
                    name, after = task_name(seed, mode), None if base_done else base_name
                    # The mode is resolved here and travels with the task, so a worker process needs no
                    # registration of its own (a mode registered at run time, by a plugin or a test).
                    loop_mode = LOOP_MODES[base_mode(mode)]
                    tasks.append(Task(name, self.chain, (seed, mode, loop_mode), after) if serial else
                                 Task(name, run_chain, (self.recipe, str(self.run_dir), seed, mode, loop_mode), after))
        return tasks

    def _finished(self, key: GenerationKey) -> bool:
        return (self.folder.generation_dir(key) / METRICS_FILE).is_file()

    # ------------------------------------------------------------------ tasks
    def base(self, seed: int) -> ImageSet:
        """Generation 0 of replicate ``seed`` (trained on the real data; shared by the seed's modes)."""
        with task_scope(task_name(seed)):
            real_train, real_test, _ = self._real_data()
            return self._generation(GenerationKey(seed, "base", 0), real_train, real_test,
                                    self._reference_checkpoint())

    def chain(self, seed: int, mode: str, loop_mode: LoopMode | None = None) -> list[ImageSet]:
        """Generations 1… of one (seed, mode) chain; generation 0 must be done. Returns every output.

        ``loop_mode`` is the registered entry of ``mode`` (looked up in :data:`LOOP_MODES` when not given).
        """
        with task_scope(task_name(seed, mode)):
            return self._chain(seed, mode, loop_mode or LOOP_MODES[base_mode(mode)])

    def _chain(self, seed: int, mode: str, loop_mode: LoopMode) -> list[ImageSet]:
        real_train, real_test, full_train = self._real_data()
        data = self._loop_data(real_train, full_train)
        reference_ckpt = self._reference_checkpoint()
        base = self._generation(GenerationKey(seed, "base", 0), real_train, real_test, reference_ckpt)
        history = [self._curated_start(base, seed, mode, reference_ckpt, real_train)]
        for k in range(1, self.recipe.loop.generations):
            key = GenerationKey(seed, mode, k)
            if self._finished(key):  # its output is all the chain needs of a finished generation
                history.append(self._output(key))
                continue
            train_set = self._training_set(key, loop_mode, data, history)
            history.append(self._generation(key, train_set, real_test, reference_ckpt))
        return history

    # ------------------------------------------------------------------ folders
    def generation_dir(self, key: GenerationKey) -> Path:
        return self.folder.generation_dir(key)

    def _make_folder(self, folder: Path) -> Path:
        """Create ``folder`` of the run level by level, refusing a link (or a file) at any level below the run
        folder (:func:`imgsynth.safe_paths.make_dirs_inside`); returns ``folder``."""
        make_dirs_inside(self.run_dir, Path(folder).relative_to(self.run_dir))
        return folder

    def _save_config(self) -> None:
        """Write ``config.toml``, or check the run folder was started with this recipe (up to its seeds)."""
        make_dirs_inside(self.run_dir)
        path = self.run_dir / CONFIG_FILE
        text = dump_recipe(self.recipe)
        if path.exists():
            existing = path.read_text(encoding="utf-8")
            if existing == text:
                return
            with warnings.catch_warnings():
                # A config.toml in older spellings is rewritten below in today's; its note helps nobody.
                warnings.simplefilter("ignore", Note)
                started = load_recipe(path)
            # A run begun before the default recipe said preset "auto" goes on with the preset it chose.
            self.recipe = pin_auto_preset(self.recipe, started)
            self.folder = RunFolder(self.run_dir, self.recipe)
            text = dump_recipe(self.recipe)
            same_but_seeds = dataclasses.replace(self.recipe, loop=dataclasses.replace(
                self.recipe.loop, seeds=started.loop.seeds))
            if dump_recipe(same_but_seeds) != dump_recipe(started):  # as read now (older spellings translated)
                raise RecipeError(f"{path}: this run folder was started with another recipe; "
                                  "use a new run folder (or delete this one) to change settings")
            before, after = replicate_seeds(started), replicate_seeds(self.recipe)
            if after[:len(before)] != before:  # its reports and layout speak of every seed it has
                raise RecipeError(f"{path}: this run has seeds {before}; loop.seeds may only grow (keep {before} "
                                  f"first and add seeds after them), not become {after}")
            if after != before:
                _log(f"replicates: {before} → {after}", NORMAL)
        write_text_atomic(path, text)

    def _write_info(self, stages: dict[str, float], wall: float) -> None:
        """``run.json``: what ran, where, and how long each stage took (summed over every generation)."""
        import torch

        from imgsynth.provenance import software_versions

        per_stage: dict[str, float] = {}
        for _, payload in self.folder.finished():
            for stage, seconds in payload.get("stage_seconds", {}).items():
                per_stage[stage] = per_stage.get(stage, 0.0) + seconds
        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        write_json_atomic(self.folder.info_path, {
            "seeds": replicate_seeds(self.recipe), "modes": list(self.recipe.loop.modes),
            "generations": self.recipe.loop.generations, "workers": self.workers, "backend": self.backend,
            "threads_per_task": TASK_THREADS, "wall_seconds_last_invocation": round(wall, 1),
            "stages_last_invocation": {k: round(v, 1) for k, v in stages.items()},
            "stage_seconds_all_generations": {k: round(v, 1) for k, v in per_stage.items()},
            "software": software_versions(),
            "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                        "cpus": os.cpu_count(), "gpu": gpu},
        }, indent=2)

    # ------------------------------------------------------------------ real data
    def _real_data(self) -> tuple[ImageSet, ImageSet, ImageSet]:
        """(training set of generation 0, held-out test set, full real train split)."""
        data = self.recipe.data
        real = self.run_dir / "real"
        train, test = _open_if_complete(real / "train"), _open_if_complete(real / "test")
        if train is None or test is None:
            self._make_folder(real)
            _log(f"importing real data {data.source!r} at {data.size}px", NORMAL)
            train, test = import_source(data.source, real, size=data.size, mode=data.mode,
                                        test_fraction=data.test_fraction, seed=data.split_seed)
        if not data.minority_classes:
            return train, test, train
        unknown = [c for c in data.minority_classes if c not in train.classes]
        if unknown:
            raise RecipeError(f"[data] minority_classes {unknown} are not classes of {data.source!r}: {train.classes}")
        path = real / "train-minority"
        minority = _open_if_complete(path)
        if minority is None:
            keep = _minority_indices(train, data.minority_classes, data.minority_keep, self.recipe.seed)
            minority = train.subset(keep, path, config={"minority_classes": data.minority_classes,
                                                        "minority_keep": data.minority_keep})
        return minority, test, train

    def _loop_data(self, real_train: ImageSet, full_train: ImageSet) -> LoopData:
        loop = self.recipe.loop
        return LoopData(real_train=real_train, real_pool=full_train, per_class=self.recipe.generator.per_class,
                        generations=loop.generations, mix_real_fraction=loop.mix_real_fraction,
                        **mode_settings(loop))

    def _check_modes(self, data: LoopData) -> None:
        """Each loop mode's own check of the real data (``fresh``: enough for every generation), before any task."""
        for name in dict.fromkeys(map(base_mode, self.recipe.loop.modes)):
            check = LOOP_MODES[name].check
            if check is None:
                continue
            try:
                check(data)
            except ValueError as exc:
                raise RecipeError(str(exc)) from exc

    # ------------------------------------------------------------------ training sets
    def _training_set(self, key: GenerationKey, loop_mode: LoopMode, data: LoopData,
                      history: list[ImageSet]) -> ImageSet:
        """Training data of generation k, made by the key's loop mode (reused when already on disk)."""
        out = self.generation_dir(key) / "train_set"
        existing = _open_if_complete(out)
        if existing is not None:
            return existing
        self.stage_hook("train_set", key)
        self._make_folder(self.generation_dir(key))
        scratch = self.generation_dir(key) / "train_parts"
        shutil.rmtree(scratch, ignore_errors=True)
        inputs = ModeInputs(data=data, history=tuple(history), generation=key.generation, seed=key.seed,
                            out=out, scratch=scratch)
        result = loop_mode.build(inputs)
        shutil.rmtree(scratch, ignore_errors=True)
        return result

    # ------------------------------------------------------------------ one generation
    def _generation(self, key: GenerationKey, train_set: ImageSet, real_test: ImageSet,
                    reference_ckpt: Path | None) -> ImageSet:
        folder = self.generation_dir(key)
        samples_dir = folder / "samples"
        if (folder / METRICS_FILE).is_file():
            return self._output(key)
        self._make_folder(folder)
        t0 = time.perf_counter()
        seconds: dict[str, float] = {}

        def timed(stage: str, work: Callable[[], Any]) -> Any:
            self.stage_hook(stage, key)
            started = time.perf_counter()
            result = work()
            seconds[stage] = round(seconds.get(stage, 0.0) + time.perf_counter() - started, 3)
            return result

        model_dir = timed("train", lambda: self._train_generator(train_set, folder / "model", key))
        samples = timed("sample", lambda: _open_if_complete(samples_dir) or self._sample(model_dir, samples_dir, key))
        output = timed("curate", lambda: self._curate(samples, folder, key, reference_ckpt))
        rows = timed("evaluate", lambda: self._evaluate(output, real_test, reference_ckpt, folder, key, train_set))
        rows.extend(self._moment_rows(model_dir))  # exact-theory kinds: the fit's moments (experiments.theory)
        rows.append(_row("train_size", "all", len(train_set), len(train_set)))
        rows.append(_row("sample_count", "all", len(output), len(output)))
        payload = {"seed": key.seed, "mode": key.mode, "generation": key.generation, "train_set": {
            "id": train_set.id, "path": os.path.relpath(train_set.root, self.run_dir), "size": len(train_set)},
            "samples": {"id": output.id, "path": os.path.relpath(output.root, self.run_dir)},
            "seconds": round(time.perf_counter() - t0, 2), "stage_seconds": seconds, "rows": rows}
        write_json_atomic(folder / METRICS_FILE, payload, indent=2)
        emit("generation", key=key.label(), seconds=payload["seconds"])
        _log(f"{key.label()}: done in {payload['seconds']:.1f}s")
        return output

    def _write_theory(self, data: LoopData) -> None:
        """``theory.json``: each mode's closed-form expectations, for a kind that has them (none: no file)."""
        from imgsynth.experiments.theory import expectations

        payload = expectations(self.recipe, data)
        if payload is not None:
            write_json_atomic(self.folder.theory_path, payload, indent=2)

    def _moment_rows(self, model_dir: Path) -> list[dict[str, Any]]:
        """The fitted model's mean error and variance ratio against the real data (closed-form kinds only)."""
        from imgsynth.experiments.theory import moment_rows, real_moments

        kind = self._kind()
        if getattr(kind, "fitted_moments", None) is None or not (Path(model_dir) / "model.safetensors").is_file():
            return []
        if not hasattr(self, "_real_moments"):
            self._real_moments = real_moments(self._real_data()[0])
        return moment_rows(kind, model_dir, *self._real_moments)

    def _output(self, key: GenerationKey) -> ImageSet:
        """What a finished generation passed on; a missing set is an error naming its samples folder."""
        output = self.folder.output(key)
        return output if output is not None else ImageSet.open(self.generation_dir(key) / "samples")

    def _train_generator(self, train_set: ImageSet, out: Path, key: GenerationKey) -> Path:
        kind = self._kind()
        if key.generation == 0 and kind.pretrained:
            return Path(kind.pretrained)  # generation 0 samples the pretrained model itself
        _log(f"{key.label()}: fitting {self.recipe.generator.kind} to {len(train_set)} images")
        return kind.fit(train_set, out, loop_seed(key.seed, "train", key.generation), progress=self.progress)

    def _kind(self) -> GeneratorKind:
        """The recipe's generator kind from the registry, with its options (read once, in the recipe)."""
        from imgsynth.pipelines.base import build_kind

        return build_kind(self.recipe.generator.kind, self.recipe.generator.options)

    def _sample(self, model_dir: Path, out: Path, key: GenerationKey, best_of: int | None = None) -> ImageSet:
        g = self.recipe.generator
        # Best-of-K curation picks among K candidates per kept image: a curating generation samples K × per_class
        # (image indices ≥ per_class are the extra candidates; the first per_class are the uncurated sample's).
        per_class = g.per_class * (self._best_of(key) if best_of is None else best_of)
        _log(f"{key.label()}: sampling {per_class} per class")
        # Fresh noise every generation: reusing the same image seeds in every generation couples the
        # generations (the exact-theory check showed it biases the variance collapse upwards, 0.98 instead of
        # 0.81 of the start after four MLE refits); every theory of recursive training assumes fresh draws.
        seed = loop_seed(key.seed, "sample", key.generation)
        marking = self.recipe.provenance.marking()
        if marking.any:  # [provenance]: watermark and/or C2PA signing on top of the XMP marker
            from imgsynth.pipelines.sharding import with_marking, write_set

            job = self._kind().job(model_dir, per_class, seed, generation=key.generation)
            return write_set(with_marking(job, marking), out, progress=self.progress)
        return self._kind().sample(model_dir, out, per_class, seed, generation=key.generation,
                                   progress=self.progress)

    def _best_of(self, key: GenerationKey) -> int:
        """K of best-of-K curation for this generation's samples (1: no selection among candidates)."""
        k = self.recipe.curate.best_of or 1
        if k == 1:
            return 1
        if key.generation == 0:
            return k if all(map(self._curates, self.recipe.loop.modes)) else 1
        return k if self._curates(key.mode) else 1

    def _curates(self, mode: str) -> bool:
        """Whether a loop mode curates its samples: a ``<mode>+curate`` mode, or [curate] enabled for it."""
        c = self.recipe.curate
        if (c.best_of or 1) == 1 and not c.rebalance and \
                all(v is None for v in (c.dedup, c.min_confidence, c.min_clip_score, c.clip_top_fraction)):
            return False  # best of 1 and nothing else changes nothing: the chain passes its samples on as they are
        return mode.endswith(CURATED_SUFFIX) or (c.enabled and (not c.modes or mode in c.modes))

    def _curate(self, samples: ImageSet, folder: Path, key: GenerationKey, reference_ckpt: Path | None) -> ImageSet:
        if key.generation == 0:
            if not all(map(self._curates, self.recipe.loop.modes)):
                return samples  # generation 0 is shared; curate it in place only when every mode curates
        elif not self._curates(key.mode):
            return samples
        return self._apply_curation(samples, folder / "curated", key, reference_ckpt)

    def _curated_start_needed(self, mode: str) -> bool:
        return self._curates(mode) and not all(map(self._curates, self.recipe.loop.modes))

    def _curated_start(self, base: ImageSet, seed: int, mode: str, reference_ckpt: Path | None,
                       real_train: ImageSet | None = None) -> ImageSet:
        """Generation 0's output as ``mode`` feeds it on: curated into ``<mode>/gen_0/curated`` when the
        shared generation 0 was left uncurated (its metrics stay those of the shared, uncurated samples).
        With best-of-K the shared samples are too few to choose from: generation 0's model samples the
        K × per_class candidates into ``<mode>/gen_0/candidates`` (same sample seed, so its first per_class
        images per class are the shared ones)."""
        if not self._curated_start_needed(mode):
            return base
        out = self.folder.curated_start_dir(seed, mode)
        k = self.recipe.curate.best_of or 1
        if k > 1 and _open_if_complete(out) is None:
            base_key = GenerationKey(seed, "base", 0)
            candidates_dir = out.parent / "candidates"
            self._make_folder(out.parent)
            model_dir = self._train_generator(real_train or self._real_data()[0],
                                              self.generation_dir(base_key) / "model", base_key)
            base = _open_if_complete(candidates_dir) or self._sample(model_dir, candidates_dir, base_key, best_of=k)
        return self._apply_curation(base, out, GenerationKey(seed, mode, 0), reference_ckpt)

    def _apply_curation(self, samples: ImageSet, out: Path, key: GenerationKey,
                        reference_ckpt: Path | None) -> ImageSet:
        existing = _open_if_complete(out)
        if existing is not None:
            return existing
        from imgsynth import curation

        c = self.recipe.curate
        self.stage_hook("curate", key)
        embedding = f"domain:{reference_ckpt}" if c.embedding == "domain" else c.embedding or None
        return curation.curate(samples, out, dedup=c.dedup, min_confidence=c.min_confidence,
                               min_clip_score=c.min_clip_score, clip_top_fraction=c.clip_top_fraction,
                               classifier=reference_ckpt, clip=self.recipe.metrics.clip or None,
                               rebalance=c.rebalance, seed=key.seed, embedding=embedding,
                               best_of=c.best_of or 1, reward=c.reward)

    # ------------------------------------------------------------------ evaluation
    def _reference_classifier(self, full_train: ImageSet) -> Path | None:
        needs_domain = any(e.split(":", 1)[0] == "domain" for e in self.recipe.metrics.extractors)
        curate = self.recipe.curate
        chooses_by_confidence = (curate.best_of or 1) > 1 and curate.reward == "confidence"
        if not (needs_domain or self.recipe.classifier.enabled or curate.min_confidence or curate.embedding == "domain"
                or chooses_by_confidence):
            return None
        out = self.run_dir / "real" / "classifier"
        if (out / "classifier.json").is_file():
            return out
        _log("training the reference classifier on real data (the 'domain' feature extractor)", NORMAL)
        return self._train_classifier(full_train, out, seed=self.recipe.seed,
                                      use_weights=self.recipe.classifier.use_weights)

    def _reference_checkpoint(self) -> Path | None:
        """The reference classifier the parent trained before any task ran (None when nothing needs it)."""
        out = self.folder.real_dir / "classifier"
        return out if (out / "classifier.json").is_file() else None

    def _reference_values(self, real_train: ImageSet, real_test: ImageSet, reference_ckpt: Path | None) -> None:
        """``real/reference.json``: each metric of real train vs real test (the floor or ceiling a generator
        can reach), the reference classifier's CAS on real test, and chance accuracy; computed once."""
        if self.folder.reference_path.is_file():
            return
        _log("real-data reference values (real train vs real test)", NORMAL)
        key = GenerationKey(self.recipe.seed, "real", 0)
        rows = self._evaluate(real_train, real_test, reference_ckpt, None, key)
        rows.append(_row("cas_accuracy_chance", "all", 1.0 / len(real_test.classes), len(real_test)))
        extra = {}
        if self.recipe.metrics.train_set_metrics:
            from imgsynth.metrics.memorisation import RATIO_THRESHOLD

            # Against the training set, the reference is the held-out real test set measured against the real
            # training set: the memorisation rate and authenticity of data that copies nothing.
            rows.extend(self._evaluate(real_test, real_test, reference_ckpt, None, key, real_train,
                                       metrics=list(TRAIN_SET_METRICS)))
            extra = {"train_set_metrics": {
                "candidate": "real/test", "train_set": "real/train", "metrics": list(TRAIN_SET_METRICS),
                "memorisation_rate": {"test": "d(x, NN1(train)) < τ · d(x, NN2(train)), or d(x, NN1) = 0",
                                      "threshold": RATIO_THRESHOLD, "source": "Yoon et al. 2023; Gu et al. 2023"},
                "knn_entropy": {"estimator": "Kozachenko–Leonenko", "k": 5, "units": "nats"}}}
        write_json_atomic(self.folder.reference_path, {"candidate": "real/train", "reference": "real/test",
                                                         **extra, "rows": rows}, indent=2)

    def _train_classifier(self, train_set: ImageSet, out: Path, seed: int, use_weights: bool = False) -> Path:
        from imgsynth.classifier import ClassifierConfig, train_classifier

        s = self.recipe.classifier
        overrides = {"lr": s.lr} if s.lr is not None else {}
        config = ClassifierConfig(arch=s.arch, epochs=s.epochs, batch_size=s.batch_size, seed=seed,
                                  use_weights=use_weights, **overrides)
        return train_classifier(train_set, out, config, progress=False)

    def _extractor_names(self, reference_ckpt: Path | None) -> list[str]:
        names = []
        for name in self.recipe.metrics.extractors:
            names.append(f"domain:{reference_ckpt}" if name == "domain" else name)
        if self.recipe.metrics.clip and f"clip:{self.recipe.metrics.clip}" not in names:
            names.append(f"clip:{self.recipe.metrics.clip}")
        return names

    def _evaluate(self, samples: ImageSet, real_test: ImageSet, reference_ckpt: Path | None,
                  folder: Path | None, key: GenerationKey, train_set: ImageSet | None = None,
                  metrics: list[str] | None = None) -> list[dict[str, Any]]:
        from imgsynth.metrics.evaluate import evaluate
        from imgsynth.metrics.features import create_extractor

        m = self.recipe.metrics
        rows: list[dict[str, Any]] = []
        # [metrics] train_set_metrics (opt-in) hands evaluate the generation's training set, which adds the
        # metrics that need one (memorisation rate, authenticity, k-NN entropies); otherwise nothing changes.
        train_set = train_set if m.train_set_metrics else None
        for name in self._extractor_names(reference_ckpt):
            short = name.split(":", 1)[0] if name.startswith("domain:") else name
            mode = (m.resize_mode or {}).get(name)  # [metrics.resize_mode], keyed as [metrics] extractors
            extractor = create_extractor(name, resize_mode=mode) if mode else name
            # resize: a text-to-image pipeline samples at its own resolution, and its samples are compared
            # with the real data at the real data's size; for samples of that size already it does nothing.
            for row in evaluate(samples, real_test, extractor, per_class=m.per_class, bootstrap=m.bootstrap,
                                seed=key.seed, resize=True, train_set=train_set, metrics=metrics):
                record = asdict(row)
                record["extractor"] = short
                rows.append(record)
        if metrics is not None:
            return rows
        if self.recipe.classifier.enabled and folder is None and reference_ckpt is not None:
            rows.extend(self._scored(reference_ckpt, real_test, None))  # the classifier trained on real data
        elif self.recipe.classifier.enabled and folder is not None:
            rows.extend(self._classification_score(samples, real_test, folder, key))
        return rows

    def _classification_score(self, samples: ImageSet, real_test: ImageSet, folder: Path,
                              key: GenerationKey) -> list[dict[str, Any]]:
        """Classification Accuracy Score: a classifier trained on the samples, scored on real test data."""

        self.stage_hook("classifier", key)
        ckpt = folder / "classifier"
        if not (ckpt / "classifier.json").is_file():
            # Generated samples carry no training weights: [classifier] use_weights applies where there are some.
            weighted = self.recipe.classifier.use_weights and samples.weights is not None
            ckpt = self._train_classifier(samples, ckpt, seed=key.seed, use_weights=weighted)
        return self._scored(ckpt, real_test, folder / "classifier_report")

    def _scored(self, ckpt: Path, real_test: ImageSet, report_dir: Path | None) -> list[dict[str, Any]]:
        from imgsynth.classifier import evaluate_classifier

        report = evaluate_classifier(ckpt, real_test, report_dir)
        rows = [_row("cas_accuracy", "all", report.accuracy, report.n),
                _row("cas_macro_f1", "all", report.macro_f1, report.n)]
        counts = real_test.counts
        rows.extend(_row("cas_accuracy", c, v, counts.get(c, 0)) for c, v in report.per_class_accuracy.items())
        return rows


def _row(metric: str, class_name: str, value: float, n: int, extractor: str = "") -> dict[str, Any]:
    return {"metric": metric, "class_name": class_name, "value": float(value), "ci_low": None,
            "ci_high": None, "n": int(n), "extractor": extractor}


def _minority_indices(train: ImageSet, minority: list[str], keep: int, seed: int) -> list[int]:
    import numpy as np

    rng = np.random.default_rng(seed)
    indices = []
    for label in train.classes:
        members = train.indices_of_class(label)
        if label in minority:
            members = sorted(rng.permutation(members)[:keep].tolist())
        indices.extend(members)
    return sorted(indices)


def run_base(recipe: Recipe, run_dir: str, seed: int) -> None:
    """Task: generation 0 of one replicate (runs in a worker process or a Ray task)."""
    with task_events(run_dir, task_name(seed)):
        Experiment(recipe, run_dir, progress=False).base(seed)


def run_chain(recipe: Recipe, run_dir: str, seed: int, mode: str, loop_mode: LoopMode | None = None) -> None:
    """Task: generations 1… of one (seed, mode) chain (runs in a worker process or a Ray task)."""
    with task_events(run_dir, task_name(seed, mode)):
        Experiment(recipe, run_dir, progress=False).chain(seed, mode, loop_mode)


def run_recipe(recipe_path: str | Path, run_dir: str | Path | None = None, overrides: list[str] | tuple = (),
               runs_root: str | Path = "runs", **options: Any) -> Path:
    """Load a recipe (with overrides), run it into ``run_dir`` (default ``runs/<name>``), return the folder.

    Writes no reports: build them from the folder with :func:`imgsynth.reports.build.build_reports`.
    """
    recipe = load_recipe(recipe_path, overrides)
    target = Path(run_dir) if run_dir else Path(runs_root) / recipe.name
    return Experiment(recipe, target, **options).run()


__all__ = ["Experiment", "GenerationKey", "loop_seed", "run_recipe", "recipe_from_dict"]
