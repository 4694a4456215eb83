"""Pretrained text-to-image pipelines (diffusers) → a labeled ImageSet, resumable shard by shard.

Any pipeline ``AutoPipelineForText2Image`` can load works: Stable Diffusion 1.x/2.x, SD-Turbo, SDXL,
PixArt, FLUX, … from a local ``save_pretrained`` folder or a Hub id (from the local cache when
``HF_HUB_OFFLINE=1``). Each class gets ``per_class`` captions from a prompt bank
(:mod:`imgsynth.pipelines.prompts`); every image has its own ``torch.Generator`` seeded from (base seed,
class, index) and handed to the pipeline as a list, so an image's noise does not depend on which batch,
shard or worker it lands in. Work is cut into fixed shards (:mod:`imgsynth.pipelines.work`) written by
``ImageSetWriter``; an interrupted run resumes at the first missing shard and produces the same bytes,
and a finished set made with the same settings is returned as it is.

On CUDA the pipeline runs in bf16 (fp16 where bf16 is unsupported) with PyTorch's scaled-dot-product
attention (the diffusers default on torch 2), channels-last UNets and, optionally, a compiled denoiser.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image

from imgsynth.generator_record import GeneratorRecord, generator_record
from imgsynth.imageset import ImageSet, ImageSetWriter, Sample
from imgsynth.pipelines.prompts import CaptionRewriter, PromptBank, resolve_bank
from imgsynth.pipelines.work import DEFAULT_SHARD_SIZE, WorkItem, balanced_work, batches, shards
from imgsynth.provenance import model_license
from imgsynth.safe_loading import UnsafeFileError, refusing_pickles

from imgsynth.pipelines.text2image.loading import (CAPTION_REWRITE_BATCH, DEFAULT_GUIDANCE, DEFAULT_STEPS, PLAN_FILE,
                                                  component_folder,
                                                  default_sampling, denoiser_name, load_text2image_pipeline,
                                                  lora_record, resolve_device, weights_hash)


@dataclass(frozen=True)
class SamplingOptions:
    """How every image is sampled; all of it is recorded in the manifest and in each image's row."""

    steps: int = DEFAULT_STEPS
    guidance_scale: float = DEFAULT_GUIDANCE
    negative_prompt: str = ""
    height: int | None = None
    width: int | None = None

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        if self.guidance_scale < 0:
            raise ValueError(f"guidance scale must be non-negative, got {self.guidance_scale}")
        for side in (self.height, self.width):
            if side is not None and side < 8:
                raise ValueError(f"image height/width must be at least 8 pixels, got {side}")

    @property
    def guided(self) -> bool:
        # diffusers applies classifier-free guidance (and so the negative prompt) only above 1.
        return self.guidance_scale > 1.0


