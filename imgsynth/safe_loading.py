"""The one loading rule: no file a user can hand to imgsynth is unpickled with code-running pickle.

Every weight file imgsynth reads is either safetensors (plain tensors, no code) or a torch file read by
``torch.load(weights_only=True)``, whose unpickler builds only tensors and plain containers and refuses
anything else (a ``__reduce__`` asking for ``os.system`` is refused before it runs). Libraries that load
weights for imgsynth (open_clip, transformers, diffusers) are called with that rule made explicit where
they take it, and never with ``trust_remote_code``. ``WEIGHT_LOADERS`` lists every loader, what it reads
and its rule, so a new loader is one more line here and a review has one place to look.

A refused or unreadable file is an ``UnsafeFileError``: a ``ValueError``, so the CLI prints it as one
``error:`` line naming the file and why, never a traceback.
"""

from __future__ import annotations

import os
import pickle
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

# torch.hub's naming convention: ``name-<first hex digits of the sha256>.ext`` (torch.hub.HASH_REGEX,
# here with at least 8 digits, so an ordinary word such as "-cafe." does not count as a claim).
CLAIMED_DIGEST = re.compile(r"-([a-f0-9]{8,64})\.")
SAFE_LOAD_RULE = "torch.load(weights_only=True) reads tensors and plain containers only"
# Suffixes of pickle-based weight formats (torch.save, pickle); safetensors files hold no code.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


class UnsafeFileError(ValueError):
    """A weight file imgsynth refuses to load (it would need code to unpickle, or its digest is wrong) or
    cannot read (truncated, corrupt); the message names the file and the reason on one line."""


@dataclass(frozen=True)
class WeightLoader:
    """One place imgsynth reads weights: its name, the files it reads, its safety rule and the code."""

    name: str
    reads: str
    rule: str
    where: str


