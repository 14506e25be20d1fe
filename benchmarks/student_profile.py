"""Where the student's inference time goes, and what its sizes cost (CPU, one process, no teacher).

Usage::

    python benchmarks/student_profile.py time [--sizes 64 512 2048] [--threads 1 2] [--repeats 7]
    python benchmarks/student_profile.py profile --sizes 512 --threads 1 [--sort self_cpu_time_total]
    python benchmarks/student_profile.py sweep [--sizes 64 512 2048] [--threads 1]

Systems are `mlff_distill.sampling.boxes.build_timing_systems` of the default config's molecules (packed
periodic boxes at 0.1 atoms/Angstrom^3, built with the 5 Angstrom cutoff so that the boxes are the
same for every size of student). Every call is `StudentCalculator.calculate` of energy, forces and
stress, neighbour list included, on an untrained float32 `StudentPotential` (speed does not depend
on the weights). ``time`` prints the median and minimum ms per call over ``--repeats`` calls for
each size and thread count; ``profile`` prints torch.profiler's operator table of a few calls;
``sweep`` times the student sizes of the trade-off table (features, interactions, cutoff, radial).
The machine may be shared: the load average is printed with each table; repeat and compare minima.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import time
from typing import Any

import torch
from ase import Atoms
from ase.calculators.calculator import all_changes

from mlff_distill.sampling.boxes import build_timing_systems
from mlff_distill.sampling.seeds import seed_molecules
from mlff_distill.student import StudentCalculator, StudentPotential

MOLECULES = [
    "CH4",
    "H2O",
    "NH3",
    "CH3OH",
    "CH3CH2OH",
    "H2CO",
    "CH3CHO",
    "HCOOH",
    "CH3COOH",
    "H3CNH2",
    "CH3CONH2",
    "CH3CN",
    "C2H4",
    "C6H6",
]
SPECIES = [1, 6, 7, 8]
BOX_CUTOFF_A = 5.0


def systems(sizes: list[int], seed: int = 0) -> list[Atoms]:
    """Packed periodic boxes of about ``sizes`` atoms (the speed stage's timing systems)."""
    return build_timing_systems(seed_molecules(MOLECULES), sizes, BOX_CUTOFF_A, seed)


def time_calculator(calculator: StudentCalculator, atoms: Atoms, repeats: int, warmup: int = 2) -> list[float]:
    """Milliseconds of each of ``repeats`` energy + forces + stress calls after ``warmup`` calls."""
    properties = ["energy", "forces", "stress"]
    milliseconds = []
    for call in range(warmup + repeats):
        start = time.perf_counter()
        calculator.calculate(atoms, properties, all_changes)
        if call >= warmup:
            milliseconds.append(1e3 * (time.perf_counter() - start))
    return milliseconds


def student(threads: int, **sizes: Any) -> StudentCalculator:
    """A calculator on an untrained float32 student of ``sizes`` (`StudentPotential` arguments)."""
    torch.manual_seed(0)
    return StudentCalculator(StudentPotential(species=SPECIES, **sizes), threads=threads)


def warm_up(boxes: list[Atoms]) -> None:
    """Two untimed calls on the largest box, so that the first timed row does not pay for the
    process's first large allocations."""
    time_calculator(student(1), max(boxes, key=len), 0, warmup=2)


def time_table(sizes: list[int], threads: list[int], repeats: int, **model_sizes: Any) -> list[dict]:
    """One row per system and thread count: atoms, threads, median and min ms per call."""
    rows = []
    boxes = systems(sizes)
    warm_up(boxes)
    for n_threads in threads:
        calculator = student(n_threads, **model_sizes)
        for atoms in boxes:
            ms = time_calculator(calculator, atoms, repeats)
            rows.append(
                {"atoms": len(atoms), "threads": n_threads, "median_ms": statistics.median(ms), "min_ms": min(ms)}
            )
    return rows


def print_rows(rows: list[dict]) -> None:
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print(f"{'atoms':>6} {'threads':>7} {'median ms':>10} {'min ms':>8}")
    for row in rows:
        print(f"{row['atoms']:6d} {row['threads']:7d} {row['median_ms']:10.1f} {row['min_ms']:8.1f}")


def profile(sizes: list[int], threads: list[int], repeats: int, sort: str, rows: int) -> None:
    """torch.profiler's operator table over ``repeats`` calls per system and thread count."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    for n_threads, atoms in itertools.product(threads, systems(sizes)):
        calculator = student(n_threads)
        time_calculator(calculator, atoms, 0, warmup=2)
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            time_calculator(calculator, atoms, repeats, warmup=0)
        print(f"=== {len(atoms)} atoms, {n_threads} thread(s), {repeats} calls")
        print(prof.key_averages().table(sort_by=sort, row_limit=rows))


def sweep(sizes: list[int], threads: list[int], repeats: int) -> None:
    """The trade-off table: the default student with one size changed at a time, then a few
    smaller combinations."""
    default = {"n_features": 64, "n_interactions": 2, "cutoff_A": 5.0, "n_radial": 8}
    variants = (
        [{}]
        + [{"n_features": f} for f in (32, 48)]
        + [{"n_interactions": n} for n in (1, 3)]
        + [{"cutoff_A": c} for c in (4.0, 4.5)]
        + [{"n_radial": 6}]
        + [{"n_features": 32, "cutoff_A": c} for c in (4.0, 4.5)]
        + [{"n_features": f, "cutoff_A": 4.0, "n_interactions": 1} for f in (32, 64)]
    )
    boxes = systems(sizes)
    warm_up(boxes)
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; ms per call (min of {repeats})")
    print(
        f"{'features':>8} {'layers':>6} {'cutoff':>6} {'radial':>6} {'threads':>7} "
        + " ".join(f"{len(atoms):>7d}" for atoms in boxes)
    )
    for variant in variants:
        model_sizes = {**default, **variant}
        for n_threads in threads:
            calculator = student(n_threads, **model_sizes)
            ms = [min(time_calculator(calculator, atoms, repeats)) for atoms in boxes]
            print(
                f"{model_sizes['n_features']:8d} {model_sizes['n_interactions']:6d} "
                f"{model_sizes['cutoff_A']:6.1f} {model_sizes['n_radial']:6d} {n_threads:7d} "
                + " ".join(f"{value:7.1f}" for value in ms),
                flush=True,
            )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["time", "profile", "sweep"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[64, 512, 2048], help="atoms per system")
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2], help="torch threads")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per system")
    parser.add_argument("--sort", default="self_cpu_time_total", help="profile: column to sort by")
    parser.add_argument("--rows", type=int, default=30, help="profile: operators to show")
    args = parser.parse_args(argv)
    if args.mode == "time":
        print_rows(time_table(args.sizes, args.threads, args.repeats))
    elif args.mode == "profile":
        profile(args.sizes, args.threads, args.repeats, args.sort, args.rows)
    else:
        sweep(args.sizes, args.threads, args.repeats)


if __name__ == "__main__":
    main()
