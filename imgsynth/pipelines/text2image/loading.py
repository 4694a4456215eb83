"""Loading a pretrained text-to-image pipeline (diffusers) safely, and what identifies it (weights, LoRA).

Any pipeline ``AutoPipelineForText2Image`` can load works: Stable Diffusion 1.x/2.x, SD-Turbo, SDXL,
PixArt, FLUX, … from a local ``save_pretrained`` folder or a Hub id (from the local cache when
``HF_HUB_OFFLINE=1``); pickle-based weight files are refused, and nothing runs remote code.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import re
from pathlib import Path
from typing import Any


from imgsynth.compute import resolve_device
from imgsynth.pipelines.base import read_info_file
from imgsynth.provenance import sha256_file
from imgsynth.safe_loading import UnsafeFileError, pickle_files, refusing_pickles
from imgsynth.structured_files import read_json


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
    device = str(resolve_device(device))
    torch_dtype = resolve_dtype(dtype, device)
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise ValueError(f"{path}: not a diffusers pipeline folder (no model_index.json); "
                             "give a folder written by pipeline.save_pretrained() or a Hub id")
        source = str(path)
        # diffusers and transformers parse these with json.loads and no limits: read each through the one
        # reader first, so a deeply nested or oversized config is one error naming it, not a RecursionError.
        for config in sorted([*path.glob("*.json"), *path.glob("*/*.json")]):
            read_json(config)
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
        trained = read_info_file(info)
        record["trained"] = {key: trained[key] for key in ("base_model", "base_weights_sha256", "train_set",
                                                           "config") if key in trained}
    return record
