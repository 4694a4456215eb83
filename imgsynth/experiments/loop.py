"""The recursive-generation loop: each generation's generator learns from the previous generation's output.

Run folder (see ARCHITECTURE.md)::

    runs/<name>/
      config.toml                resolved recipe
      real/train real/test       ImageSets (real/train-minority when minority classes are set)
      real/classifier/           classifier on real train: the 'domain' feature extractor and the CAS reference
      gen_0/{model,samples,metrics.json}      generation 0 trains on real data; shared by every mode
      <mode>/gen_<k>/{train_set,model,samples,curated,classifier,metrics.json}
      <mode>/gen_0/curated       generation 0's samples curated for a curating mode (e.g. replace+curate)
      metrics.csv dashboard.png grids.png class_heatmap.png report.html

Every stage reads and writes ImageSets or model folders on disk, and ``metrics.json`` is written last
(atomically), so a generation with a ``metrics.json`` is finished and never recomputed; a killed run
continues where it stopped. Generation 0 is the same for every mode (same data, same seeds), so it is
computed once.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from imgsynth.experiments.config import (CURATED_SUFFIX, Recipe, RecipeError, base_mode, dump_recipe, load_recipe,
                                         recipe_from_dict)
from imgsynth.imageset import ImageSet, ImageSetError, concatenate, stratified_split_indices
from imgsynth.locking import folder_lock
from imgsynth.sources import import_source

METRICS_FILE = "metrics.json"


@dataclass(frozen=True)
class GenerationKey:
    mode: str  # "base" for the shared generation 0
    generation: int


def _log(message: str) -> None:
    print(f"[imgsynth] {message}", flush=True)


def _atomic_json(path: Path, payload: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2), encoding="utf-8")
    os.replace(tmp, path)


def _open_if_complete(path: Path) -> ImageSet | None:
    try:
        return ImageSet.open(path)
    except ImageSetError:
        return None


class Experiment:
    """One run folder for one recipe; ``run()`` does (or finishes) every generation of every mode."""

    def __init__(self, recipe: Recipe, run_dir: str | Path,
                 stage_hook: Callable[[str, GenerationKey], None] | None = None) -> None:
        self.recipe = recipe
        self.run_dir = Path(run_dir)
        # Called before every stage; tests use it to simulate a crash at an exact point.
        self.stage_hook = stage_hook or (lambda stage, key: None)

    # ------------------------------------------------------------------ entry points
    @classmethod
    def resume(cls, run_dir: str | Path, **kwargs: Any) -> Experiment:
        """Reopen a run folder with the recipe saved in it."""
        return cls(load_recipe(Path(run_dir) / "config.toml"), run_dir, **kwargs)

    def run(self) -> Path:
        """Run every generation of every loop mode, then write the reports; returns the run folder.

        The run folder is locked for the whole run: a second ``imgsynth run`` into it is refused at once.
        """
        with folder_lock(self.run_dir):
            return self._run()

    def _run(self) -> Path:
        started = time.perf_counter()
        self._save_config()
        real_train, real_test, full_train = self._real_data()
        self._check_fresh_budget(full_train)
        reference_ckpt = self._reference_classifier(full_train)
        samples: dict[str, list[ImageSet]] = {}
        base = self._generation(GenerationKey("base", 0), real_train, real_test, reference_ckpt)
        for mode in self.recipe.loop.modes:
            samples[mode] = [self._curated_start(base, mode, reference_ckpt)]
        for k in range(1, self.recipe.loop.generations):
            for mode in self.recipe.loop.modes:
                key = GenerationKey(mode, k)
                train_set = self._training_set(key, real_train, full_train, samples[mode])
                samples[mode].append(self._generation(key, train_set, real_test, reference_ckpt))
        from imgsynth.reports.build import build_reports

        build_reports(self.run_dir)
        _log(f"finished in {time.perf_counter() - started:.1f}s; dashboard: {self.run_dir / 'dashboard.png'}")
        return self.run_dir

    # ------------------------------------------------------------------ folders
    def generation_dir(self, key: GenerationKey) -> Path:
        if key.generation == 0:
            return self.run_dir / "gen_0"
        return self.run_dir / key.mode / f"gen_{key.generation}"

    def _save_config(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / "config.toml"
        text = dump_recipe(self.recipe)
        if path.exists() and path.read_text(encoding="utf-8") != text:
            raise RecipeError(f"{path}: this run folder was started with another recipe; "
                              "use a new run folder (or delete this one) to change settings")
        if not path.exists():
            tmp = path.with_name("config.toml.tmp")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)

    # ------------------------------------------------------------------ real data
    def _real_data(self) -> tuple[ImageSet, ImageSet, ImageSet]:
        """(training set of generation 0, held-out test set, full real train split)."""
        data = self.recipe.data
        real = self.run_dir / "real"
        train, test = _open_if_complete(real / "train"), _open_if_complete(real / "test")
        if train is None or test is None:
            _log(f"importing real data {data.source!r} at {data.size}px")
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

    def _check_fresh_budget(self, full_train: ImageSet) -> None:
        if "fresh" not in map(base_mode, self.recipe.loop.modes):
            return
        needed = self._synthetic_size(full_train) * (self.recipe.loop.generations - 1)
        if needed > len(full_train):
            raise RecipeError(f"[loop] mode 'fresh' needs {needed} new real training images "
                              f"(per_class × classes × (generations − 1)) but {full_train.root} has "
                              f"{len(full_train)}; lower per_class or generations, or drop 'fresh'")

    def _synthetic_size(self, train: ImageSet) -> int:
        return self.recipe.generator.per_class * len(train.classes)

    # ------------------------------------------------------------------ training sets
    def _training_set(self, key: GenerationKey, real_train: ImageSet, full_train: ImageSet,
                      history: list[ImageSet]) -> ImageSet:
        """Training data of generation k under the key's loop mode (written to disk, except for replace)."""
        mode, k = base_mode(key.mode), key.generation
        previous = history[k - 1]
        if mode == "replace":
            return previous
        out = self.generation_dir(key) / "train_set"
        existing = _open_if_complete(out)
        if existing is not None:
            return existing
        self.stage_hook("train_set", key)
        parts = self.generation_dir(key) / "train_parts"
        shutil.rmtree(parts, ignore_errors=True)
        if mode == "accumulate":
            result = concatenate([real_train, *history[:k]], out, config={"loop": "accumulate", "generation": k})
        elif mode == "mix":
            n = len(previous)
            n_real = int(round(self.recipe.loop.mix_real_fraction * n))
            pieces = []
            if n_real:
                pieces.append(_stratified_sample(real_train, n_real, self.recipe.seed + k, parts / "real"))
            if n - n_real:
                pieces.append(_stratified_sample(previous, n - n_real, self.recipe.seed + k, parts / "synthetic"))
            result = concatenate(pieces, out, config={"loop": "mix", "generation": k,
                                                      "real_fraction": self.recipe.loop.mix_real_fraction})
        elif mode == "fresh":
            n = self._synthetic_size(full_train)
            chunk = _fresh_chunk(full_train, n, k, self.recipe.seed)
            result = full_train.subset(chunk, out, config={"loop": "fresh", "generation": k})
        else:  # validated earlier; kept for a clear message if the list grows
            raise RecipeError(f"unknown loop mode {mode!r}")
        shutil.rmtree(parts, ignore_errors=True)
        return result

    # ------------------------------------------------------------------ one generation
    def _generation(self, key: GenerationKey, train_set: ImageSet, real_test: ImageSet,
                    reference_ckpt: Path | None) -> ImageSet:
        folder = self.generation_dir(key)
        label = f"{key.mode} gen {key.generation}" if key.generation else "gen 0 (real data, all modes)"
        samples_dir = folder / "samples"
        if (folder / METRICS_FILE).is_file():
            _log(f"{label}: done, skipped")
            return self._training_output(folder, samples_dir)
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        self.stage_hook("train", key)
        model_dir = self._train_generator(train_set, folder / "model", key)
        self.stage_hook("sample", key)
        samples = _open_if_complete(samples_dir) or self._sample(model_dir, samples_dir, key)
        output = self._curate(samples, folder, key, reference_ckpt)
        self.stage_hook("evaluate", key)
        rows = self._evaluate(output, real_test, reference_ckpt, folder, key)
        rows.append(_row("train_size", "all", len(train_set), len(train_set)))
        rows.append(_row("sample_count", "all", len(output), len(output)))
        payload = {"mode": key.mode, "generation": key.generation, "train_set": {
            "id": train_set.id, "path": os.path.relpath(train_set.root, self.run_dir), "size": len(train_set)},
            "samples": {"id": output.id, "path": os.path.relpath(output.root, self.run_dir)},
            "seconds": round(time.perf_counter() - t0, 2), "rows": rows}
        _atomic_json(folder / METRICS_FILE, payload)
        _log(f"{label}: done in {payload['seconds']:.1f}s")
        return output

    def _training_output(self, folder: Path, samples_dir: Path) -> ImageSet:
        curated = _open_if_complete(folder / "curated")
        return curated if curated is not None else ImageSet.open(samples_dir)

    def _train_generator(self, train_set: ImageSet, out: Path, key: GenerationKey) -> Path:
        from imgsynth.pipelines import conditional

        g = self.recipe.generator
        if g.kind != "conditional":
            return self._finetune_text2image(train_set, out, key)
        overrides = {name: value for name, value in (("steps", g.train_steps), ("batch_size", g.batch_size),
                                                     ("lr", g.lr), ("device", g.device)) if value is not None}
        config = conditional.preset(g.preset, seed=self.recipe.seed + key.generation, **overrides)
        _log(f"{key.mode} gen {key.generation}: training {g.preset} on {len(train_set)} images")
        return conditional.train(train_set, out, config, progress=True)

    def _finetune_text2image(self, train_set: ImageSet, out: Path, key: GenerationKey) -> Path:
        from imgsynth.pipelines import finetune

        g = self.recipe.generator
        if key.generation == 0:
            return Path(g.model)  # generation 0 samples the pretrained pipeline itself
        return finetune.finetune_lora(g.model, train_set, out, finetune.LoraConfig(
            steps=g.lora_steps, rank=g.lora_rank, seed=self.recipe.seed + key.generation))

    def _sample(self, model_dir: Path, out: Path, key: GenerationKey) -> ImageSet:
        g = self.recipe.generator
        _log(f"{key.mode} gen {key.generation}: sampling {g.per_class} per class")
        if g.kind == "conditional":
            from imgsynth.pipelines import conditional

            return conditional.sample(model_dir, out, g.per_class, guidance_scale=g.guidance_scale,
                                      steps=g.sample_steps, seed=self.recipe.seed, batch_size=g.sample_batch_size,
                                      device=g.device, noise_temperature=g.noise_temperature,
                                      generation=key.generation)
        from imgsynth.pipelines import text2image

        lora = None if key.generation == 0 else model_dir
        return text2image.generate_text2image(
            g.model, out, classes=g.classes or None, prompts=g.prompts or None, per_class=g.per_class,
            guidance_scale=g.guidance_scale, steps=g.sample_steps, seed=self.recipe.seed,
            batch_size=g.sample_batch_size, lora=lora, generation=key.generation, device=g.device)

    def _curates(self, mode: str) -> bool:
        """Whether a loop mode curates its samples: a ``<mode>+curate`` mode, or [curate] enabled for it."""
        c = self.recipe.curate
        return mode.endswith(CURATED_SUFFIX) or (c.enabled and (not c.modes or mode in c.modes))

    def _curate(self, samples: ImageSet, folder: Path, key: GenerationKey, reference_ckpt: Path | None) -> ImageSet:
        if key.generation == 0:
            if not all(map(self._curates, self.recipe.loop.modes)):
                return samples  # generation 0 is shared; curate it in place only when every mode curates
        elif not self._curates(key.mode):
            return samples
        return self._apply_curation(samples, folder / "curated", key, reference_ckpt)

    def _curated_start(self, base: ImageSet, mode: str, reference_ckpt: Path | None) -> ImageSet:
        """Generation 0's output as ``mode`` feeds it on: curated into ``<mode>/gen_0/curated`` when the
        shared generation 0 was left uncurated (its metrics stay those of the shared, uncurated samples)."""
        if not self._curates(mode) or all(map(self._curates, self.recipe.loop.modes)):
            return base
        return self._apply_curation(base, self.run_dir / mode / "gen_0" / "curated", GenerationKey(mode, 0),
                                    reference_ckpt)

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
                               rebalance=c.rebalance, seed=self.recipe.seed, embedding=embedding)

    # ------------------------------------------------------------------ evaluation
    def _reference_classifier(self, full_train: ImageSet) -> Path | None:
        needs_domain = any(e.split(":", 1)[0] == "domain" for e in self.recipe.metrics.extractors)
        curate = self.recipe.curate
        if not (needs_domain or self.recipe.classifier.enabled or curate.min_confidence or curate.embedding == "domain"):
            return None
        out = self.run_dir / "real" / "classifier"
        if (out / "classifier.json").is_file():
            return out
        _log("training the reference classifier on real data (the 'domain' feature extractor)")
        return self._train_classifier(full_train, out, seed=self.recipe.seed)

    def _train_classifier(self, train_set: ImageSet, out: Path, seed: int) -> Path:
        from imgsynth.classifier import ClassifierConfig, train_classifier

        s = self.recipe.classifier
        overrides = {"lr": s.lr} if s.lr is not None else {}
        config = ClassifierConfig(arch=s.arch, epochs=s.epochs, batch_size=s.batch_size, seed=seed, **overrides)
        return train_classifier(train_set, out, config, progress=False)

    def _extractor_names(self, reference_ckpt: Path | None) -> list[str]:
        names = []
        for name in self.recipe.metrics.extractors:
            names.append(f"domain:{reference_ckpt}" if name == "domain" else name)
        if self.recipe.metrics.clip and f"clip:{self.recipe.metrics.clip}" not in names:
            names.append(f"clip:{self.recipe.metrics.clip}")
        return names

    def _evaluate(self, samples: ImageSet, real_test: ImageSet, reference_ckpt: Path | None,
                  folder: Path, key: GenerationKey) -> list[dict[str, Any]]:
        from imgsynth.metrics.evaluate import evaluate

        m = self.recipe.metrics
        rows: list[dict[str, Any]] = []
        for name in self._extractor_names(reference_ckpt):
            short = name.split(":", 1)[0] if name.startswith("domain:") else name
            for row in evaluate(samples, real_test, name, per_class=m.per_class, bootstrap=m.bootstrap,
                                seed=self.recipe.seed):
                record = asdict(row)
                record["extractor"] = short
                rows.append(record)
        if self.recipe.classifier.enabled:
            rows.extend(self._classification_score(samples, real_test, folder, key))
        return rows

    def _classification_score(self, samples: ImageSet, real_test: ImageSet, folder: Path,
                              key: GenerationKey) -> list[dict[str, Any]]:
        """Classification Accuracy Score: a classifier trained on the samples, scored on real test data."""
        from imgsynth.classifier import evaluate_classifier

        self.stage_hook("classifier", key)
        ckpt = folder / "classifier"
        if not (ckpt / "classifier.json").is_file():
            ckpt = self._train_classifier(samples, ckpt, seed=self.recipe.seed)
        report = evaluate_classifier(ckpt, real_test, folder / "classifier_report")
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


