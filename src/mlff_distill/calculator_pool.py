"""Tasks that each need an ASE calculator, run here or shared among spawned worker processes.

Each worker makes its calculator once, from a picklable factory (a `functools.partial` of
`mlff_distill.student.StudentCalculator`, say), and runs its share of the tasks; the results come
back in task order, so they are those of one process wherever every task carries its own seeds. The
workers are spawned (forking a process that has run torch is unsafe), so they import the caller's
``__main__`` again: a Snakemake script that gets here keeps its job under
``if __name__ == "__main__"``.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, Optional, Sequence, Union

import torch
from ase.calculators.calculator import Calculator

_worker_calculator: Optional[Calculator] = None  # a worker process's own, made once (`_start_worker`)


def map_with_calculator(
    function: Callable[..., Any],
    calculator: Union[Calculator, Callable[[], Calculator]],
    tasks: Sequence[tuple],
    processes: int = 1,
    on_result: Optional[Callable[[int, Any], None]] = None,
) -> list:
    """``function(calculator, *task)`` of every task, in order: here (with ``calculator``, made
    first if it is a factory), or, with ``processes`` > 1, in that many spawned workers (at most one
    per task), each with ``calculator()``; then ``function`` must be picklable (a module-level
    function). ``on_result(index, result)`` is called as each result arrives, in order."""
    results: list = []

    def arrived(result: Any) -> None:
        results.append(result)
        if on_result is not None:
            on_result(len(results) - 1, result)

    if processes <= 1 or len(tasks) <= 1:
        calculator = calculator if isinstance(calculator, Calculator) else calculator()
        for task in tasks:
            arrived(function(calculator, *task))
        return results
    context = multiprocessing.get_context("spawn")
    workers = min(processes, len(tasks))
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker, initargs=(calculator,)) as pool:
        for future in [pool.submit(_call_in_worker, function, *task) for task in tasks]:
            arrived(future.result())
    return results


def student_processes(cores: int, tasks: int) -> int:
    """Processes for ``tasks`` runs of the student on a job's ``cores``: on a CPU one per core (each
    on one thread, where the compiled student is fastest), at most one per task; on a GPU one,
    which runs them all."""
    return 1 if torch.cuda.is_available() else max(1, min(cores, tasks))


def _start_worker(make_calculator: Callable[[], Calculator]) -> None:
    global _worker_calculator
    _worker_calculator = make_calculator()


def _call_in_worker(function: Callable[..., Any], *task) -> Any:
    assert _worker_calculator is not None, "a worker of `map_with_calculator` runs `_start_worker` first"
    return function(_worker_calculator, *task)
