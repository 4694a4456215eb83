"""The one place imgsynth touches Ray's API, so that its moving parts change in one file.

Ray is an optional extra (``pip install 'imgsynth[ray]'``); :func:`require_ray` turns its absence into
an error that says so. :func:`ray_session` connects to a cluster (``auto``, ``ray://host:port``) or
starts a local one, and shuts down only what it started (``ray://`` addresses need Ray Client,
``pip install 'ray[client]'``). :func:`map_on_actor_pool` runs a callable class
over a dataset on a fixed-size actor pool, one instance (one loaded model) per actor: Ray Data ≥ 2.10
takes ``compute=ActorPoolStrategy(size=n)`` and deprecates ``concurrency=``; older releases took
``compute=ActorPoolStrategy(min_size, max_size)`` or ``concurrency=n``. Actor restarts and task
retries are bounded, so a worker that dies mid-shard is replaced and its shard recomputed, while a
shard that kills every worker it meets fails the job instead of looping.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import warnings
from typing import Any, Iterator, Mapping, Sequence

INSTALL_HINT = "the Ray backend needs Ray Data: pip install 'imgsynth[ray]'"
DEFAULT_RETRIES = 3


class RayNotInstalled(ImportError, ValueError):
    """Ray (with Ray Data) is not importable; the message says how to install the extra.

    Also a ValueError: asking for ``--backend ray`` where Ray is missing is a usage error, which the
    CLI reports as one line (``error: …``) rather than a traceback.
    """


def require_ray() -> Any:
    """Import and return ``ray`` with ``ray.data``, or raise :class:`RayNotInstalled` with the install hint."""
    try:
        import ray
        import ray.data  # noqa: F401  (the extra is ray[data]; plain ray lacks it)
    except ImportError as exc:
        raise RayNotInstalled(f"{INSTALL_HINT} ({exc})") from exc
    return ray


@contextlib.contextmanager
def ray_session(address: str | None = None, *, num_cpus: int | None = None,
                num_gpus: int | None = None, log_to_driver: bool = True) -> Iterator[Any]:
    """Use the running Ray session, or connect to ``address`` (``auto`` / ``ray://…``; else ``RAY_ADDRESS``), or
    start a local one (never joining a cluster merely because one runs on this machine).

    A session this function started is shut down on exit; one that was already running (a notebook,
    a test fixture, a job submitted to a cluster) is left alone. ``log_to_driver``: whether the workers' output
    (Ray's state dumps and worker-pool lines among it) is copied to this terminal.
    """
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    options: dict[str, Any] = {"include_dashboard": False, "configure_logging": False,
                               "log_to_driver": log_to_driver}
    with contextlib.ExitStack() as stack:
        if not log_to_driver:
            stack.enter_context(_no_cluster_messages(ray))
        yield from _session(ray, address, num_cpus, num_gpus, options)


@contextlib.contextmanager
def _no_cluster_messages(ray: Any) -> Iterator[None]:
    """Keep the cluster's own messages (a raylet's death notice with its last log lines, autoscaler events) out
    of this terminal for the session. Ray prints them from a driver thread whatever ``log_to_driver`` says,
    through ``ray._private.worker.print_to_stdstream``; that private name is replaced for the session where
    this Ray release has it (they stay in the cluster's session logs)."""
    worker = getattr(getattr(ray, "_private", None), "worker", None)
    original = getattr(worker, "print_to_stdstream", None)
    if original is None:
        yield
        return

    def drop(data: Any, ignore_prefix: bool) -> None:
        """Ray's message, not shown."""

    worker.print_to_stdstream = drop
    try:
        yield
    finally:
        worker.print_to_stdstream = original


def _session(ray: Any, address: str | None, num_cpus: int | None, num_gpus: int | None,
             options: dict[str, Any]) -> Iterator[Any]:
    # Ray's own convention: a job submitted to a cluster finds it in RAY_ADDRESS.
    named_by = "--address"
    if not address and os.environ.get("RAY_ADDRESS"):
        address, named_by = os.environ["RAY_ADDRESS"], "RAY_ADDRESS"
    if address:
        try:
            ray.init(address=address, **options)
        except ConnectionError as exc:  # a usage error: say what to do rather than print a traceback
            raise ValueError(f"no Ray cluster at {named_by} {address} ({exc}); start one with `ray start --head`, "
                             "or leave --address out to run on a local cluster started for this command") from exc
    else:
        # "local", not None: given None, ray.init joins whichever cluster `ray start` (or another process's
        # ray.cluster_utils.Cluster) last started on this machine, and then refuses num_cpus. A command run
        # without --address starts its own instance, as its help says.
        ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, **options)
    try:
        yield ray
    finally:
        ray.shutdown()


def dataset_of_rows(rows: Sequence[Mapping[str, Any]]) -> Any:
    """A Ray dataset with one block per row, so the scheduler can hand every row to a different actor."""
    ray = require_ray()
    rows = [dict(r) for r in rows]
    parameters = inspect.signature(ray.data.from_items).parameters
    if "override_num_blocks" in parameters:
        return ray.data.from_items(rows, override_num_blocks=len(rows))
    return ray.data.from_items(rows, parallelism=len(rows))  # Ray < 2.9


def actor_pool_strategy(workers: int) -> Any:
    """A fixed-size actor pool of ``workers`` actors, in whatever form this Ray release accepts."""
    ray = require_ray()
    parameters = inspect.signature(ray.data.ActorPoolStrategy.__init__).parameters
    if "size" in parameters:
        return ray.data.ActorPoolStrategy(size=workers)
    return ray.data.ActorPoolStrategy(min_size=workers, max_size=workers)


def map_on_actor_pool(dataset: Any, worker_class: type, *, workers: int,
                      constructor_args: Sequence[Any] = (), num_cpus: float = 1, num_gpus: float = 0,
                      retries: int = DEFAULT_RETRIES, progress: bool = False) -> Iterator[dict[str, Any]]:
    """Run ``worker_class(*constructor_args)`` on ``workers`` actors over ``dataset``, one row per call.

    Yields the output rows as they complete (in any order). A dead actor is restarted up to
    ``retries`` times and its unfinished call retried up to ``retries`` times.
    """
    ray = require_ray()
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    options: dict[str, Any] = dict(batch_size=1, fn_constructor_args=tuple(constructor_args), num_cpus=num_cpus)
    if num_gpus:
        options["num_gpus"] = num_gpus
    parameters = inspect.signature(dataset.map_batches).parameters
    if "compute" in parameters and hasattr(ray.data, "ActorPoolStrategy"):
        options["compute"] = actor_pool_strategy(workers)
    else:  # a release that only knows concurrency=
        options["concurrency"] = workers
    fault_tolerance = {"max_restarts": retries, "max_task_retries": retries}
    takes_extra_remote_args = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    if all(name in parameters for name in fault_tolerance) or takes_extra_remote_args:
        options.update(fault_tolerance)
    # else: a release without either; Ray Data's own default is unbounded restarts and retries.
    with warnings.catch_warnings():
        # Ray 2.60 deprecates extra remote args in favour of named ones it does not have yet for these two.
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
        mapped = dataset.map_batches(worker_class, **options)
    context = ray.data.DataContext.get_current()
    shown = context.enable_progress_bars
    context.enable_progress_bars = progress
    try:
        for row in mapped.iter_rows():
            yield {key: _plain(value) for key, value in row.items()}
    finally:
        context.enable_progress_bars = shown


def _plain(value: Any) -> Any:
    """numpy scalars from Ray's batches as Python values."""
    return value.item() if hasattr(value, "item") and getattr(value, "ndim", 1) == 0 else value
