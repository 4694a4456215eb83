"""Seeded, stratified splits of a labeled collection (which indices go to which part)."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def stratified_split_indices(labels: Sequence[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split indices so each class sends round(fraction * n_c) items (at least 1 when n_c ≥ 2) to the second part."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"split fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    labels_arr = np.asarray(labels)
    first: list[int] = []
    second: list[int] = []
    for label in sorted(set(labels_arr.tolist())):
        members = np.flatnonzero(labels_arr == label)
        members = members[rng.permutation(len(members))]
        k = int(round(fraction * len(members)))
        if len(members) >= 2:
            k = min(max(k, 1), len(members) - 1)
        second.extend(members[:k].tolist())
        first.extend(members[k:].tolist())
    return sorted(first), sorted(second)
