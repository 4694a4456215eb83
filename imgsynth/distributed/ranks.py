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

from imgsynth.distributed.generate import DEFAULT_CPU_THREADS, existing_set, finalize_job, write_shards_local
from imgsynth.pipelines.sharding import ShardGenerator, job_shards
from imgsynth.imageset import ImageSet


def rank_shards(num_shards: int, rank: int, world_size: int) -> list[int]:
    """The shard indices rank ``rank`` of ``world_size`` is responsible for (round robin)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world size), got rank {rank} of {world_size}")
    return list(range(rank, num_shards, world_size))


def generate_on_rank(generator: ShardGenerator, out: str | os.PathLike, *, rank: int, world_size: int,
                     barrier: Callable[[], None], cpu_threads: int | None = DEFAULT_CPU_THREADS,
                     progress: bool = False) -> ImageSet | None:
    """This process's part of a job; rank 0 returns the finished set, other ranks None.

    Every rank must call this with an equivalent generator (only its device may differ) and a
    ``barrier`` that waits for all ranks (``PartialState().wait_for_everyone``). ``cpu_threads`` as in
    :func:`imgsynth.distributed.generate.generate`. Ranks open the job one
    after another (rank 0 first), because opening may claim the partial folder or write a plan file;
    only the shard computation runs concurrently.
    """
    out = Path(out).absolute()
    existing: ImageSet | None = None
    writer = None
    for turn in range(world_size):
        if turn == rank:
            spec = generator.spec(out)
            existing = existing_set(generator, out, spec)  # the same answer on every rank: nothing finalizes before the end
            if existing is None:
                writer = spec.writer(out, worker=rank != 0)
                prepare = getattr(generator, "prepare_writer", None)
                if prepare is not None and rank == 0:
                    prepare(writer)
        barrier()
    all_shards = job_shards(generator)
    if writer is not None:
        mine = [i for i in rank_shards(len(all_shards), rank, world_size) if i not in writer.done_shards]
        if mine:
            write_shards_local(generator, writer, all_shards, mine, cpu_threads=cpu_threads,
                               progress=progress and rank == 0)
    barrier()
    if rank != 0:
        return None
    return existing if writer is None else finalize_job(writer, len(all_shards))
