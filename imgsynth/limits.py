"""Upper bounds on the counts a user gives (images per class, batch sizes, steps, classes, widths).

Counts past these are typing slips, not experiments: work lists and batches are built whole in memory, so
an absurd count would allocate for minutes before failing. Every reader of such a count (recipes, CLI flags,
library entry points, the kinds' options, the classifier's config) checks it against these, before anything
is allocated; what a bound leaves open (a model's total size) is checked against the memory estimate of the
model (``pipelines/conditional/config.py`` ``estimate_size``, ``classifier/architectures.py``).
"""

from __future__ import annotations

import operator

MAX_PER_CLASS = 1_000_000
MAX_BATCH_SIZE = 65_536
MAX_STEPS = 10_000_000
MAX_EPOCHS = 10_000
# ImageNet-21k has ~22k classes; a label space past this is a damaged file, not a data set.
MAX_CLASSES = 100_000
# Parameters of any model imgsynth builds (the largest shipped presets have well under 1e9).
MAX_PARAMETERS = 2_000_000_000
# The largest image side imgsynth trains or samples: sets are held in memory whole (1024 px RGB is 3 MB).
MAX_IMAGE_SIZE = 1024
# A text-to-image pipeline's output side (SDXL-class models sample 1024 px; some upscale-trained ones 2048).
MAX_PIPELINE_SIDE = 4096
MAX_LORA_RANK = 1024


def check_count(name: str, value: int, high: int, low: int = 1) -> int:
    """``value`` when it is a whole number in ``[low, high]``; else ``ValueError`` naming ``name`` and the bound."""
    try:
        if isinstance(value, bool):
            raise TypeError
        value = operator.index(value)  # numpy integers too
    except TypeError:
        raise ValueError(f"{name} must be a whole number in [{low}, {high}], got {value!r}") from None
    if value < low:
        raise ValueError(f"{name} must be at least {low}, got {value}")
    if value > high:
        raise ValueError(f"{name} must be at most {high}, got {value}")
    return value
