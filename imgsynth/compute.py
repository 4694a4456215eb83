"""How torch computes here, decided in one place: the device, the intra-op thread count, matmul precision.

Every setting is scoped: a context manager sets it and puts back what was there, so importing or calling
imgsynth never leaves a notebook's torch configured differently (no global switch at import or in a
model's preparation). torch is imported only when a function needs it, so light modules can import this.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import sys
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    import torch

# The device names imgsynth runs on (CPU and CUDA only); recipes are checked against it without torch.
DEVICE_PATTERN = re.compile(r"(auto|cpu|cuda(:[0-9]+)?)\Z")
DEVICE_CHOICES = "'auto', 'cpu', 'cuda' or 'cuda:N'"
# Building or sampling a model whose estimated float32 weights plus activations exceed the memory of the
# device it runs on (a CUDA device's memory, or the machine's RAM) is refused; this environment variable
# sets another limit, in GB (10^9 bytes). Where the memory cannot be read the limit is 16 GB.
MAX_MODEL_GB_ENV = "IMGSYNTH_MAX_MODEL_GB"
FALLBACK_MAX_MODEL_GB = 16.0


def check_device(name: str | None, where: str = "--device") -> str | None:
    """``name`` when imgsynth can run on it on this machine; one ``ValueError`` naming ``where`` otherwise.

    Every command and recipe field that takes a device calls this first, before any data or weights load:
    a misspelt device is refused without importing torch, and ``cuda`` is checked to be present.
    """
    if name is None or str(name) in ("", "auto"):
        return name
    if not DEVICE_PATTERN.match(str(name)):
        raise ValueError(f"{where} {str(name)!r} is not a device imgsynth runs on; use {DEVICE_CHOICES}")
    try:
        resolve_device(name)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    return name


def resolve_device(name: str | torch.device | None = None) -> torch.device:
    """The device to run on: ``None``/``""``/``"auto"`` picks CUDA when present, else the CPU.

    An explicit ``"cuda"`` on a machine without one is an error rather than a silent CPU fallback, so a
    run never takes 100 times longer than its owner planned without saying why.
    """
    import torch

    if name is None or str(name) in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {name!r} (use 'cpu', 'cuda', 'cuda:N' or 'auto')") from exc
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {name!r} is not supported (use 'cpu' or 'cuda')")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for but CUDA is not available on this machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {name!r} was asked for but this machine has {torch.cuda.device_count()} "
                         "CUDA device(s)")
    return device


def max_model_bytes(device: torch.device | None = None) -> tuple[float, str]:
    """(the memory limit for building, loading and sampling a model, in bytes; where the limit comes from)."""
    raw = os.environ.get(MAX_MODEL_GB_ENV, "").strip()
    if raw:
        try:
            limit = float(raw)
        except ValueError:
            limit = math.nan
        if not (limit > 0 and math.isfinite(limit)):
            raise ValueError(f"{MAX_MODEL_GB_ENV}={raw!r}: expected a positive number of gigabytes")
        return limit * 1e9, f"set by {MAX_MODEL_GB_ENV}"
    if device is not None and device.type == "cuda":
        import torch

        return float(torch.cuda.get_device_properties(device.index or 0).total_memory), f"the memory of {device}"
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")), "this machine's RAM"
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows)
        return FALLBACK_MAX_MODEL_GB * 1e9, "imgsynth's default"


def uses_gpu(name: str | None) -> bool:
    """Whether a job asked to run on ``name`` needs a GPU (``None``/``"auto"``: when this machine has one);
    what a backend reserves per worker."""
    if name in (None, "", "auto"):
        import torch

        return torch.cuda.is_available()
    return str(name).startswith("cuda")


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run with ``count`` torch intra-op threads, restoring the previous count after (no-op without torch).

    CPU float results depend on the thread count (reductions split differently), so whoever must write the
    same bytes as another worker computes with the same count.
    """
    torch = sys.modules.get("torch")  # code that never imported torch computes nothing with it
    if count is None or torch is None:
        yield
        return
    if count < 1:
        raise ValueError(f"cpu_threads must be at least 1, got {count}")
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def fast_matmul(device: torch.device | str) -> Iterator[None]:
    """On CUDA, allow TF32 matmuls and convolutions (float32 runs take the tensor cores; bf16/fp16 ignore it)
    for the duration of the block, then put back the previous flags. Elsewhere nothing changes."""
    import torch

    if str(device).split(":")[0] != "cuda":
        yield
        return
    previous = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous


@contextlib.contextmanager
def highest_matmul_precision() -> Iterator[None]:
    """True float32 matmuls (no TF32 or bf16 shortcuts, whatever the caller set) for the duration of the
    block, then the previous setting: for metrics whose error bounds assume IEEE float32 GEMMs."""
    import torch

    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)
