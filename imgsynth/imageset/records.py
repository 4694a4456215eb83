"""What is written and read per image: a :class:`Sample` to write, an :class:`ImageRecord` per metadata row."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from PIL import Image

# Columns every metadata row carries, in this order; generators add their own after these.
BASE_COLUMNS = ("file_name", "label", "caption", "seed", "sha256")


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
