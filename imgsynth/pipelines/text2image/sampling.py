"""A text-to-image set: its work plan (class captions from a prompt bank, one seed per image) and the
kind's :class:`Text2ImageSamplingJob`, which every backend drives.

Each class gets ``per_class`` captions from a prompt bank (:mod:`imgsynth.pipelines.prompts`). Work is cut
into fixed shards by the shared driver (:mod:`imgsynth.pipelines.sharding`); an interrupted run resumes at
the first missing shard and produces the same bytes, a half-written set started with other settings is
refused (the plan fingerprint), and a finished set made with the same settings is returned as it is.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterable, Mapping, Sequence

from imgsynth.imageset import ImageSet, ImageSetWriter, Sample
from imgsynth.pipelines.prompts import CaptionRewriter, PromptBank, resolve_bank
from imgsynth.pipelines.sharding import SameSet, SetJob, SetSpec, write_set
from imgsynth.pipelines.text2image.options import Text2ImageOptions
from imgsynth.pipelines.text2image.loading import PLAN_FILE, default_sampling
from imgsynth.pipelines.text2image.renderer import SamplingOptions, Text2ImageRenderer
from imgsynth.pipelines.work import WorkItem, balanced_work
from imgsynth.provenance import model_license
from imgsynth.structured_files import read_json_object


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


def check_plan(writer: ImageSetWriter, fingerprint: str) -> None:
    """Refuse to resume a half-written set that was started with other settings (it would mix them).

    The fingerprint lives next to the shard files, which ``finalize`` removes with them.
    """
    plan = writer.partial / "shards" / PLAN_FILE
    if plan.is_file():
        previous = read_json_object(plan).get("fingerprint")
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




def generate_text2image(model: str | os.PathLike, out: str | os.PathLike, *, per_class: int = 10, seed: int = 0,
                        generation: int = 0, parents: Iterable[Mapping[str, Any]] = (), progress: bool = True,
                        renderer: Text2ImageRenderer | None = None, **options: Any) -> ImageSet:
    """Generate ``per_class`` images of every class with a text-to-image pipeline into an ImageSet at ``out``.

    ``options`` are :class:`~imgsynth.pipelines.text2image.kind.Text2ImageOptions` fields (``classes``,
    ``prompts``, ``sample_steps``, ``guidance_scale``, ``sample_batch_size``, ``lora``, …): classes come from
    ``classes`` (names; shipped bank entries where they exist, generic captions otherwise) and/or ``prompts``
    (a bank's path or shipped name, e.g. ``indoor-scenes``). An interrupted call resumes when called again
    with the same arguments; a call with different arguments on a half-written set is refused.
    ``renderer`` reuses a loaded pipeline (e.g. across benchmark runs).
    """
    known = {f.name for f in dataclasses.fields(Text2ImageOptions)} - {"model"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"generate_text2image: unknown option(s) {unknown}; known: {sorted(known)}")
    settings = Text2ImageOptions(model=str(model), **options).validate()
    job = Text2ImageSamplingJob(settings, per_class=per_class, seed=seed, generation=generation,
                                parents=list(parents))
    job.renderer = renderer  # None: loaded by spec()
    return write_set(job, out, progress=progress)


@dataclass
class Text2ImageSamplingJob(SetJob):
    """Rendering a text-to-image set shard by shard, for the local driver or a backend.

    Holds its :class:`Text2ImageOptions` as given; the pipeline is loaded by ``spec`` on the driver (its
    provenance: weights hash, dtype, scheduler) or by ``load`` on a worker.
    """

    # What decides the pixels and labels; batch size, compilation and shard size do not (beyond rounding).
    same_set: ClassVar[SameSet] = SameSet(
        generator=("pipeline", "weights_sha256", "scheduler", "dtype", "steps", "guidance_scale", "negative_prompt",
                   "seed", "height", "width", "prompt_bank", "caption_model", "lora.sha256"),
        config=("per_class", "classes", "generation"))

    options: Text2ImageOptions
    per_class: int = 10
    seed: int = 0
    generation: int = 0
    parents: Sequence[Mapping[str, Any]] = ()

    def __post_init__(self) -> None:
        from imgsynth.compute import uses_gpu

        o = self.options
        if o.sample_batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {o.sample_batch_size}")
        self.shard_size = o.shard_size
        self.bank = resolve_bank(None if o.classes is None else list(o.classes), o.prompts or None)
        default_steps, default_guidance = default_sampling(o.model)
        self.sampling = SamplingOptions(
            steps=default_steps if o.sample_steps is None else int(o.sample_steps),
            guidance_scale=default_guidance if o.guidance_scale is None else float(o.guidance_scale),
            negative_prompt=self.bank.negative_prompt if o.negative_prompt is None else o.negative_prompt.strip(),
            height=o.height, width=o.width)
        self.num_gpus = 1.0 if uses_gpu(o.device) else 0.0
        self.renderer: Text2ImageRenderer | None = None
        self.rewriter: CaptionRewriter | None = None
        self._spec: tuple[Path, SetSpec] | None = None
        self._fingerprint: str | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "renderer": None, "rewriter": None}

    def _load_renderer(self, device: str | None, dtype: Any = None) -> Text2ImageRenderer:
        o = self.options
        return Text2ImageRenderer.from_pretrained(o.model, device=device, dtype=dtype or o.dtype, lora=o.lora,
                                                  compile=o.compile)

    def _load_for_provenance(self) -> Text2ImageRenderer:
        """The pipeline as workers will load it, or, on a driver without their GPU, on the CPU in their dtype."""
        import torch

        if not self.num_gpus or torch.cuda.is_available():
            self.renderer = self._load_renderer(self.options.device)  # the local driver reuses it
            return self.renderer
        return self._load_renderer("cpu", self.options.dtype or "bf16")  # a CPU-only head node of a GPU cluster

    def spec(self, out: Path) -> SetSpec:
        """The set's description; its provenance (weights hash, dtype, scheduler) needs the pipeline loaded."""
        o = self.options
        out = Path(out).absolute()
        if self._spec is not None and self._spec[0] == out:
            return self._spec[1]
        loaded = self.renderer or self._load_for_provenance()
        record = loaded.provenance()
        if self.num_gpus and loaded.device == "cpu":
            record["compiled"] = o.compile
        parents = list(self.parents) + lora_parents(loaded.lora, out)
        sampling = {**dataclasses.asdict(self.sampling), "seed": self.seed,
                    "negative_prompt": self.sampling.negative_prompt if self.sampling.guided else ""}
        spec = SetSpec(
            self.bank.class_names, kind="generated", parents=parents,
            generator={**record, **sampling, "prompt_bank": self.bank.source or self.bank.name,
                       "caption_model": str(o.caption_model) if o.caption_model else None},
            config={"per_class": self.per_class, "shard_size": o.shard_size, "batch_size": o.sample_batch_size,
                    "generation": self.generation, "classes": self.bank.class_names},
            license=record["license"] if o.license is None else
            model_license(record["model_path"] or o.model, o.license))
        self._fingerprint = plan_fingerprint(self.work(), {
            "weights": record["weights_sha256"], "lora": (record["lora"] or {}).get("sha256"),
            "dtype": record["dtype"], "sampling": sampling, "caption_model": str(o.caption_model or ""),
            "shard_size": o.shard_size, "generation": self.generation})
        self._spec = (out, spec)
        return spec

    def prepare_writer(self, writer: ImageSetWriter) -> None:
        """Record the plan's fingerprint, refusing to resume a half-written set of another plan."""
        self.spec(writer.root)
        assert self._fingerprint is not None
        check_plan(writer, self._fingerprint)

    def work(self) -> list[WorkItem]:
        return plan_text2image(self.bank, self.per_class, self.seed)

    def load(self) -> None:
        if self.renderer is None:
            self.renderer = self._load_renderer(self.options.device)
        if self.options.caption_model and self.rewriter is None:
            self.rewriter = CaptionRewriter(self.options.caption_model, device="cpu")

    def generate(self, items: Sequence[WorkItem]) -> list[Sample]:
        assert self.renderer is not None, "load() first"
        return self.renderer.render(items, self.sampling, batch_size=self.options.sample_batch_size,
                                    rewriter=self.rewriter, generation=self.generation)
