"""Run a generation job on a backend: locally in this process, or on a Ray actor pool.

Both backends do the same thing with the same pieces: open the set's writer (which resumes an
unfinished write of the same job), schedule only the shards not yet in ``writer.done_shards``, compute
each shard with ``job.generate`` and commit it with ``writer.write_shard``, then finalize once.
On Ray, a dataset row is one shard (index and its work items), ``map_batches`` sends one row per call to
a fixed pool of actors, each actor loads the model once and writes its shards' PNGs and shard file into
the partial folder itself (the same filesystem: a local disk, or a shared one on a cluster), and returns
only the shard index. The driver then checks every shard is there and writes the manifest.

On the CPU, float results depend on the number of intra-op threads (reductions split differently), so
every backend computes shards with the same ``cpu_threads`` torch threads (default 1: one thread per
worker, as Ray gives a one-CPU actor); sets from different backends and worker counts are then
byte-identical. On CUDA the thread count does not touch the pixels.

A worker that dies mid-shard leaves at most uncommitted images; Ray restarts the actor and retries the
shard, which rewrites the same bytes, and finalize drops anything never committed. If retries run out,
the job stops with the shards written so far kept, and running it again computes only the rest.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any, Sequence

from imgsynth.distributed.backend import (DEFAULT_RETRIES, dataset_of_rows, map_on_actor_pool, ray_session,
                                          require_ray)
from imgsynth.imageset import ImageSet
from imgsynth.pipelines.sharding import (IncompleteGenerationError, SetJob, SetSpec, ShardCallback, decode_items,
                                         encode_items, finalize_job, job_shards, open_job, write_shard,
                                         write_shards)
from imgsynth.pipelines.work import WorkItem

BACKENDS = ("local", "ray")
DEFAULT_CPU_THREADS = 1


def generate(job: SetJob, out: str | os.PathLike, *, backend: str = "local",
             workers: int | None = None, address: str | None = None, retries: int = DEFAULT_RETRIES,
             cpu_threads: int | None = DEFAULT_CPU_THREADS, progress: bool = False,
             on_shard: ShardCallback | None = None) -> ImageSet:
    """Write the job's ImageSet to ``out`` on ``backend`` and return it, resuming an unfinished write.

    ``backend="local"`` computes the shards one after another in this process (``workers`` must be
    None or 1). ``backend="ray"`` uses ``workers`` actors (default: as many as the cluster has CPUs, or
    GPUs when the job needs one) on the Ray cluster at ``address`` (``auto``, ``ray://host:port``),
    on the session already running in this process, or on a local cluster started for this call.
    The set is byte-identical, with the same id, whichever backend and number of workers.
    ``cpu_threads`` is the torch intra-op thread count every worker computes with (None: leave torch's
    setting); on the CPU it is part of what fixes the bytes.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if backend == "local" and workers not in (None, 1):
        raise ValueError(f"the local backend runs one worker (got workers={workers}); use --backend ray, "
                         "or `accelerate launch -m imgsynth.cli.accelerate_launch` for several GPUs")
    if backend == "ray":
        require_ray()  # before loading any model: say how to install it at once
    out = Path(out).absolute()
    spec = job.spec(out)
    writer = open_job(job, out, spec=spec)
    if isinstance(writer, ImageSet):
        return writer
    all_shards = job_shards(job)
    if backend == "local":
        write_shards(job, writer, cpu_threads=cpu_threads, progress=progress, on_shard=on_shard)
    else:
        pending = sorted(set(range(len(all_shards))) - writer.done_shards)
        if pending:
            write_shards_ray(job, spec.for_workers(writer), writer.root, all_shards, pending,
                             workers=workers, address=address, retries=retries, cpu_threads=cpu_threads,
                             progress=progress, on_shard=on_shard)
    return finalize_job(writer, len(all_shards))


class ShardWriterActor:
    """The Ray actor: loads the job's model once, then computes and writes whole shards it is handed."""

    def __init__(self, job: SetJob, spec: SetSpec, out: str, cpu_threads: int | None) -> None:
        self.job = job
        self.job.load()
        self.writer = spec.writer(out, worker=True)
        torch = sys.modules.get("torch")
        if cpu_threads is not None and torch is not None:
            torch.set_num_threads(cpu_threads)  # the actor's process is its own: no need to restore

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[int]]:
        shards_done, images, pids = [], [], []
        for index, items in zip(batch["shard"], batch["items"]):
            index = int(index)
            images.append(write_shard(self.job, self.writer, index, decode_items(str(items))))
            shards_done.append(index)
            pids.append(os.getpid())
        return {"shard": shards_done, "images": images, "pid": pids}


def default_workers(ray: Any, job: SetJob, pending: int, cpus_per_worker: int = 1) -> int:
    """One worker per GPU (GPU jobs) or per ``cpus_per_worker`` CPUs of the cluster, at most one per shard."""
    resources = ray.cluster_resources()
    gpus = float(job.num_gpus or 0)
    capacity = int(resources.get("GPU", 0) // gpus) if gpus else int(resources.get("CPU", 1) // cpus_per_worker)
    return max(1, min(capacity, pending))


def write_shards_ray(job: SetJob, spec: SetSpec, out: Path, all_shards: Sequence[Sequence[WorkItem]],
                     indices: Sequence[int], *, workers: int | None = None, address: str | None = None,
                     retries: int = DEFAULT_RETRIES, cpu_threads: int | None = DEFAULT_CPU_THREADS,
                     progress: bool = False, on_shard: ShardCallback | None = None) -> None:
    """Write the given shards on a Ray actor pool; the driver only schedules and collects shard indices."""
    rows = [{"shard": i, "items": encode_items(all_shards[i])} for i in indices]
    with ray_session(address) as ray:
        # More actors than shards would only load models that never work.
        gpus = float(job.num_gpus or 0)
        cpus = 1 if gpus or cpu_threads is None else cpu_threads  # a CPU worker reserves the cores it computes on
        pool = min(workers or default_workers(ray, job, len(indices), cpus), len(indices))
        results = map_on_actor_pool(
            dataset_of_rows(rows), ShardWriterActor, workers=pool,
            constructor_args=(job, spec, str(out), cpu_threads), num_cpus=cpus, num_gpus=gpus,
            retries=retries, progress=progress)
        try:
            for row in results:
                if on_shard is not None:
                    on_shard(int(row["shard"]), int(row["images"]))
        except Exception as exc:  # Ray wraps worker failures in its own exception types
            raise IncompleteGenerationError(
                f"{out}: the Ray job failed ({_root_cause(exc)}); shards already written are kept, "
                "run the same command again to resume") from exc


def _root_cause(exc: BaseException) -> str:
    """The worker's own error line from Ray's wrapped traceback text, else Ray's first line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    own = [line for line in lines if re.match(r"^[\w.]*(Error|Exception|Exit)\b.*:", line)
           and not line.startswith("ray.")]
    if own:
        return own[-1]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"
