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
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image

from imgsynth.imageset import ImageSet, ImageSetWriter, Sample
from imgsynth.pipelines.prompts import CaptionRewriter, PromptBank, resolve_bank
from imgsynth.pipelines.work import DEFAULT_SHARD_SIZE, WorkItem, balanced_work, batches, shards
from imgsynth.provenance import model_license, sha256_file
from imgsynth.safe_loading import UnsafeFileError, pickle_files, refusing_pickles

DENOISERS = ("unet", "transformer")
# Distilled few-step models: sample in a handful of steps without classifier-free guidance.
FEW_STEP_MODELS = re.compile(r"turbo|lightning|hyper-?sd|lcm|schnell", re.IGNORECASE)
DEFAULT_STEPS, DEFAULT_GUIDANCE = 30, 7.5
FEW_STEP_STEPS, FEW_STEP_GUIDANCE = 4, 0.0
PLAN_FILE = "text2image-plan.json"
CAPTION_REWRITE_BATCH = 16
DTYPES = {"fp32": "float32", "float32": "float32", "fp16": "float16", "float16": "float16",
          "bf16": "bfloat16", "bfloat16": "bfloat16"}


# --------------------------------------------------------------------------------------------- loading

def default_sampling(model: str | os.PathLike) -> tuple[int, float]:
    """(steps, guidance scale) when the user gives none: 4 steps unguided for turbo-like models, else 30 at 7.5."""
    return (FEW_STEP_STEPS, FEW_STEP_GUIDANCE) if FEW_STEP_MODELS.search(str(model)) else \
        (DEFAULT_STEPS, DEFAULT_GUIDANCE)


def resolve_device(device: str | None = None) -> str:
    """``device`` as given (checked), else CUDA when available, else CPU; as a string like ``"cuda"``."""
    from imgsynth.pipelines.device import resolve_device as resolve

    return str(resolve(device))


def resolve_dtype(dtype: str | None, device: str) -> Any:
    """The torch dtype to run in: bf16 on CUDA (fp16 where bf16 is unsupported), fp32 elsewhere."""
    import torch

    if dtype in (None, "", "auto"):
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if str(dtype).lower() not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(sorted(set(DTYPES)))} or auto")
    return getattr(torch, DTYPES[str(dtype).lower()])


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().upper() in ("1", "ON", "YES", "TRUE")


def _looks_like_path(model: str) -> bool:
    return model.startswith((".", "/", "~")) or model.count("/") > 1 or "\\" in model or model.endswith("/")


def load_text2image_pipeline(model: str | os.PathLike, *, device: str | None = None, dtype: Any = None) -> Any:
    """Load a diffusers text-to-image pipeline from a local folder or a Hub id, with clear errors.

    A folder must hold ``model_index.json`` (a ``save_pretrained`` pipeline). A Hub id is read from the
    local cache only when ``HF_HUB_OFFLINE=1``. Pipelines without a text-to-image form (DDPM, a bare
    UNet2DModel, an upscaler) and inpainting checkpoints are refused.
    """
    import torch  # noqa: F401  (diffusers needs it; imported here to keep module import light)
    from diffusers import AutoPipelineForText2Image

    name = str(model)
    path = Path(name).expanduser()
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise ValueError(f"{path}: not a diffusers pipeline folder (no model_index.json); "
                             "give a folder written by pipeline.save_pretrained() or a Hub id")
        source = str(path)
    elif _looks_like_path(name):
        raise FileNotFoundError(f"model {name!r}: no such folder")
    else:
        source = name
    offline = hub_offline()
    try:
        # No trust_remote_code, and .bin weights go through torch.load(weights_only=True) in diffusers and
        # transformers alike (imgsynth.safe_loading); a refusal is one error line naming the pickle files.
        with refusing_pickles(pickle_files(path, "*/*") if path.exists() else name, f"model {name!r}"):
            pipe = AutoPipelineForText2Image.from_pretrained(source, dtype=torch_dtype,
                                                             local_files_only=offline or path.exists())
    except UnsafeFileError:
        raise
    except ValueError as exc:
        if "AutoPipeline can't find" not in str(exc):
            raise
        class_name = _pipeline_class_name(source, offline)
        raise ValueError(f"model {name!r} is a {class_name}, which is not a text-to-image pipeline "
                         "(diffusers has no text-to-image form of it); imgsynth generate needs a "
                         "text-to-image pipeline such as Stable Diffusion, SDXL, PixArt or FLUX, or an "
                         "imgsynth class-conditional model folder") from exc
    except OSError as exc:
        if path.exists():
            raise ValueError(f"{path}: could not load the pipeline ({exc})") from exc
        where = os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME") or "~/.cache/huggingface"
        hint = (f"HF_HUB_OFFLINE=1 is set, so only the local cache ({where}) is searched; download it "
                f"first on a machine with internet (`hf download {name}`, into the same HF_HOME) or "
                "give a local folder written by save_pretrained()") if offline else \
            "check the id, your access to it, and your network"
        raise FileNotFoundError(f"model {name!r} is neither a local folder nor a loadable Hub pipeline: "
                                f"{hint} ({type(exc).__name__}: {str(exc).splitlines()[0]})") from exc
    _check_text2image(pipe, name)
    return pipe


