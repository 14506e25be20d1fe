"""The collectives of data-parallel training (``torch.distributed`` over gloo): every process
of `mlff_distill.student.training.train_in_processes` trains on its share of each epoch's batches
and validation structures, and after every backward pass `average_gradients` makes the gradients
(and whether time is up) the same in all of them, so their weights stay identical step by step
and the result is reproducible.
"""

from __future__ import annotations

import datetime
from typing import Iterable

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
    flat = torch.cat(
        [p.grad.reshape(-1) for p in parameters] + [torch.tensor([float(stop)], dtype=parameters[0].dtype)]
    )
    dist.all_reduce(flat)
    size, offset = dist.get_world_size(), 0
    for p in parameters:
        p.grad.copy_(flat[offset : offset + p.numel()].view_as(p.grad) / size)
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
