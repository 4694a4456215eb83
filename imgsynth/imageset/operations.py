"""Operations that make one set out of several."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any, Iterator, Mapping, Sequence

from imgsynth.errors import ImageSetError
from imgsynth.imageset.records import WEIGHT_COLUMN, Sample
from imgsynth.imageset.sets import ImageSet, ImageSetWriter


def concatenate(sets: Sequence[ImageSet], out: str | os.PathLike, *, kind: str = "mixed",
                config: Mapping[str, Any] | None = None, indices: Sequence[Sequence[int] | None] | None = None,
                weights: Sequence[float] | None = None) -> ImageSet:
    """Join sets (e.g. real + all earlier generations for ``accumulate`` loops) into a new set.

    Classes are the union (indexed in sorted order, displayed in first-seen order); image ids are
    prefixed with the parent's short id so files from different parents never clash. ``indices`` (one
    entry per set, None: all of it) picks images of each set; ``weights`` (one per set) gives every image
    of a set that training weight (the ``weight`` column, :data:`~imgsynth.imageset.records.WEIGHT_COLUMN`);
    without it the rows are copied as they are (a weight they carry is kept).
    """
    if not sets:
        raise ImageSetError(f"{out}: nothing to concatenate")
    if indices is not None and len(indices) != len(sets) or weights is not None and len(weights) != len(sets):
        raise ImageSetError(f"{out}: indices and weights need one entry per set ({len(sets)})")
    classes: list[str] = []
    for s in sets:
        classes.extend(c for c in s.display_order if c not in classes)
    licenses = [s.manifest.get("license") for s in sets]
    writer = ImageSetWriter(out, classes, kind=kind, parents=list(sets), config=config,
                            license={"name": "mixed", "parts": licenses})

    def samples() -> Iterator[Sample]:
        for i, s in enumerate(sets):
            chosen = range(len(s)) if indices is None or indices[i] is None else indices[i]
            for sample in s._samples(chosen, prefix=f"{s.id[:8]}_"):
                yield sample if weights is None else replace(sample, extra={**sample.extra,
                                                                            WEIGHT_COLUMN: float(weights[i])})

    writer.write_all(samples())
    return writer.finalize()