class Text2ImageGenerator:
    """A loaded pipeline that renders ``WorkItem`` lists (prompts + seeds) into ``Sample`` lists.

    ``render`` is a pure function of the items and the options: the same items give the same pixels
    whichever batch size, shard or process renders them (up to float rounding across batch sizes).
    """

    def __init__(self, pipe: Any, model: str, *, device: str, lora: str | Path | Mapping[str, Any] | None = None,
                 compiled: bool = False) -> None:
        self.pipe = pipe
        self.model = model
        self.device = device
        # The LoRA already loaded into ``pipe``: its path, or the record ``lora_record`` made of it.
        self.lora = dict(lora) if isinstance(lora, Mapping) else (lora_record(lora) if lora else None)
        self.compiled = compiled
        self._provenance: dict[str, Any] | None = None
        self.denoiser = denoiser_name(pipe)
        self._call_parameters = set(inspect.signature(pipe.__call__).parameters)
        pipe.set_progress_bar_config(disable=True)  # one outer bar over images, not one per batch

    @classmethod
    def from_pretrained(cls, model: str | os.PathLike, *, device: str | None = None, dtype: Any = None,
                        lora: str | Path | None = None, compile: bool = False,
                        channels_last: bool | None = None) -> Text2ImageGenerator:
        """Load ``model`` (folder or Hub id), move it to ``device`` and apply the speed settings.

        ``channels_last`` defaults to on for CUDA UNets; ``compile`` wraps the denoiser in
        ``torch.compile`` (first batches are slow while it compiles).
        """
        import torch

        device = resolve_device(device)
        record = lora_record(lora) if lora else None  # a wrong LoRA path fails before the slow load
        pipe = load_text2image_pipeline(model, device=device, dtype=dtype)
        if record is not None:
            if not hasattr(pipe, "load_lora_weights"):
                raise ValueError(f"{type(pipe).__name__} cannot load LoRA weights (diffusers has no LoRA loader "
                                 "for it); generate without --lora")
            try:
                with refusing_pickles(record["path"], "LoRA weights"):
                    pipe.load_lora_weights(record["path"])
            except UnsafeFileError:
                raise
            except (ValueError, OSError, KeyError) as exc:
                raise ValueError(f"LoRA {str(lora)!r} does not fit model {str(model)!r}: {exc}") from exc
        pipe.to(device)
        name = denoiser_name(pipe)
        if channels_last if channels_last is not None else device.startswith("cuda"):
            # Convolutions prefer channels-last; transformer denoisers have none, so only UNets and the VAE.
            if name == "unet":
                pipe.unet.to(memory_format=torch.channels_last)
            if getattr(pipe, "vae", None) is not None:
                pipe.vae.to(memory_format=torch.channels_last)
        if device.startswith("cuda"):
            torch.backends.cuda.matmul.allow_tf32 = True  # for fp32 runs; bf16/fp16 ignore it
            torch.backends.cudnn.allow_tf32 = True
        if compile:
            setattr(pipe, name, torch.compile(getattr(pipe, name), dynamic=False))
        return cls(pipe, str(model), device=device, lora=record, compiled=compile)

    # ---- provenance
    def provenance(self) -> dict[str, Any]:
        """The manifest's record of the model: pipeline and scheduler class, path or id, weights hash, LoRA.

        Computed once per loaded pipeline (hashing multi-gigabyte weights takes seconds).
        """
        if self._provenance is None:
            self._provenance = self._describe()
        return dict(self._provenance)

    def _describe(self) -> dict[str, Any]:
        pipe = self.pipe
        folder = component_folder(pipe, self.denoiser)
        root = folder.parent if folder is not None else None
        model_path = Path(self.model).expanduser()
        record = GeneratorRecord(
            "text2image", type(pipe).__name__,
            str(model_path.resolve()) if model_path.exists() else (str(root) if root else None),
            weights_hash(folder) if folder is not None else None, None, settings={
                "model": self.model, "denoiser": self.denoiser, "scheduler": type(pipe.scheduler).__name__,
                "dtype": str(getattr(pipe, "dtype", "")).replace("torch.", ""), "lora": self.lora,
                "compiled": self.compiled}).to_dict()
        if not model_path.exists() and root is not None and root.parent.name == "snapshots":
            record["revision"] = root.name  # the Hub commit the cache resolved to
        record["license"] = model_license(model_path if model_path.exists() else self.model)
        return record

    # ---- rendering
    def render(self, items: Sequence[WorkItem], options: SamplingOptions, *, batch_size: int = 4,
               rewriter: CaptionRewriter | None = None, generation: int = 0,
               on_batch: Any = None) -> list[Sample]:
        """Render ``items`` in batches of ``batch_size``; one generator per image, seeded by its item."""
        import torch

        if rewriter is not None:
            items = rewrite_items(items, rewriter)
        tag = self.generator_tag()
        samples: list[Sample] = []
        for batch in batches(items, batch_size):
            prompts = [item.prompt or item.caption for item in batch]
            kwargs: dict[str, Any] = {
                "prompt": prompts, "num_inference_steps": options.steps,
                "guidance_scale": options.guidance_scale, "output_type": "np",
                "generator": [torch.Generator("cpu").manual_seed(item.seed) for item in batch],
            }
            negative = options.negative_prompt if options.guided else ""
            if negative:
                if "negative_prompt" not in self._call_parameters:
                    raise ValueError(f"{type(self.pipe).__name__} takes no negative prompt; "
                                     "generate without one (--negative-prompt '')")
                kwargs["negative_prompt"] = [negative] * len(batch)
            if options.height:
                kwargs["height"] = options.height
            if options.width:
                kwargs["width"] = options.width
            with torch.inference_mode():
                images = self.pipe(**kwargs).images
            for item, array in zip(batch, _as_uint8(images)):
                samples.append(Sample(
                    Image.fromarray(array), item.label, item.caption, item.seed, item.image_id,
                    {"prompt": item.prompt or item.caption,
                     "negative_prompt": negative, "guidance_scale": options.guidance_scale,
                     "steps": options.steps, "generator": tag, "generation": generation,
                     "caption_fields": item.extra.get("caption_fields", {})}))
            if on_batch is not None:
                on_batch(len(batch))
        return samples

    def generator_tag(self) -> str:
        """Short per-image name of what made the image: pipeline class, model, and LoRA when there is one."""
        tag = f"{type(self.pipe).__name__}:{self.model}"
        return f"{tag}+lora:{Path(self.lora['path']).name}" if self.lora else tag


