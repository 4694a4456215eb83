"""The imgsynth generators as :class:`~imgsynth.distributed.protocol.ShardGenerator`\\ s.

Each adapter holds only settings until ``load()``, so it pickles cheaply to Ray actors; ``load()`` builds
the model with the pipeline module's own loader, and ``generate`` renders a shard with the pipeline
module's own code. The set each adapter describes (``spec``) is the one the module's local entry point
(``conditional.sample``, ``text2image.generate_text2image``) writes, with the same writer job and plan
file, so a set started by one can be resumed by the other and every backend writes the same bytes.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from imgsynth.distributed.protocol import SetSpec
from imgsynth.imageset import ImageSetWriter, Sample
from imgsynth.pipelines.work import DEFAULT_SHARD_SIZE, WorkItem, balanced_work


class _CollectingWriter:
    """Stands in for an ImageSetWriter to take a pipeline's samples instead of writing them."""

    def __init__(self) -> None:
        self.samples: list[Sample] = []
        self.done_shards: set[int] = set()

    def write_shard(self, index: int, samples: Sequence[Sample]) -> list[Any]:
        self.samples.extend(samples)
        return []


def _uses_gpu(device: str | None) -> bool:
    import torch

    if device in (None, "", "auto"):
        return torch.cuda.is_available()
    return str(device).startswith("cuda")


# --------------------------------------------------------------------------------------------- conditional

@dataclasses.dataclass
class ConditionalShardGenerator:
    """Sampling from a model dir written by ``conditional.train``; arguments as ``conditional.sample``'s.

    ``spec`` opens a ``conditional.SamplingJob`` on the driver (the model is small; on a driver without
    the workers' GPU it loads on the CPU), so the writer job, plan file and generator record are exactly
    ``conditional.sample``'s.
    """

    model_dir: str
    per_class: int
    guidance_scale: float | None = None
    steps: int | None = None
    seed: int = 0
    batch_size: int = 64
    device: str | None = None
    noise_temperature: float = 1.0
    classes: Sequence[str] | None = None
    generation: int | None = None
    shard_size: int = DEFAULT_SHARD_SIZE
    sampler: str | None = None

    def __post_init__(self) -> None:
        self.model_dir = str(Path(self.model_dir).absolute())
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        self.plan: Any = None
        self.model: Any = None

    @property
    def num_gpus(self) -> float:
        return 1.0 if _uses_gpu(self.device) else 0.0

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "model": None}  # workers load their own copy

    def spec(self, out: Path) -> SetSpec:
        import torch

        from imgsynth.pipelines import conditional

        here = self.device if not _uses_gpu(self.device) or torch.cuda.is_available() else "cpu"
        job = conditional.SamplingJob(
            self.model_dir, out, self.per_class, guidance_scale=self.guidance_scale, steps=self.steps,
            seed=self.seed, device=here, noise_temperature=self.noise_temperature, classes=self.classes,
            generation=self.generation, shard_size=self.shard_size, sampler=self.sampler)
        self.plan = job.plan
        if here == self.device:
            self.model = job.model  # the local backend samples with it
        if job.finished is not None:
            return SetSpec.of_manifest(job.finished.manifest)
        return SetSpec(**job.writer_arguments)

    def work(self) -> list[WorkItem]:
        if self.plan is None:
            raise RuntimeError("ConditionalShardGenerator.work() needs spec(out) first (it reads the model's plan)")
        return balanced_work(self.plan.classes, self.plan.per_class, self.plan.seed)

    def load(self) -> None:
        from imgsynth.pipelines import conditional

        if self.model is None:
            self.model = conditional.load_model(self.model_dir, self.device)

    def generate(self, items: Sequence[WorkItem]) -> list[Sample]:
        from imgsynth.pipelines import conditional

        collector = _CollectingWriter()
        conditional.write_shards(self.model, collector, [list(items)], [0], self.plan, self.batch_size,  # type: ignore[arg-type]
                                 progress=False)
        return collector.samples


# --------------------------------------------------------------------------------------------- text to image

