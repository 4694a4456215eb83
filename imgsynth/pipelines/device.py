"""Where a pipeline runs and in which precision: one place for the CUDA/CPU differences.

On CUDA, models run under bf16 autocast with channels-last memory and may be compiled; on the CPU they
run in float32, eagerly, so results are deterministic and do not depend on an accelerator's kernels.
Pipelines ask this module rather than testing ``torch.cuda.is_available()`` themselves.
"""

from __future__ import annotations

import contextlib
from typing import ContextManager, TypeVar

import torch

ModuleT = TypeVar("ModuleT", bound=torch.nn.Module)


def resolve_device(name: str | torch.device | None = None) -> torch.device:
    """The device to run on: ``None``/``"auto"`` picks CUDA when present, else the CPU.

    An explicit ``"cuda"`` on a machine without one is an error rather than a silent CPU fallback, so a
    run never takes 100 times longer than its owner planned without saying why.
    """
    if name is None or str(name) in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {name!r} (use 'cpu', 'cuda', 'cuda:N' or 'auto')") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for but CUDA is not available on this machine")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {name!r} is not supported (use 'cpu' or 'cuda')")
    return device


def autocast(device: torch.device, enabled: bool = True) -> ContextManager[object]:
    """bf16 autocast on CUDA (when ``enabled``); float32 everywhere else."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def prepare_module(module: ModuleT, device: torch.device) -> ModuleT:
    """Move a model to ``device``; on CUDA also to channels-last memory, which convolutions prefer."""
    module = module.to(device)
    if device.type == "cuda":
        module = module.to(memory_format=torch.channels_last)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return module


def prepare_input(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move a 4-d batch to ``device`` in the memory format ``prepare_module`` chose."""
    tensor = tensor.to(device, non_blocking=True)
    if device.type == "cuda" and tensor.dim() == 4:
        tensor = tensor.contiguous(memory_format=torch.channels_last)
    return tensor


def maybe_compile(module: torch.nn.Module, device: torch.device, enabled: bool) -> torch.nn.Module:
    """``torch.compile`` the module on CUDA when asked; CPU runs stay eager (compiling costs more than it saves)."""
    if enabled and device.type == "cuda":
        return torch.compile(module)  # type: ignore[return-value]
    return module


def uses_gpu(name: str | None) -> bool:
    """Whether a job asked to run on ``name`` needs a GPU (``None``/``"auto"``: when this machine has one);
    what a backend reserves per worker."""
    if name in (None, "", "auto"):
        return torch.cuda.is_available()
    return str(name).startswith("cuda")