def _pipeline_class_name(source: str, offline: bool) -> str:
    from diffusers import DiffusionPipeline

    try:
        return DiffusionPipeline.load_config(source, local_files_only=offline)["_class_name"]
    except Exception:  # only used to improve an error message
        return "pipeline"


def denoiser_name(pipe: Any) -> str:
    """The attribute holding the pipeline's denoising network (``unet``, ``transformer``, …)."""
    for name in DENOISERS:
        if getattr(pipe, name, None) is not None:
            return name
    raise ValueError(f"{type(pipe).__name__} has none of the denoisers imgsynth knows ({', '.join(DENOISERS)})")


def _check_text2image(pipe: Any, model: str) -> None:
    name = denoiser_name(pipe)
    if "prompt" not in inspect.signature(pipe.__call__).parameters:
        raise ValueError(f"model {model!r}: {type(pipe).__name__} takes no text prompt; not a text-to-image pipeline")
    denoiser = getattr(pipe, name)
    vae = getattr(pipe, "vae", None)
    in_channels = getattr(denoiser.config, "in_channels", None)
    latent_channels = getattr(getattr(vae, "config", None), "latent_channels", None)
    if name == "unet" and in_channels and latent_channels and in_channels > latent_channels:
        raise ValueError(f"model {model!r}: its UNet takes {in_channels} input channels for {latent_channels} "
                         "latent channels, so it is an inpainting or image-conditioned checkpoint, "
                         "not a text-to-image one")


# --------------------------------------------------------------------------------------------- hashing

def weights_hash(folder: str | Path) -> str:
    """SHA-256 over the sorted (file name, file SHA-256) of the weights in ``folder`` (safetensors, else bin).

    Hub cache blobs are named by their SHA-256 already, so those are read off the symlink, not re-hashed.
    """
    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not files:
        raise ValueError(f"{folder}: no weight files (*.safetensors or *.bin)")
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.name}\t{_file_sha256(file)}\n".encode())
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    target = path.resolve()
    if path.is_symlink() and target.parent.name == "blobs" and re.fullmatch(r"[0-9a-f]{64}", target.name):
        return target.name
    return sha256_file(target)


def component_folder(pipe: Any, component: str) -> Path | None:
    module = getattr(pipe, component, None)
    folder = getattr(getattr(module, "config", None), "_name_or_path", None)
    if folder and Path(folder).is_dir():
        return Path(folder)
    root = Path(getattr(pipe.config, "_name_or_path", "") or "")
    return root / component if (root / component).is_dir() else None


