"""Operations that make one set out of several."""

from __future__ import annotations

import os
from typing import Any, Iterator, Mapping, Sequence

from imgsynth.errors import ImageSetError
from imgsynth.imageset.records import Sample
from imgsynth.imageset.sets import ImageSet, ImageSetWriter


def concatenate(sets: Sequence[ImageSet], out: str | os.PathLike, *, kind: str = "mixed",
                config: Mapping[str, Any] | None = None) -> ImageSet:
    """Join sets (e.g. real + all earlier generations for ``accumulate`` loops) into a new set.

    Classes are the union (indexed in sorted order, displayed in first-seen order); image ids are
    prefixed with the parent's short id so files from different parents never clash.
    """
    if not sets:
        raise ImageSetError(f"{out}: nothing to concatenate")
    classes: list[str] = []
    for s in sets:
        classes.extend(c for c in s.display_order if c not in classes)
    licenses = [s.manifest.get("license") for s in sets]
    writer = ImageSetWriter(out, classes, kind=kind, parents=list(sets), config=config,
                            license={"name": "mixed", "parts": licenses})

    def samples() -> Iterator[Sample]:
        for s in sets:
            yield from s._samples(range(len(s)), prefix=f"{s.id[:8]}_")

    writer.write_all(samples())
    return writer.finalize()