def _stratified_sample(source: ImageSet, n: int, seed: int, out: Path) -> ImageSet:
    """``n`` images of ``source`` with class proportions kept, seeded."""
    if n >= len(source):
        return source
    _, chosen = stratified_split_indices(source.labels, n / len(source), seed)
    return source.subset(chosen, out)


def _fresh_chunk(full_train: ImageSet, n: int, k: int, seed: int) -> list[int]:
    """The k-th of disjoint stratified chunks of ``n`` real images (chunk 0 is never used: gen 0 is shared)."""
    import numpy as np

    order = np.random.default_rng(seed).permutation(len(full_train))
    labels = np.asarray(full_train.labels)[order]
    # Interleave classes so every chunk is stratified: sort by (rank within class, class).
    rank = np.zeros(len(order), dtype=int)
    for label in np.unique(labels):
        where = labels == label
        rank[where] = np.arange(where.sum())
    interleaved = order[np.lexsort((labels, rank))]
    start = (k - 1) * n
    return sorted(interleaved[start:start + n].tolist())


def run_recipe(recipe_path: str | Path, run_dir: str | Path | None = None, overrides: list[str] | tuple = (),
               runs_root: str | Path = "runs") -> Path:
    """Load a recipe (with overrides), run it into ``run_dir`` (default ``runs/<name>``), return the folder."""
    recipe = load_recipe(recipe_path, overrides)
    target = Path(run_dir) if run_dir else Path(runs_root) / recipe.name
    return Experiment(recipe, target).run()


__all__ = ["Experiment", "GenerationKey", "run_recipe", "recipe_from_dict"]