WEIGHT_LOADERS: tuple[WeightLoader, ...] = (
    WeightLoader(
        "inception", "a torch .pth file: 'inception:<path>', or the torch hub cache "
        "($TORCH_HOME/hub/checkpoints/weights-inception-2015-12-05-6726825d.pth)",
        "sha256 first, checked against the prefix a hub-style name claims (check_claimed_digest) before any "
        "byte is unpickled; then load_torch_file (weights_only=True); then a strict load_state_dict into "
        "torch-fidelity's network built without its own loader (which would torch.load(weights_only=False) "
        "or download)",
        "imgsynth.metrics.features.InceptionExtractor"),
    WeightLoader(
        "clip", "open_clip weights: .safetensors, or .bin/.pt/.pth ('clip:<model>:<file>', 'clip:<folder>' "
        "with open_clip_config.json, or a cached pretrained tag)",
        "open_clip.create_model(..., weights_only=True) passed explicitly: open_clip's load_checkpoint reads "
        ".safetensors with safetensors and anything else with torch.load(weights_only=True); a refusal "
        "becomes UnsafeFileError. open_clip's load_openai_model (JIT archives, plain torch.load) is never called",
        "imgsynth.metrics.features.ClipExtractor"),
    WeightLoader(
        "dinov2", "a transformers save_pretrained folder or cached hub snapshot: model.safetensors or "
        "pytorch_model.bin",
        "AutoModel.from_pretrained(local_files_only=True, weights_only=True): safetensors, else "
        "torch.load(weights_only=True) (transformers refuses torch < 2.6 there); no trust_remote_code, so "
        "custom code a config names (auto_map) is refused; a refusal becomes UnsafeFileError",
        "imgsynth.metrics.features.Dinov2Extractor"),
    WeightLoader(
        "conditional-model", "an imgsynth model folder: diffusion_pytorch_model.safetensors + imgsynth_model.json",
        "safetensors only: the sha256 recorded in imgsynth_model.json is checked first, pickle suffixes "
        "(.bin .pt .pth .ckpt .pkl) are refused (_check_safetensors_only), and UNet2DModel.from_pretrained "
        "gets use_safetensors=True",
        "imgsynth.pipelines.conditional.load_model"),
    WeightLoader(
        "training-checkpoint", "checkpoints/step-N/: weights.safetensors + training_state.pt",
        "weights safetensors only (pickle suffixes refused); training_state.pt (optimizer, LR schedule, EMA "
        "counters, RNG states: tensors and numbers) through load_torch_file (weights_only=True)",
        "imgsynth.pipelines.conditional.Checkpoints.load"),
    WeightLoader(
        "per-class-model", "a gaussian or kde model folder: model.safetensors + imgsynth_model_info.json",
        "safetensors only (load_safetensors, numpy): the info's schema and the sha256 it records are checked "
        "first, then every class's arrays (names, shapes, finite values) by the kind's check_arrays",
        "imgsynth.pipelines.per_class.read_model"),
    WeightLoader(
        "classifier", "a classifier folder: model.safetensors + classifier.json (also 'domain:<folder>')",
        "safetensors only (safetensors.torch.load_model); pickle files in the folder are named and refused",
        "imgsynth.classifier.checkpoint.load_classifier"),
    WeightLoader(
        "text2image", "a diffusers pipeline folder or cached hub snapshot (model_index.json + components)",
        "diffusers from_pretrained: safetensors, or .bin through torch.load(weights_only=True); a component "
        "whose code ships with the folder needs trust_remote_code, which imgsynth never passes, and only "
        "diffusers/transformers classes are imported; transformers components follow the dinov2 rule; a "
        "refusal becomes UnsafeFileError naming the pickle files",
        "imgsynth.pipelines.text2image.load_text2image_pipeline"),
    WeightLoader(
        "lora", "'imgsynth generate --lora': a LoRA file or folder (imgsynth finetune writes "
        "pytorch_lora_weights.safetensors)",
        "diffusers load_lora_weights: safetensors first, else torch.load(weights_only=True); a refusal "
        "becomes UnsafeFileError",
        "imgsynth.pipelines.text2image.Text2ImageRenderer.from_pretrained"),
    WeightLoader(
        "lora-checkpoint", "a killed 'imgsynth finetune' run's .<out>.partial/checkpoint.pt (adapters, "
        "optimizer, data order, RNG state)",
        "load_torch_file (weights_only=True); the finished LoRA is written as safetensors",
        "imgsynth.pipelines.finetune._load_checkpoint"),
    WeightLoader(
        "caption-model", "'--caption-model': a local transformers language model folder",
        "AutoConfig/AutoTokenizer/AutoModelFor*.from_pretrained(local_files_only=True, weights_only=True "
        "for the model): safetensors, else transformers' torch.load(weights_only=True); no trust_remote_code; "
        "a refusal becomes UnsafeFileError",
        "imgsynth.pipelines.prompts.CaptionRewriter"),
    WeightLoader(
        "feature-cache", "$IMGSYNTH_CACHE/features/*.safetensors",
        "safetensors only (safetensors.torch.load_file); an unreadable entry is recomputed; a readable one whose "
        "features cannot be the extractor's (not a finite float32 matrix, another width) is refused, naming it",
        "imgsynth.metrics.feature_cache.cached_features"),
)


# --------------------------------------------------------------------------------------------- loading

def load_torch_file(path: str | os.PathLike, what: str) -> dict[str, Any]:
    """``torch.load(path, map_location="cpu", weights_only=True)`` of a file that must hold a dict.

    A file that would need code to unpickle, a truncated or corrupt one, and one that holds something
    other than a dict raise ``UnsafeFileError`` naming ``path`` and ``what`` it should have been; a
    missing file stays a ``FileNotFoundError``.
    """
    import torch

    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # the unpickler and the zip reader raise many types; all mean "not loadable"
        raise load_error(path, what, exc) from exc
    if not isinstance(loaded, dict):
        raise UnsafeFileError(f"{path}: {what}: holds a {type(loaded).__name__}, expected a dict of tensors")
    return loaded


def load_safetensors(path: str | os.PathLike, what: str, numpy: bool = False,
                     device: str = "cpu") -> dict[str, Any]:
    """The tensors of a safetensors file (numpy arrays with ``numpy``, else torch tensors on ``device``); a
    file that is not safetensors (a pickle renamed, a truncated file) is an ``UnsafeFileError`` naming
    ``path`` and ``what`` it should have been; a missing file stays a ``FileNotFoundError``."""
    from safetensors import SafetensorError

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: missing ({what})")
    try:
        if numpy:
            from safetensors.numpy import load_file as load_numpy

            return load_numpy(str(path))
        from safetensors.torch import load_file as load_torch

        return load_torch(str(path), device=device)
    except (SafetensorError, ValueError, OSError) as exc:
        hint = " (it looks like a pickle, which imgsynth never loads)" if _starts_like_pickle(path) else ""
        raise UnsafeFileError(f"{path}: {what}: not a readable safetensors file{hint} "
                              f"({type(exc).__name__}: {first_line(exc) or 'unreadable'})") from None