def _as_uint8(images: Any) -> list[np.ndarray]:
    """Pipeline output (float arrays in [0, 1] or PIL images) as HxWx3 uint8 arrays, rounded like diffusers."""
    out: list[np.ndarray] = []
    for image in images:
        if isinstance(image, Image.Image):
            out.append(np.asarray(image.convert("RGB")))
            continue
        array = np.nan_to_num(np.asarray(image, dtype=np.float32), nan=0.0)
        out.append((np.clip(array, 0.0, 1.0) * 255.0).round().astype(np.uint8))
    return out


def rewrite_items(items: Sequence[WorkItem], rewriter: CaptionRewriter) -> list[WorkItem]:
    """Items with captions rewritten by a language model; the template caption is kept in the fields."""
    rewritten: list[WorkItem] = []
    for chunk in batches(items, CAPTION_REWRITE_BATCH):
        texts = rewriter([item.caption for item in chunk])
        for item, text in zip(chunk, texts):
            fields = {**item.extra.get("caption_fields", {}), "template_caption": item.caption,
                      "caption_model": str(rewriter.path)}
            suffix = item.prompt[len(item.caption):] if item.prompt.startswith(item.caption) else ""
            rewritten.append(dataclasses.replace(item, caption=text, prompt=text + suffix,
                                                 extra={**item.extra, "caption_fields": fields}))
    return rewritten


# --------------------------------------------------------------------------------------------- planning

def plan_text2image(bank: PromptBank, per_class: int, seed: int) -> list[WorkItem]:
    """The work manifest: ``per_class`` items per class, interleaved, each with its seed, caption and prompt."""
    items = []
    for item in balanced_work(bank.class_names, per_class, seed):
        caption = bank.caption(item.label, seed, item.index)
        items.append(dataclasses.replace(item, caption=caption.text, prompt=bank.prompt(caption.text),
                                         extra={"caption_fields": caption.fields}))
    return items


