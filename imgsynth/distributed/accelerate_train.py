"""Data-parallel training under ``accelerate launch`` (or torchrun): one process per GPU, one model.

    accelerate launch --num_processes 4 -m imgsynth train SET OUT --preset cifar32-gpu

``imgsynth train`` notices the launcher (``WORLD_SIZE`` > 1) and hands :func:`imgsynth.pipelines.conditional.train`
an :class:`AccelerateDataParallel`: accelerate sets up the process group (NCCL on GPUs, gloo on CPUs) and
wraps the UNet in DistributedDataParallel. Every process draws the noise of the whole global batch from
the step's seed and computes its rows, so 1, 2 or N processes train the same model up to float summation
order, and a run checkpointed with N processes resumes with any other number.
On a machine without GPUs, ``torchrun --nproc_per_node N -m imgsynth train …`` runs N CPU processes.
"""

from __future__ import annotations

import os

import torch


def launched_on_cpu() -> bool:
    """Whether the launch asked for CPUs (``accelerate launch --cpu``) or the machine has no GPU.

    PartialState reads ``ACCELERATE_USE_CPU`` only through Accelerator, so both entry points ask here.
    """
    return os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") or not torch.cuda.is_available()


def launched_world_size() -> int:
    """How many processes the surrounding launcher started (1 when run directly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


class AccelerateDataParallel:
    """:class:`imgsynth.pipelines.conditional.DataParallel` on accelerate's process group."""

    def __init__(self, cpu: bool | None = None) -> None:
        from accelerate import Accelerator

        self.accelerator = Accelerator(cpu=launched_on_cpu() if cpu is None else cpu)
        self.rank = self.accelerator.process_index
        self.world_size = self.accelerator.num_processes

    @property
    def device(self) -> torch.device:
        """This process's device (``cuda:<local rank>`` on GPUs, plain ``cpu`` otherwise)."""
        device = self.accelerator.device
        return torch.device("cpu") if device.type == "cpu" else device  # accelerate says "cpu:0" under gloo

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """DistributedDataParallel around ``module`` (unchanged when there is one process)."""
        return self.accelerator.prepare_model(module, device_placement=False)

    def barrier(self) -> None:
        """Wait for every process."""
        self.accelerator.wait_for_everyone()

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """``value`` averaged over processes."""
        return self.accelerator.reduce(value, reduction="mean")
