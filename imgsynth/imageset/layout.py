"""Where things are in an ImageSet folder, and the hidden folder an unfinished write lives in."""

from __future__ import annotations

from pathlib import Path

from imgsynth.dataset_card import CARD

FORMAT_VERSION = 1
MANIFEST = "imageset.json"
METADATA = "metadata.jsonl"
IMAGES = "images"
JOB = "job.json"  # inside the partial folder: what the unfinished write is for
# Files a finished set may hold at its root besides images/ (verify reports anything else as stray).
ROOT_FILES = (MANIFEST, METADATA, "croissant.json", CARD)


def partial_dir(root: Path) -> Path:
    """The hidden sibling folder ``.<name>.partial`` a set is written in before it is renamed into place."""
    return root.parent / f".{root.name}.partial"


def shard_name(index: int) -> str:
    """The file name of shard ``index``'s committed metadata inside the partial folder's ``shards/``."""
    return f"shard-{index:06d}.jsonl"