@dataclasses.dataclass
class Text2ImageShardGenerator:
    """Rendering with a diffusers text-to-image pipeline; arguments as ``text2image.generate_text2image``'s."""

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
        from imgsynth.pipelines import text2image as t2i
        from imgsynth.pipelines.prompts import resolve_bank

        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        self.bank = resolve_bank(self.classes, self.prompts)
        default_steps, default_guidance = t2i.default_sampling(self.model)
        self.options = t2i.SamplingOptions(
            steps=default_steps if self.steps is None else int(self.steps),
            guidance_scale=default_guidance if self.guidance_scale is None else float(self.guidance_scale),
            negative_prompt=self.bank.negative_prompt if self.negative_prompt is None else self.negative_prompt.strip(),
            height=self.height, width=self.width)
        self.pipeline: Any = None
        self.rewriter: Any = None
        self._spec: tuple[Path, SetSpec] | None = None
        self._fingerprint: str | None = None

    @property
    def num_gpus(self) -> float:
        return 1.0 if _uses_gpu(self.device) else 0.0

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "pipeline": None, "rewriter": None}

    def _load_pipeline(self, device: str | None, dtype: Any = None) -> Any:
        from imgsynth.pipelines import text2image as t2i

        return t2i.Text2ImageGenerator.from_pretrained(self.model, device=device, dtype=dtype or self.dtype,
                                                       lora=self.lora, compile=self.compile)

    def _load_for_provenance(self) -> Any:
        """The pipeline as workers will load it, or, on a driver without their GPU, on the CPU in their dtype."""
        import torch

        if not _uses_gpu(self.device) or torch.cuda.is_available():
            self.pipeline = self._load_pipeline(self.device)  # the local backend reuses it
            return self.pipeline
        return self._load_pipeline("cpu", self.dtype or "bf16")  # a CPU-only head node of a GPU cluster

    def spec(self, out: Path) -> SetSpec:
        """The set's description; its provenance (weights hash, dtype, scheduler) needs the pipeline loaded."""
        out = Path(out).absolute()
        if self._spec is not None and self._spec[0] == out:
            return self._spec[1]
        from imgsynth.pipelines import text2image as t2i
        from imgsynth.provenance import model_license

        loaded = self.pipeline or self._load_for_provenance()
        record = loaded.provenance()
        if _uses_gpu(self.device) and loaded.device == "cpu":
            record["compiled"] = self.compile
        parents = list(self.parents) + t2i.lora_parents(loaded.lora, out)
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
        self._fingerprint = t2i.plan_fingerprint(self.work(), {
            "weights": record["weights_sha256"], "lora": (record["lora"] or {}).get("sha256"),
            "dtype": record["dtype"], "sampling": sampling, "caption_model": str(self.caption_model or ""),
            "shard_size": self.shard_size, "generation": self.generation})
        self._spec = (out, spec)
        return spec

    def prepare_writer(self, writer: ImageSetWriter) -> None:
        from imgsynth.pipelines import text2image as t2i

        self.spec(writer.root)
        t2i.check_plan(writer, self._fingerprint)

    def finished_set(self, out: Path, spec: SetSpec) -> Any:
        """``generate_text2image``'s rule: batch size, shard size and compilation do not make another set."""
        from imgsynth.pipelines import text2image as t2i

        return t2i.finished_set(Path(out), spec.generator, spec.config)

    def work(self) -> list[WorkItem]:
        from imgsynth.pipelines import text2image as t2i

        return t2i.plan_text2image(self.bank, self.per_class, self.seed)

    def load(self) -> None:
        from imgsynth.pipelines.prompts import CaptionRewriter

        if self.pipeline is None:
            self.pipeline = self._load_pipeline(self.device)
        if self.caption_model and self.rewriter is None:
            self.rewriter = CaptionRewriter(self.caption_model, device="cpu")

    def generate(self, items: Sequence[WorkItem]) -> list[Sample]:
        return self.pipeline.render(items, self.options, batch_size=self.batch_size, rewriter=self.rewriter,
                                    generation=self.generation)


def generator_for(model: str | os.PathLike, **options: Any) -> Any:
    """The adapter for ``model``: a class-conditional model dir, else a text-to-image pipeline (folder or Hub id).

    ``options`` are the sampling arguments of the matching pipeline function.
    """
    from imgsynth.pipelines import conditional

    if conditional.is_model_dir(model):
        return ConditionalShardGenerator(str(model), **options)
    return Text2ImageShardGenerator(str(model), **options)


# Options that only one kind of generator takes (the `imgsynth generate` flags, by parameter name).
TEXT2IMAGE_ONLY = ("classes", "prompts", "negative_prompt", "lora", "caption_model", "height", "width", "dtype",
                   "compile", "license")
CONDITIONAL_ONLY = ("noise_temperature",)


def generate_with_backend(model: str | os.PathLike, out: str | os.PathLike, *, backend: str = "local",
                          address: str | None = None, workers: int | None = None, progress: bool = True,
                          **options: Any) -> Any:
    """``imgsynth generate`` on a backend: pick the adapter for ``model``, check its options, run the job.

    ``options`` are the command's sampling options by parameter name (``per_class``, ``guidance_scale``,
    ``steps``, ``seed``, ``batch_size``, ``device``, and the kind-specific ones); None or False means
    unset. ``classes`` may be a comma-separated string. Returns the finished ImageSet.
    """
    from imgsynth.distributed.generate import generate
    from imgsynth.pipelines import conditional

    if address is not None and backend != "ray":
        raise ValueError("--address applies to --backend ray only")
    given = {name: value for name, value in options.items() if value is not None and value is not False}
    if isinstance(given.get("classes"), str):
        given["classes"] = [c.strip() for c in given["classes"].split(",") if c.strip()] or None
    for name in ("lora", "caption_model"):
        if name in given:
            given[name] = str(given[name])
    if conditional.is_model_dir(model):
        wrong = [f"--{name.replace('_', '-')}" for name in given if name in TEXT2IMAGE_ONLY]
        if wrong:
            raise ValueError(f"{', '.join(wrong)} apply to text-to-image pipelines only; {model} is a "
                             "class-conditional model")
    else:
        if given.pop("noise_temperature", 1.0) != 1.0:
            raise ValueError(f"--noise-temperature applies to class-conditional models only; {model} is not one "
                             f"(no {conditional.MODEL_FILE})")
    adapter = generator_for(model, **given)
    return generate(adapter, out, backend=backend, workers=workers, address=address, progress=progress)