def lora_record(lora: str | Path) -> dict[str, Any]:
    """Path, weights hash and (for imgsynth LoRAs) training provenance of a LoRA file or folder."""
    path = Path(lora)
    if not path.exists():
        raise FileNotFoundError(f"LoRA {str(lora)!r}: no such file or folder")
    folder = path if path.is_dir() else path.parent
    record: dict[str, Any] = {"path": str(path.resolve()),
                              "sha256": weights_hash(folder) if path.is_dir() else sha256_file(path)}
    info = folder / "imgsynth_lora.json"
    if info.is_file():
        trained = json.loads(info.read_text(encoding="utf-8"))
        record["trained"] = {key: trained[key] for key in ("base_model", "base_weights_sha256", "train_set",
                                                           "config") if key in trained}
    return record


# --------------------------------------------------------------------------------------------- generator

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
        record: dict[str, Any] = {
            "name": "text2image",
            "pipeline_class": type(pipe).__name__,
            "model": self.model,
            "model_path": str(model_path.resolve()) if model_path.exists() else (str(root) if root else None),
            "denoiser": self.denoiser,
            "weights_sha256": weights_hash(folder) if folder is not None else None,
            "scheduler": type(pipe.scheduler).__name__,
            "dtype": str(getattr(pipe, "dtype", "")).replace("torch.", ""),
            "lora": self.lora,
            "compiled": self.compiled,
        }
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
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    bank = resolve_bank(classes, prompts)
    default_steps, default_guidance = default_sampling(model)
    options = SamplingOptions(
        steps=default_steps if steps is None else int(steps),
        guidance_scale=default_guidance if guidance_scale is None else float(guidance_scale),
        negative_prompt=bank.negative_prompt if negative_prompt is None else negative_prompt.strip(),
        height=height, width=width)
    rewriter = CaptionRewriter(caption_model, device="cpu") if caption_model else None
    items = plan_text2image(bank, per_class, seed)
    work = shards(items, shard_size)
    if generator is None:
        generator = Text2ImageGenerator.from_pretrained(model, device=device, dtype=dtype, lora=lora,
                                                        compile=compile)
    record = generator.provenance()
    parents = list(parents) + lora_parents(generator.lora, Path(out))
    sampling = {**dataclasses.asdict(options), "seed": seed, "negative_prompt": options.negative_prompt
                if options.guided else ""}
    generator_record = {**record, **sampling, "prompt_bank": bank.source or bank.name,
                        "caption_model": str(caption_model) if caption_model else None}
    config = {"per_class": per_class, "shard_size": shard_size, "batch_size": batch_size,
              "generation": generation, "classes": bank.class_names}
    finished = finished_set(Path(out), generator_record, config)
    if finished is not None:
        return finished
    writer = ImageSetWriter(
        out, bank.class_names, kind="generated", parents=parents, generator=generator_record, config=config,
        license=record["license"] if license is None else model_license(record["model_path"] or model, license))
    check_plan(writer, plan_fingerprint(items, {
        "weights": record["weights_sha256"], "lora": (record["lora"] or {}).get("sha256"), "dtype": record["dtype"],
        "sampling": sampling, "caption_model": str(caption_model or ""), "shard_size": shard_size,
        "generation": generation}))
    write_text2image_shards(generator, writer, work, options, batch_size=batch_size, rewriter=rewriter,
                            generation=generation, progress=progress)
    return writer.finalize()


# What decides the pixels and labels; batch size, compilation and shard size do not (beyond rounding).
_SAME_SET_GENERATOR_KEYS = ("pipeline_class", "weights_sha256", "scheduler", "dtype", "steps", "guidance_scale",
                            "negative_prompt", "seed", "height", "width", "prompt_bank", "caption_model")
_SAME_SET_CONFIG_KEYS = ("per_class", "classes", "generation")


def finished_set(out: Path, generator: Mapping[str, Any], config: Mapping[str, Any]) -> ImageSet | None:
    """The finished set at ``out`` when the same settings made it (nothing to do); an error when others did."""
    if not (out / "imageset.json").is_file():
        return None
    existing = ImageSet.open(out)
    previous_generator = existing.manifest.get("generator") or {}
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
