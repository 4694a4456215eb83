"""What is written and read per image: a :class:`Sample` to write, an :class:`ImageRecord` per metadata row."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

# Columns every metadata row carries, in this order; generators add their own after these.
BASE_COLUMNS = ("file_name", "label", "caption", "seed", "sha256")
# An optional column: the image's training weight (a finite number ≥ 0; relative, so only ratios matter).
# A set without it trains as before; the generator kinds that fit honour it (see ``training_weights``).
WEIGHT_COLUMN = "weight"


@dataclass(frozen=True)
class Sample:
    """One image to be written: pixels (a PIL image or already-encoded PNG bytes) and its labels."""

    image: Image.Image | bytes
    label: str
    caption: str = ""
    seed: int | None = None
    image_id: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ImageRecord:
    """One row of ``metadata.jsonl``."""

    file_name: str
    label: str
    caption: str
    seed: int | None
    sha256: str
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_row(self) -> dict[str, Any]:
        return {"file_name": self.file_name, "label": self.label, "caption": self.caption,
                "seed": self.seed, "sha256": self.sha256, **self.extra}

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> ImageRecord:
        extra = {k: v for k, v in row.items() if k not in BASE_COLUMNS}
        return cls(file_name=row["file_name"], label=row["label"], caption=row.get("caption") or "",
                   seed=row.get("seed"), sha256=row["sha256"], extra=extra)


def training_weights(records: Sequence[ImageRecord], where: str) -> np.ndarray | None:
    """Every image's training weight (float64, in row order), or None when no row has a ``weight``.

    A set that has the column must give every row one (a finite number ≥ 0, checked per row when the set is
    opened) and they must not all be zero; otherwise one ``ImageSetError`` naming ``where``.
    """
    from imgsynth.errors import ImageSetError

    values = [r.extra.get(WEIGHT_COLUMN) for r in records]
    if all(v is None for v in values):
        return None
    missing = sum(v is None for v in values)
    if missing:
        raise ImageSetError(f"{where}: {missing} of {len(values)} rows have no {WEIGHT_COLUMN!r}; a set with "
                            "training weights needs one on every row")
    weights = np.asarray(values, dtype=np.float64)
    if not weights.sum() > 0:
        raise ImageSetError(f"{where}: every {WEIGHT_COLUMN!r} is 0; at least one image must carry weight")
    return weights


def weights_digest(weights: np.ndarray) -> str:
    """The sha256 of a set's training weights (float64, row order): what tells two weightings of one set apart
    (a set's id covers its images and labels only), for a fit's record of what it was fitted to."""
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(weights, dtype="<f8").tobytes()).hexdigest()
