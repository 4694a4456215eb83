"""Row blocks and progress for metrics over large feature sets (50,000 × 2048 and beyond).

Every metric that walks a whole feature set does it in blocks of rows, converting one block at a time to
float64 (a 50,000 × 2048 float32 set is 400 MB; a float64 copy of it would be 800 MB more), so memory
stays the features plus a few blocks. A set that fits in one block is computed by literally the same
code with one block, which is how small sets (the experiment loop's) keep their numbers bit for bit.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tqdm import tqdm

# Bytes of one float64 block of rows: large enough that GEMMs on it run at full speed, small enough that a
# handful of them stay far below the features themselves.
BLOCK_BYTES = 64 * 2**20


def block_rows(width: int, rows: int | None = None, itemsize: int = 8) -> int:
    """Rows per block: ``rows`` when given (must be ≥ 1), else as many ``width``-wide rows as fill
    ``BLOCK_BYTES`` at ``itemsize`` bytes an element."""
    if rows is not None:
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
            raise ValueError(f"block rows must be a positive integer, got {rows!r}")
        return rows
    return max(1, BLOCK_BYTES // (max(1, width) * itemsize))


def row_blocks(n: int, rows: int) -> Iterator[slice]:
    """Consecutive slices of ``rows`` rows (the last one shorter) covering ``range(n)``."""
    for start in range(0, n, rows):
        yield slice(start, min(start + rows, n))


def block_count(n: int, rows: int) -> int:
    """How many blocks ``row_blocks(n, rows)`` yields."""
    return -(-n // rows)


AUTO_DELAY = 2.0  # seconds: a metric that finishes sooner never shows a bar unless asked to


def progress_bar(total: int, desc: str, enabled: bool | None, unit: str = "block") -> tqdm:
    """The project's progress bar (tqdm on stderr), shown only while it runs (``leave=False``: a table of
    metrics is not followed by a trail of finished bars).

    ``enabled``: True shows it, False never; None (the metrics' default) shows it when stderr is a terminal
    and the work has taken longer than ``AUTO_DELAY``, so a 50,000-image evaluation shows where it is and
    the many small ones of an experiment print nothing.
    """
    from tqdm.auto import tqdm

    delay = 0.0
    if enabled is None:
        enabled, delay = sys.stderr.isatty(), AUTO_DELAY
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, leave=False, delay=delay,
                dynamic_ncols=True)
