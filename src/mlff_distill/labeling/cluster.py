"""Where labeling runs: a Dask local cluster of single-threaded workers pinned to cores, an existing
Dask scheduler, or SLURM batch jobs through dask-jobqueue."""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
from typing import Iterator

from distributed import Client, LocalCluster, WorkerPlugin

# Each worker is a single-threaded process: keep XLA's Eigen off the other workers' cores
# (distributed already sets OMP_NUM_THREADS=1). JAX still keeps a second thread busy (dispatch and
# spin-waiting), so local workers are also pinned to one core each (`CorePinning`): pinned, one
# ANI-1x worker labels as fast and leaves the other cores to the other workers.
WORKER_ENV = {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false"}


SCHEDULER_KINDS = ("local", "address", "slurm")

# The keys of ``label:`` that say where the shards are labeled, not what labels they get: the label
# rule leaves them out of its params, so that editing them reruns nothing.
WHERE_KEYS = ("workers", "scheduler")

# Up to this many cores, a label job labels its shards in its own process rather than on Dask
# workers: each worker starts Python, imports the teacher's libraries and compiles the teacher's
# shapes on its own, which on 2 cores cost more than the second worker gains (measured on the
# default's labels: 1,200 structures in 52 s in one process against 79 s on two workers; 320
# on-policy boxes in 32 s against 59 s; docs/measurements.md).
IN_PROCESS_MAX_CORES = 2


JOBQUEUE_PIN = "dask-jobqueue==0.9.0"


def checked_scheduler(scheduler: dict | None) -> dict:
    """``scheduler`` with its kind checked (None means ``{"kind": "local"}``)."""
    scheduler = dict(scheduler or {"kind": "local"})
    kind = scheduler.get("kind", "local")
    if kind not in SCHEDULER_KINDS:
        raise ValueError(f"scheduler kind {kind!r} is not one of {', '.join(SCHEDULER_KINDS)}")
    if kind == "address" and not scheduler.get("address"):
        raise ValueError("scheduler kind 'address' needs 'address' (e.g. tcp://host:8786)")
    if kind == "slurm" and int(scheduler.get("jobs", 1)) < 1:
        raise ValueError(f"scheduler kind 'slurm': jobs must be at least 1, got {scheduler['jobs']}")
    return {**scheduler, "kind": kind}


def local_workers(workers: int | None, cores: int) -> int:
    """Dask workers for a label job with ``cores`` cores: ``workers`` where it is set (0: the
    job's own process); when it is None, one per core, or 0 up to `IN_PROCESS_MAX_CORES` cores."""
    if workers is not None:
        return workers
    return 0 if cores <= IN_PROCESS_MAX_CORES else cores


def in_this_process(scheduler: dict | None, n_workers: int) -> bool:
    """Whether shards are labeled in the calling process: a local scheduler with no workers."""
    return checked_scheduler(scheduler)["kind"] == "local" and n_workers <= 0


@contextlib.contextmanager
def open_client(scheduler: dict | None, n_workers: int, env: dict[str, str]) -> Iterator:
    """A Dask ``Client`` for ``scheduler``, closed (with any cluster it started) on exit.

    - ``local`` (or None): a LocalCluster of ``n_workers`` single-threaded processes with ``env``.
    - ``address``: connects to the running scheduler at ``scheduler["address"]``; its workers keep
      their own environment (``env`` is not applied) and must import this package.
    - ``slurm``: `slurm_cluster` scaled to ``scheduler["jobs"]`` jobs (default 1); ``n_workers`` is
      not used.
    """
    scheduler = checked_scheduler(scheduler)
    if scheduler["kind"] == "address":
        with Client(scheduler["address"], timeout=scheduler.get("timeout", "30s")) as client:
            yield client
        return
    if scheduler["kind"] == "slurm":
        with slurm_cluster(scheduler, env) as cluster:
            cluster.scale(jobs=int(scheduler.get("jobs", 1)))
            with Client(cluster) as client:
                yield client
        return
    with (
        LocalCluster(
            n_workers=max(1, n_workers),
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.WARNING,
            env=env,
        ) as cluster,
        Client(cluster) as client,
    ):
        pin_workers_to_cores(client)
        yield client


def confine_to_cores(n_cores: int) -> list[int]:
    """Confine this process (every thread it has, and those it starts later) to the first
    ``n_cores`` cores of its affinity, where it has more; return the cores it may run on.

    For labeling in the job's own process: XLA sizes its thread pool by the process's affinity
    when JAX starts, whatever torch's threads are, so that a label job given 2 of a machine's 16
    cores would otherwise compute on all 16. The affinity is the way JAX's developers give to cap
    it (jax-ml/jax issue 1539); call this before the teacher is loaded."""
    if not hasattr(os, "sched_getaffinity"):
        return []
    cores = sorted(os.sched_getaffinity(0))
    if n_cores < 1 or len(cores) <= n_cores:
        return cores
    kept = set(cores[:n_cores])
    for thread_id in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(thread_id), kept)
    return sorted(kept)


def pin_workers_to_cores(client) -> None:
    """Pin each worker of a local cluster to its own core, if there are at least as many cores
    (this process's affinity) as workers; otherwise leave them unpinned."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    n_workers = len(client.scheduler_info()["workers"])
    if 1 <= n_workers <= len(cores):
        client.register_plugin(CorePinning(cores), name="mlff-distill-core-pinning")


class CorePinning(WorkerPlugin):
    """Dask worker plugin: pins every thread of worker ``name`` (0, 1, ... in a LocalCluster) to
    core ``cores[name % len(cores)]``; threads started later inherit the affinity."""

    def __init__(self, cores: list[int]):
        self.cores = list(cores)

    def setup(self, worker) -> None:
        try:
            core = self.cores[int(worker.name) % len(self.cores)]
        except (TypeError, ValueError):
            return  # not a LocalCluster worker: leave it to its own scheduler
        for thread_id in os.listdir("/proc/self/task"):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(int(thread_id), {core})


def slurm_cluster(scheduler: dict, env: dict[str, str] | None = None):
    """A ``dask_jobqueue.SLURMCluster`` from ``scheduler`` (not scaled: nothing is submitted).

    Every key but ``kind``, ``jobs`` and ``timeout`` is passed to SLURMCluster (``cores``,
    ``memory``, ``walltime``, ``queue``, ``account``, ``job_extra_directives``, ...).
    ``processes`` defaults to ``cores`` (single-threaded workers, like the local cluster); ``env``
    is exported in the job script before the workers start.
    """
    try:  # an optional dependency, for SLURM users only
        from dask_jobqueue import SLURMCluster
    except ImportError as error:
        raise ImportError(
            f"scheduler kind 'slurm' needs dask-jobqueue: pip install {JOBQUEUE_PIN} ({error})"
        ) from error
    options = {k: v for k, v in scheduler.items() if k not in ("kind", "jobs", "timeout")}
    if "cores" in options:
        options.setdefault("processes", options["cores"])
    exports = [f"export {name}={shlex.quote(value)}" for name, value in (env or {}).items()]
    options["job_script_prologue"] = exports + list(options.get("job_script_prologue", []))
    return SLURMCluster(**options)
