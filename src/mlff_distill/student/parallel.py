"""Data-parallel training in several local processes (``torch.distributed`` over gloo).

The small student trains fastest on one CPU thread (intra-op threads cost more than they give on
its small tensors), so on a machine with more cores `train_in_processes` starts
``train.processes`` worker processes, each pinned to its own core (with ``train.threads``
threads, default 1). Every worker runs the same training
(`mlff_distill.train.fit`) on its share of each epoch's batches and of the validation
structures; after every backward pass
`average_gradients` makes the gradients (and whether time is up) the same in all of them, so their
weights stay identical step by step and the result is reproducible. Rank 0 saves the resumable
state and reports each epoch; every rank writes its final weights, and the parent checks that they
agree.

Workers are fresh interpreters that call `run_worker` (not forks or spawns of the caller), so
they work from a Snakemake script job, whose ``__main__`` a spawned process could not import.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import torch
import torch.distributed as dist


# How long a process waits for the others at the rendezvous and at each all-reduce; the longest
# normal wait is one process compiling the training loss before the other (about a minute).
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=10)


def world() -> tuple[int, int]:
    """``(rank, size)`` of this process's process group; ``(0, 1)`` outside one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def average_gradients(parameters: Iterable[torch.nn.Parameter], stop: bool) -> bool:
    """Replace every gradient by its mean over the processes, in one all-reduce that also carries
    ``stop``; returns True if any process asked to stop."""
    parameters = [p for p in parameters if p.grad is not None]
    flat = torch.cat([p.grad.reshape(-1) for p in parameters] + [torch.tensor([float(stop)], dtype=parameters[0].dtype)])
    dist.all_reduce(flat)
    size, offset = dist.get_world_size(), 0
    for p in parameters:
        p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad) / size)
        offset += p.numel()
    return bool(flat[-1] > 0)


def sum_over_processes(values: dict[str, float]) -> dict[str, float]:
    """Each value summed over the processes (float64)."""
    summed = torch.tensor(list(values.values()), dtype=torch.float64)
    dist.all_reduce(summed)
    return dict(zip(values, summed.tolist()))


def agree_on_time(epoch_seconds: float, seconds_left: float) -> tuple[float, float]:
    """The longest epoch time (s) and the shortest time left (s) over the processes, so that all
    of them shorten the learning-rate schedule alike."""
    values = torch.tensor([epoch_seconds, -seconds_left], dtype=torch.float64)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return float(values[0]), -float(values[1])


def train_in_processes(config: dict, store: Path, state_path: Path, processes: int, logger: logging.Logger,
                       on_epoch: Optional[Callable[[int, dict], None]] = None) -> tuple[dict, dict, dict[str, Any]]:
    """Run `mlff_distill.train.fit` in ``processes`` workers; returns the trained weights
    (``state_dict``), the history and the data facts of `fit`. ``on_epoch(epoch, metrics)`` is
    called here as rank 0 reports epochs. Worker logs go to ``<state_path dir>/rank-<r>.log``.
    Raises ``RuntimeError`` with the end of its log if a worker fails (the others are stopped)."""
    state_path = Path(state_path).resolve()  # the rendezvous is a file:// URL: absolute paths only
    state_path.parent.mkdir(parents=True, exist_ok=True)
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    with tempfile.TemporaryDirectory(dir=state_path.parent, prefix=".parallel-") as scratch:
        scratch = Path(scratch)
        job = {"config": config, "store": str(Path(store).resolve()), "state_path": str(state_path.resolve()),
               "processes": processes, "cores": cores if len(cores) >= processes else [],
               "rendezvous": f"file://{scratch / 'rendezvous'}", "epochs_file": str(scratch / "epochs.jsonl"),
               "results": str(scratch / "result-{rank}.pt"), "log": str(state_path.parent / "rank-{rank}.log")}
        (scratch / "job.json").write_text(json.dumps(job))
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        command = f"from {__name__} import run_worker; run_worker({str(scratch / 'job.json')!r}, {{rank}})"
        workers = [subprocess.Popen([sys.executable, "-c", command.format(rank=rank)], env=env)
                   for rank in range(processes)]
        logger.info("training in %d processes (logs %s)", processes, job["log"].format(rank="*"))
        reported = 0
        try:
            while True:
                reported = _report_epochs(Path(job["epochs_file"]), reported, on_epoch)
                codes = [w.poll() for w in workers]
                failed = [rank for rank, code in enumerate(codes) if code not in (None, 0)]
                if failed:
                    log = Path(job["log"].format(rank=failed[0]))
                    tail = log.read_text()[-2000:] if log.exists() else ""
                    raise RuntimeError(f"training process {failed[0]} exited with {codes[failed[0]]}:\n{tail}")
                if all(code == 0 for code in codes):
                    break
                time.sleep(0.5)
        finally:
            for worker in workers:
                if worker.poll() is None:
                    worker.kill()
                    worker.wait()
        _report_epochs(Path(job["epochs_file"]), reported, on_epoch)
        results = [torch.load(job["results"].format(rank=rank), weights_only=True) for rank in range(processes)]
    for rank, result in enumerate(results[1:], start=1):
        if any(not torch.equal(result["model"][name], value) for name, value in results[0]["model"].items()):
            raise RuntimeError(f"training process {rank} ended with other weights than process 0")
    return results[0]["model"], results[0]["history"], results[0]["info"]


def _report_epochs(path: Path, reported: int, on_epoch: Optional[Callable[[int, dict], None]]) -> int:
    """Pass the complete lines of ``path`` after the first ``reported`` to ``on_epoch``; the new count."""
    if not path.exists():
        return reported
    lines = path.read_text().split("\n")[:-1]  # the last piece may be a line still being written
    for line in lines[reported:]:
        metrics = json.loads(line)
        if on_epoch is not None:
            on_epoch(metrics["epoch"], metrics)
    return max(reported, len(lines))


def run_worker(job_file: str, rank: int) -> None:
    """One training process: join the group, train, save the final weights."""
    job = json.loads(Path(job_file).read_text())
    if job["cores"]:
        os.sched_setaffinity(0, {job["cores"][rank % len(job["cores"])]})
    logging.basicConfig(filename=job["log"].format(rank=rank), filemode="w", level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    torch.set_num_threads(job["config"]["train"]["threads"] or 1)
    dist.init_process_group("gloo", init_method=job["rendezvous"], rank=rank, world_size=job["processes"],
                            timeout=COLLECTIVE_TIMEOUT)
    from mlff_distill.train import fit

    def on_epoch(epoch: int, metrics: dict) -> None:
        with open(job["epochs_file"], "a") as handle:
            handle.write(json.dumps(metrics) + "\n")

    try:
        model, history, info = fit(job["config"], Path(job["store"]), Path(job["state_path"]),
                                   logging.getLogger("mlff_distill.train"), on_epoch if rank == 0 else None)
        torch.save({"model": model.state_dict(), "history": history, "info": info},
                   job["results"].format(rank=rank))
    finally:
        dist.destroy_process_group()

