"""Where a pipeline runs and in which precision: one place for the CUDA/CPU differences.

On CUDA, models run under bf16 autocast with channels-last memory and may be compiled (TF32 is allowed
only inside :func:`imgsynth.compute.fast_matmul` blocks); on the CPU they run in float32, eagerly, so
results are deterministic and do not depend on an accelerator's kernels. Pipelines ask this module (and
:mod:`imgsynth.compute`, which decides the device) rather than testing ``torch.cuda.is_available()``.
"""

from __future__ import annotations

import contextlib
from typing import ContextManager, TypeVar

import torch

ModuleT = TypeVar("ModuleT", bound=torch.nn.Module)


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
