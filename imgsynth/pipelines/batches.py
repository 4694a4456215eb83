"""Seeded training batches shared by the diffusion kinds: derived seeds and weighted batch draws.

Each step's randomness derives from (seed, step) alone, never from a generator's running state, so a
resumed run draws exactly the batches the killed one would have. torch is imported on first use: the
LoRA module that uses this is imported by CLIs that never train.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def derived_seed(namespace: str, *parts: Any) -> int:
    """A 63-bit seed from ``namespace`` and ``parts`` (sha256 of their ``/``-joined strings).

    The namespace keeps two trainers' streams apart (and each one's existing seeds unchanged)."""
    digest = hashlib.sha256("/".join(str(p) for p in (namespace, *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


class WeightedBatchOrder:
    """Step ``s``'s batch for a set with training weights: ``batch_size`` images drawn with replacement, each
    with probability w / Σw (``torch.multinomial``), from a generator seeded by (namespace, seed, step) alone,
    so a resumed run draws exactly the batches the killed one would have."""

    def __init__(self, weights: torch.Tensor, batch_size: int, seed: int,
                 namespace: str = "imgsynth-conditional") -> None:
        self.weights, self.batch_size, self.seed, self.namespace = weights.double(), batch_size, seed, namespace

    def indices(self, step: int) -> torch.Tensor:
        """The (0-based) ``step``'s image indices, a ``batch_size`` long int64 tensor."""
        import torch

        generator = torch.Generator().manual_seed(derived_seed(self.namespace, self.seed, "weighted-batch", step))
        return torch.multinomial(self.weights, self.batch_size, replacement=True, generator=generator)
