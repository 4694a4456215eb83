"""The types of a set's metadata columns as its dataset card declares them, for readers that need them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from imgsynth.dataset_card import column_types, hf_features
from imgsynth.imageset import ImageSet

if TYPE_CHECKING:  # pyarrow is imported by the exports that need it, not by everything that lists formats
    import pyarrow as pa


def metadata_types(image_set: ImageSet) -> dict[str, pa.DataType | None]:
    """The type of every metadata column besides file_name and label, as the set's dataset card has them."""
    rows = [r.to_row() for r in image_set.records]
    return column_types(rows, list(dict.fromkeys(c for r in rows for c in r)))


def imagefolder_features(image_set: ImageSet) -> Any:
    """The ``datasets.Features`` of a set, for ``datasets.load_dataset("imagefolder", data_dir=SET,
    features=imagefolder_features(s))``: that packaged form reads no dataset card, so without them
    ``label`` loads as the class name. ``load_dataset(SET)`` reads the card and needs nothing."""
    return hf_features(image_set.classes, metadata_types(image_set))
