"""How torch computes here, decided in one place: the device, the intra-op thread count, matmul precision.

Every setting is scoped: a context manager sets it and puts back what was there, so importing or calling
imgsynth never leaves a notebook's torch configured differently (no global switch at import or in a
model's preparation). torch is imported only when a function needs it, so light modules can import this.
"""

from __future__ import annotations

import contextlib
import sys
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    import torch


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
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for but CUDA is not available on this machine")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {name!r} is not supported (use 'cpu' or 'cuda')")
    return device


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
