"""Split one generation job across the processes of a single launch (``accelerate launch``, torchrun).

Rank ``r`` of ``world`` takes the shards ``i`` with ``i % world == r`` that are not written yet, so the
split is fixed by the shard index alone and a relaunch with another number of processes still resumes.
Rank 0 opens the writer first (it records the job in the partial folder), everyone waits, every rank
writes its own shards into the same partial folder, everyone waits again, and rank 0 finalizes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from imgsynth.distributed.generate import finalize_job, finished_set, write_shards_local
from imgsynth.distributed.protocol import ShardGenerator, job_shards
from imgsynth.imageset import ImageSet


def rank_shards(num_shards: int, rank: int, world_size: int) -> list[int]:
    """The shard indices rank ``rank`` of ``world_size`` is responsible for (round robin)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world size), got rank {rank} of {world_size}")
    return list(range(rank, num_shards, world_size))


def generate_on_rank(generator: ShardGenerator, out: str | os.PathLike, *, rank: int, world_size: int,
                     barrier: Callable[[], None], progress: bool = False) -> ImageSet | None:
    """This process's part of a job; rank 0 returns the finished set, other ranks None.

    Every rank must call this with an equivalent generator (only its device may differ) and a
    ``barrier`` that waits for all ranks (``PartialState().wait_for_everyone``).
    """
    out = Path(out).absolute()
    spec = generator.spec(out)
    existing = finished_set(out, spec)  # read-only, so every rank agrees without talking
    if existing is not None:
        return existing if rank == 0 else None
    if rank == 0:
        writer = spec.writer(out)
        prepare = getattr(generator, "prepare_writer", None)
        if prepare is not None:
            prepare(writer)
    barrier()
    if rank != 0:
        writer = spec.writer(out)  # the same job: reuses rank 0's partial folder
    all_shards = job_shards(generator)
    mine = [i for i in rank_shards(len(all_shards), rank, world_size) if i not in writer.done_shards]
    if mine:
        write_shards_local(generator, writer, all_shards, mine, progress=progress and rank == 0)
    barrier()
    return finalize_job(writer, len(all_shards)) if rank == 0 else None
