"""Split one generation job across the processes of a single launch (``accelerate launch``, torchrun).

Rank ``r`` of ``world`` takes the shards ``i`` with ``i % world == r`` that are not written yet, so the
split is fixed by the shard index alone and a relaunch with another number of processes still resumes.
Ranks open the job in turn, rank 0 first (it records the job in the partial folder), every rank writes
its own shards into the same partial folder, everyone waits, and rank 0 finalizes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from imgsynth.distributed.generate import DEFAULT_CPU_THREADS
from imgsynth.imageset import ImageSet, ImageSetWriter
from imgsynth.pipelines.sharding import SetJob, finalize_job, job_shards, open_job, write_shards


def rank_shards(num_shards: int, rank: int, world_size: int) -> list[int]:
    """The shard indices rank ``rank`` of ``world_size`` is responsible for (round robin)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world size), got rank {rank} of {world_size}")
    return list(range(rank, num_shards, world_size))


def generate_on_rank(job: SetJob, out: str | os.PathLike, *, rank: int, world_size: int,
                     barrier: Callable[[], None], cpu_threads: int | None = DEFAULT_CPU_THREADS,
                     progress: bool = False) -> ImageSet | None:
    """This process's part of a job; rank 0 returns the finished set, other ranks None.

    Every rank must call this with an equivalent job (only its device may differ) and a
    ``barrier`` that waits for all ranks (``PartialState().wait_for_everyone``). ``cpu_threads`` as in
    :func:`imgsynth.distributed.generate.generate`. Ranks open the job one
    after another (rank 0 first), because opening may claim the partial folder or write a plan file;
    only the shard computation runs concurrently.
    """
    out = Path(out).absolute()
    opened: ImageSet | ImageSetWriter | None = None
    for turn in range(world_size):
        if turn == rank:
            # The same answer on every rank: nothing finalizes before the end.
            opened = open_job(job, out, worker=rank != 0, prepare=rank == 0)
        barrier()
    num_shards = len(job_shards(job))
    if isinstance(opened, ImageSetWriter):
        mine = rank_shards(num_shards, rank, world_size)
        write_shards(job, opened, mine, cpu_threads=cpu_threads, progress=progress and rank == 0)
    barrier()
    if rank != 0:
        return None
    return opened if isinstance(opened, ImageSet) else finalize_job(opened, num_shards)