def _starts_like_pickle(path: str | os.PathLike) -> bool:
    """Whether the file begins as a pickle (protocol 2+) or a torch zip archive does."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError:
        return False
    return head[:1] == b"\x80" or head[:4] == b"PK\x03\x04"


def load_error(path: str | os.PathLike, what: str, exc: BaseException) -> UnsafeFileError:
    """The one-line error for ``exc``, raised while loading ``path``: refused pickle, or unreadable file."""
    refusal = pickle_refusal(exc)
    if refusal is not None:
        return UnsafeFileError(f"{path}: {what}: {refusal}")
    return UnsafeFileError(f"{path}: {what}: unreadable, not a complete torch file "
                           f"({type(exc).__name__}: {first_line(exc) or 'the file ends early'})")


@contextmanager
def refusing_pickles(source: str | os.PathLike, what: str) -> Iterator[None]:
    """Turn a safe-unpickler refusal raised in the block, however a library wrapped it, into an
    ``UnsafeFileError`` naming ``source`` (the file or files being loaded) and ``what`` they are for;
    any other error passes through unchanged."""
    try:
        yield
    except Exception as exc:
        if pickle_refusal(exc) is None:
            raise
        raise load_error(source, what, exc) from exc


def pickle_files(folder: str | os.PathLike, pattern: str = "*") -> str:
    """The pickle-based files in ``folder`` matching ``pattern`` (e.g. ``*/*`` for pipeline components),
    comma-separated, or the folder itself when there are none: what to name when a load was refused."""
    found = sorted(p for p in Path(folder).glob(pattern) if p.suffix in PICKLE_SUFFIXES and p.is_file())
    return ", ".join(map(str, found)) or str(folder)


def pickle_refusal(exc: BaseException) -> str | None:
    """Why torch's safe unpickler refused a file, when it did anywhere in ``exc``'s chain; else None.

    Libraries (transformers, diffusers, open_clip) wrap or re-raise the unpickler's error, so the whole
    ``__cause__``/``__context__`` chain is searched.
    """
    for error in _chain(exc):
        if isinstance(error, pickle.UnpicklingError) or "Weights only load failed" in str(error):
            called = re.search(r"GLOBAL ([\w.]+)", str(error))
            if called:
                return (f"refused: pickle-based file that would need arbitrary code to load (it calls "
                        f"{called.group(1)}); {SAFE_LOAD_RULE}")
            return (f"refused: pickle data the safe loader cannot read, which may need arbitrary code to load; "
                    f"{SAFE_LOAD_RULE}")
    return None


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def first_line(exc: BaseException) -> str:
    """The first non-empty line of ``exc``'s message, at most 200 characters (libraries' errors run long)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0][:200] if lines else ""


# --------------------------------------------------------------------------------------------- digests

def claimed_digest(path: str | os.PathLike) -> str | None:
    """The sha256 prefix a torch-hub-style file name claims (``…-6726825d.pth`` → ``6726825d``), or None."""
    found = CLAIMED_DIGEST.search(Path(path).name)
    return found.group(1) if found else None


def check_claimed_digest(path: str | os.PathLike, digest: str, what: str, hint: str = "") -> None:
    """Refuse ``path`` when its name claims a sha256 prefix that ``digest`` (its real sha256) lacks.

    Called before the file is loaded, so a substituted file under a published name is never unpickled.
    """
    claimed = claimed_digest(path)
    if claimed is not None and not digest.startswith(claimed):
        raise UnsafeFileError(
            f"{path}: {what}: refused: the file name claims sha256 {claimed}… (torch hub convention) but the "
            f"file's sha256 is {digest[:len(claimed)]}…, so it is not the published file (damaged or "
            f"substituted){'; ' + hint if hint else ''}")