def plan_fingerprint(items: Sequence[WorkItem], settings: Mapping[str, Any]) -> str:
    """A hash of the work items and the sampling settings: what a half-written set must be resumed with."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for item in items:
        digest.update(f"{item.label}\t{item.index}\t{item.seed}\t{item.prompt}\n".encode())
    return digest.hexdigest()


def write_text2image_shards(generator: Text2ImageGenerator, writer: ImageSetWriter,
                            work: Sequence[Sequence[WorkItem]], options: SamplingOptions, *,
                            batch_size: int = 4, rewriter: CaptionRewriter | None = None, generation: int = 0,
                            shard_indices: Collection[int] | None = None, progress: bool = True) -> list[int]:
    """Render and write every shard of ``work`` not yet done (only ``shard_indices`` when given, so
    several workers can split one set); returns the indices written by this call."""
    from tqdm.auto import tqdm

    wanted = set(range(len(work))) if shard_indices is None else set(shard_indices)
    unknown = wanted - set(range(len(work)))
    if unknown:
        raise ValueError(f"shard indices {sorted(unknown)} are out of range (the work has {len(work)} shards)")
    todo = [i for i in sorted(wanted - writer.done_shards)]
    total = sum(len(work[i]) for i in wanted)
    done = total - sum(len(work[i]) for i in todo)
    written: list[int] = []
    with tqdm(total=total, initial=done, unit="img", desc="generate", disable=not progress) as bar:
        for index in todo:
            samples = generator.render(work[index], options, batch_size=batch_size, rewriter=rewriter,
                                       generation=generation, on_batch=bar.update)
            writer.write_shard(index, samples)
            written.append(index)
    return written


def generate_text2image(model: str | os.PathLike, out: str | os.PathLike, *,
                        classes: Sequence[str] | None = None, prompts: str | Path | PromptBank | None = None,
                        per_class: int = 10, seed: int = 0, steps: int | None = None,
                        guidance_scale: float | None = None, negative_prompt: str | None = None,
                        batch_size: int = 4, shard_size: int = DEFAULT_SHARD_SIZE, height: int | None = None,
                        width: int | None = None, lora: str | Path | None = None, compile: bool = False,
                        dtype: Any = None, device: str | None = None, caption_model: str | Path | None = None,
                        generation: int = 0, parents: Iterable[Any] = (), license: str | None = None,
                        progress: bool = True, generator: Text2ImageGenerator | None = None) -> ImageSet:
    """Generate ``per_class`` images of every class with a text-to-image pipeline into an ImageSet at ``out``.

    Classes come from ``classes`` (names; shipped bank entries where they exist, generic captions
    otherwise) and/or ``prompts`` (a bank's path or shipped name, e.g. ``indoor-scenes``). ``steps`` and
    ``guidance_scale`` default by model (turbo-like: 4 and 0; others 30 and 7.5); ``negative_prompt``
    defaults to the bank's. An interrupted call resumes when called again with the same arguments; a
    call with different arguments on a half-written set is refused. ``generator`` reuses a loaded
    pipeline (e.g. across benchmark runs).
    """
    # One description of the set for this function and every backend: the job object they all drive.
    job = Text2ImageShardGenerator(
        str(model), classes=classes, prompts=prompts, per_class=per_class, seed=seed, steps=steps,
        guidance_scale=guidance_scale, negative_prompt=negative_prompt, batch_size=batch_size,
        shard_size=shard_size, height=height, width=width, lora=None if lora is None else str(lora),
        compile=compile, dtype=dtype, device=device, caption_model=caption_model, generation=generation,
        parents=list(parents), license=license)
    job.pipeline = generator  # None: loaded by spec()
    out = Path(out).absolute()
    spec = job.spec(out)
    finished = job.finished_set(out, spec)
    if finished is not None:
        return finished
    writer = spec.writer(out)
    job.prepare_writer(writer)
    job.load()
    write_text2image_shards(job.pipeline, writer, shards(job.work(), shard_size), job.options,
                            batch_size=batch_size, rewriter=job.rewriter, generation=generation, progress=progress)
    return writer.finalize()


# What decides the pixels and labels; batch size, compilation and shard size do not (beyond rounding).
_SAME_SET_GENERATOR_KEYS = ("pipeline", "weights_sha256", "scheduler", "dtype", "steps", "guidance_scale",
                            "negative_prompt", "seed", "height", "width", "prompt_bank", "caption_model")
_SAME_SET_CONFIG_KEYS = ("per_class", "classes", "generation")


def finished_set(out: Path, generator: Mapping[str, Any], config: Mapping[str, Any]) -> ImageSet | None:
    """The finished set at ``out`` when the same settings made it (nothing to do); an error when others did."""
    if not (out / "imageset.json").is_file():
        return None
    existing = ImageSet.open(out)
    previous_generator = generator_record(existing.manifest.get("generator"))  # sets of any version
    previous_config = existing.manifest.get("config") or {}
    same = all(previous_generator.get(k) == generator.get(k) for k in _SAME_SET_GENERATOR_KEYS) and \
        (previous_generator.get("lora") or {}).get("sha256") == (generator.get("lora") or {}).get("sha256") and \
        all(previous_config.get(k) == config.get(k) for k in _SAME_SET_CONFIG_KEYS)
    if not same:
        raise ValueError(f"{out}: already holds an ImageSet made with other settings (model, LoRA, sampling, "
                         "prompts or classes differ); remove it or choose another folder")
    return existing


def check_plan(writer: ImageSetWriter, fingerprint: str) -> None:
    """Refuse to resume a half-written set that was started with other settings (it would mix them).

    The fingerprint lives next to the shard files, which ``finalize`` removes with them.
    """
    plan = writer.partial / "shards" / PLAN_FILE
    if plan.is_file():
        previous = json.loads(plan.read_text(encoding="utf-8")).get("fingerprint")
        if previous != fingerprint and writer.done_shards:
            raise ValueError(f"{writer.partial}: a half-written set from a generation with other settings "
                             "(model, seed, classes, prompts, sampling or shard size) is there; resume it "
                             "with the same settings, or delete that folder to start again")
    plan.write_text(json.dumps({"fingerprint": fingerprint}), encoding="utf-8")


def lora_parents(lora: Mapping[str, Any] | None, out: Path) -> list[dict[str, Any]]:
    """The set a LoRA was trained on is a parent of what it generates (lineage walks back through it)."""
    trained = (lora or {}).get("trained") or {}
    source = trained.get("train_set")
    if not source or not source.get("id"):
        return []
    entry = {"id": source["id"], "kind": source.get("kind", "generated"), "role": "lora training set"}
    if source.get("path"):
        entry["path"] = os.path.relpath(source["path"], out.absolute())
    return [entry]


# The ``text2image`` kind of the generator registry (``imgsynth.pipelines.base.GENERATORS``).

@dataclass
class Text2ImageOptions:
    """``model``: a local diffusers pipeline folder or a Hub id (generation 0 samples it as it is; later
    generations fine-tune a LoRA on the previous samples: ``lora_steps``, ``lora_rank``); ``classes`` and
    ``prompts`` choose the prompt bank; ``lora`` samples with a LoRA from ``imgsynth finetune``; the rest
    are ``generate_text2image``'s sampling settings."""

    model: str = ""
    classes: list[str] = dataclasses.field(default_factory=list)
    prompts: str = ""
    guidance_scale: float | None = None
    sample_steps: int | None = None
    negative_prompt: str | None = None
    sample_batch_size: int = 4
    shard_size: int = DEFAULT_SHARD_SIZE
    height: int | None = None
    width: int | None = None
    dtype: str | None = None
    compile: bool = False
    device: str | None = None
    caption_model: str | None = None
    license: str | None = None
    lora: str | None = None
    lora_steps: int = 200
    lora_rank: int = 8

    def validate(self) -> Text2ImageOptions:
        if not self.model:
            raise ValueError("model: a text2image generator needs a local pipeline path or hub id")
        for name in ("sample_batch_size", "shard_size", "lora_steps", "lora_rank"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a whole number ≥ 1, got {value!r}")
        return self


class Text2ImageKind:
    """The ``text2image`` kind: a pretrained pipeline, fine-tuned with LoRA on each generation's data."""

    kind = "text2image"
    Options = Text2ImageOptions
    # The flat [generator] fields of older recipes, and the option each one is (experiments.config).
    recipe_fields = {name: name for name in ("model", "classes", "prompts", "lora_steps", "lora_rank",
                                             "guidance_scale", "sample_steps", "sample_batch_size", "device")}

    def __init__(self, options: Text2ImageOptions | None = None) -> None:
        self.options = (options or Text2ImageOptions()).validate()

    @staticmethod
    def owns(model: str | os.PathLike) -> bool:
        """A diffusers pipeline folder (``model_index.json``) or anything that is not a folder (a Hub id); the
        kinds with their own model files are asked first."""
        path = Path(model)
        return not path.is_dir() or (path / "model_index.json").is_file()

    @staticmethod
    def options_for_model(model: str | os.PathLike) -> dict[str, Any]:
        """Sampling a pipeline folder or Hub id means sampling that model."""
        return {"model": str(model)}

    @property
    def pretrained(self) -> str:
        """What generation 0 samples, untrained: the pretrained pipeline."""
        return self.options.model

    def fit(self, train_set: ImageSet, out: Path, seed: int, progress: bool = True) -> Path:
        """A LoRA of the pretrained pipeline fine-tuned on ``train_set``, saved at ``out``."""
        from imgsynth.pipelines.finetune import LoraConfig, finetune_lora

        o = self.options
        return finetune_lora(o.model, train_set, out, LoraConfig(steps=o.lora_steps, rank=o.lora_rank, seed=seed),
                             device=o.device, progress=progress)

    def _settings(self, model_dir: str | os.PathLike, per_class: int, seed: int, generation: int | None,
                  classes: Sequence[str] | None) -> dict[str, Any]:
        o = self.options
        lora = o.lora or (None if str(model_dir) == str(o.model) else str(model_dir))
        return dict(classes=list(classes or o.classes) or None, prompts=o.prompts or None, per_class=per_class,
                    seed=seed, steps=o.sample_steps, guidance_scale=o.guidance_scale,
                    negative_prompt=o.negative_prompt, batch_size=o.sample_batch_size, shard_size=o.shard_size,
                    height=o.height, width=o.width, lora=lora, compile=o.compile, dtype=o.dtype, device=o.device,
                    caption_model=o.caption_model, generation=generation or 0, license=o.license)

    def sample(self, model_dir: Path, out: Path, per_class: int, seed: int, generation: int | None = None,
               progress: bool = True, classes: Sequence[str] | None = None) -> ImageSet:
        """``per_class`` images per class from the pipeline (``model_dir`` is it, or a LoRA fine-tuned from it)."""
        return generate_text2image(self.options.model, out, progress=progress,
                                   **self._settings(model_dir, per_class, seed, generation, classes))

    def shard_generator(self, model_dir: Path, per_class: int, seed: int, generation: int | None = None,
                        classes: Sequence[str] | None = None) -> Text2ImageShardGenerator:
        """The same job as ``sample``, for a backend (Ray actors, accelerate ranks)."""
        return Text2ImageShardGenerator(self.options.model,
                                        **self._settings(model_dir, per_class, seed, generation, classes))


@dataclass
class Text2ImageShardGenerator:
    """Rendering with a text-to-image pipeline shard by shard for a backend; arguments as
    ``generate_text2image``'s. The set it describes is the one ``generate_text2image`` writes (same writer
    job and plan file), so a set started by one can be resumed by the other."""

    model: str
    classes: Sequence[str] | None = None
    prompts: str | None = None
    per_class: int = 10
    seed: int = 0
    steps: int | None = None
    guidance_scale: float | None = None
    negative_prompt: str | None = None
    batch_size: int = 4
    shard_size: int = DEFAULT_SHARD_SIZE
    height: int | None = None
    width: int | None = None
    lora: str | None = None
    compile: bool = False
    dtype: str | None = None
    device: str | None = None
    caption_model: str | None = None
    generation: int = 0
    parents: Sequence[Mapping[str, Any]] = ()
    license: str | None = None

    def __post_init__(self) -> None:
        from imgsynth.pipelines.device import uses_gpu

        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        self.bank = resolve_bank(self.classes, self.prompts)
        default_steps, default_guidance = default_sampling(self.model)
        self.options = SamplingOptions(
            steps=default_steps if self.steps is None else int(self.steps),
            guidance_scale=default_guidance if self.guidance_scale is None else float(self.guidance_scale),
            negative_prompt=self.bank.negative_prompt if self.negative_prompt is None else self.negative_prompt.strip(),
            height=self.height, width=self.width)
        self.num_gpus = 1.0 if uses_gpu(self.device) else 0.0
        self.pipeline: Text2ImageGenerator | None = None
        self.rewriter: CaptionRewriter | None = None
        self._spec: tuple[Path, Any] | None = None
        self._fingerprint: str | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "pipeline": None, "rewriter": None}

    def _load_pipeline(self, device: str | None, dtype: Any = None) -> Text2ImageGenerator:
        return Text2ImageGenerator.from_pretrained(self.model, device=device, dtype=dtype or self.dtype,
                                                   lora=self.lora, compile=self.compile)

    def _load_for_provenance(self) -> Text2ImageGenerator:
        """The pipeline as workers will load it, or, on a driver without their GPU, on the CPU in their dtype."""
        import torch

        if not self.num_gpus or torch.cuda.is_available():
            self.pipeline = self._load_pipeline(self.device)  # the local backend reuses it
            return self.pipeline
        return self._load_pipeline("cpu", self.dtype or "bf16")  # a CPU-only head node of a GPU cluster

    def spec(self, out: Path) -> Any:
        """The set's description; its provenance (weights hash, dtype, scheduler) needs the pipeline loaded."""
        from imgsynth.pipelines.sharding import SetSpec

        out = Path(out).absolute()
        if self._spec is not None and self._spec[0] == out:
            return self._spec[1]
        loaded = self.pipeline or self._load_for_provenance()
        record = loaded.provenance()
        if self.num_gpus and loaded.device == "cpu":
            record["compiled"] = self.compile
        parents = list(self.parents) + lora_parents(loaded.lora, out)
        sampling = {**dataclasses.asdict(self.options), "seed": self.seed,
                    "negative_prompt": self.options.negative_prompt if self.options.guided else ""}
        spec = SetSpec(
            self.bank.class_names, kind="generated", parents=parents,
            generator={**record, **sampling, "prompt_bank": self.bank.source or self.bank.name,
                       "caption_model": str(self.caption_model) if self.caption_model else None},
            config={"per_class": self.per_class, "shard_size": self.shard_size, "batch_size": self.batch_size,
                    "generation": self.generation, "classes": self.bank.class_names},
            license=record["license"] if self.license is None else
            model_license(record["model_path"] or self.model, self.license))
        self._fingerprint = plan_fingerprint(self.work(), {
            "weights": record["weights_sha256"], "lora": (record["lora"] or {}).get("sha256"),
            "dtype": record["dtype"], "sampling": sampling, "caption_model": str(self.caption_model or ""),
            "shard_size": self.shard_size, "generation": self.generation})
        self._spec = (out, spec)
        return spec

    def prepare_writer(self, writer: ImageSetWriter) -> None:
        self.spec(writer.root)
        check_plan(writer, self._fingerprint)

    def finished_set(self, out: Path, spec: Any) -> ImageSet | None:
        """``generate_text2image``'s rule: batch size, shard size and compilation do not make another set."""
        return finished_set(Path(out), spec.generator, spec.config)

    def work(self) -> list[WorkItem]:
        return plan_text2image(self.bank, self.per_class, self.seed)

    def load(self) -> None:
        if self.pipeline is None:
            self.pipeline = self._load_pipeline(self.device)
        if self.caption_model and self.rewriter is None:
            self.rewriter = CaptionRewriter(self.caption_model, device="cpu")

    def generate(self, items: Sequence[WorkItem]) -> list[Sample]:
        return self.pipeline.render(items, self.options, batch_size=self.batch_size, rewriter=self.rewriter,
                                    generation=self.generation)
