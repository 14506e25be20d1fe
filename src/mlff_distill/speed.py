"""Teacher against student speed on systems of several sizes built from the run's own seeds.

`build_timing_systems` makes periodic systems of about the requested numbers of atoms,
`time_calls` times one ASE calculator on one system (median latency in ms per energy + forces
(+ stress for periodic cells) call, neighbour list included; throughput in atom-steps per second;
peak memory in MB), and `compare_speed` gives one row per system for a teacher and a student.
`speed_rows` is the evaluate stage's step: all of the above from a run's config.
"""

from __future__ import annotations

import resource
import statistics
import time
from typing import Sequence

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from mlff_distill.strategies import cell_heights_A, random_rotation

# Liquid water and small organics hold about 0.1 atoms per cubic Angstrom.
LIQUID_DENSITY_ATOMS_PER_A3 = 0.1
MIN_DISTANCE_A = 1.2  # between atoms of different molecules in a packed box
_PLACEMENT_TRIES = 2000
# The evaluate stage's settings (config ``evaluate.speed``) where the config gives none.
SPEED_DEFAULTS = {"sizes": [32, 128, 512], "warmup": 1}


def build_timing_systems(seeds: Sequence[Atoms], sizes: Sequence[int], cutoff_A: float, seed: int,
                         density_atoms_per_A3: float = LIQUID_DENSITY_ATOMS_PER_A3,
                         min_distance_A: float = MIN_DISTANCE_A) -> list[Atoms]:
    """One periodic system of about each of ``sizes`` atoms, in the order of ``sizes``.

    If any seed is periodic in all three directions (a crystal), the first such seed is repeated
    to the size, as close to cubic as its cell allows. Otherwise copies of the molecular seeds,
    drawn at random and turned to random orientations, are packed into a cubic periodic box at
    ``density_atoms_per_A3`` (atoms per Angstrom^3), no two atoms of different molecules closer
    than ``min_distance_A`` (Angstrom). Every cell height is at least ``cutoff_A`` (Angstrom):
    crystals are repeated further, and a molecular box that would be smaller raises ValueError.
    """
    if not seeds:
        raise ValueError("seeds: empty; timing systems are built from the run's seeds")
    if any(int(size) < 1 for size in sizes):
        raise ValueError(f"sizes: every size must be a positive number of atoms, got {list(sizes)}")
    crystals = [atoms for atoms in seeds if atoms.pbc.all()]
    molecules = [atoms for atoms in seeds if not atoms.pbc.any()]
    rng = np.random.default_rng(seed)
    if crystals:
        return [_replicated(crystals[0], int(size), cutoff_A) for size in sizes]
    if not molecules:
        raise ValueError("seeds: neither a crystal (periodic in x, y and z) nor a molecule "
                         "(no periodic direction); slabs and wires are not supported here")
    return [_packed(molecules, int(size), cutoff_A, density_atoms_per_A3, min_distance_A, rng)
            for size in sizes]


def _replicated(crystal: Atoms, size: int, cutoff_A: float) -> Atoms:
    """``crystal`` repeated to about ``size`` atoms, the supercell as near cubic as possible."""
    heights = cell_heights_A(crystal)
    factor = max(size / len(crystal), 1.0)
    side_A = (factor * np.prod(heights)) ** (1 / 3)
    low = np.maximum(np.floor(side_A / heights), 1).astype(int)
    at_least = np.ceil(cutoff_A / heights - 1e-9).astype(int)
    candidates = [np.maximum(low + np.array(step), at_least)
                  for step in np.ndindex(2, 2, 2)]
    # Closest in number of atoms (log scale), then the most cubic.
    best = min(candidates, key=lambda r: (abs(np.log(np.prod(r) / factor)),
                                          np.ptp(r * heights)))
    system = crystal.repeat(tuple(int(r) for r in best))
    system.info = {"system": crystal.info.get("seed", crystal.get_chemical_formula()),
                   "repeats": " ".join(map(str, best))}
    return system


def _packed(molecules: Sequence[Atoms], size: int, cutoff_A: float, density: float,
            min_distance_A: float, rng: np.random.Generator) -> Atoms:
    """Random copies of ``molecules`` at random orientations in a cubic box of ``density``."""
    chosen: list[Atoms] = []
    n_atoms = 0
    while True:
        candidate = molecules[rng.integers(len(molecules))]
        if n_atoms and n_atoms + len(candidate) / 2 > size:
            break
        chosen.append(candidate)
        n_atoms += len(candidate)
    side_A = (n_atoms / density) ** (1 / 3)
    if side_A < cutoff_A:
        raise ValueError(f"sizes: {size} atoms at {density} atoms/A^3 fill a box of {side_A:.2f} A, "
                         f"smaller than the cutoff {cutoff_A} A; ask for more atoms")
    box = np.eye(3) * side_A
    positions: list[np.ndarray] = []
    numbers: list[np.ndarray] = []
    placed = np.zeros((0, 3))
    for index, molecule in enumerate(chosen):
        centred = molecule.positions - molecule.positions.mean(axis=0)
        for _ in range(_PLACEMENT_TRIES):
            trial = centred @ random_rotation(rng).T + rng.uniform(0, side_A, 3)
            if len(placed) == 0 or _min_image_distance_A(trial, placed, side_A) >= min_distance_A:
                break
        else:
            raise ValueError(f"could not place molecule {index + 1} of {len(chosen)} "
                             f"({molecule.get_chemical_formula()}) in a {side_A:.2f} A box with "
                             f"min_distance_A={min_distance_A}; lower the density or the distance")
        placed = np.concatenate([placed, trial])
        positions.append(trial)
        numbers.append(molecule.numbers)
    system = Atoms(numbers=np.concatenate(numbers), positions=np.concatenate(positions),
                   cell=box, pbc=True)
    system.wrap()
    system.info = {"system": "packed molecules", "molecules": len(chosen)}
    return system


def _min_image_distance_A(new: np.ndarray, placed: np.ndarray, side_A: float) -> float:
    """Smallest minimum-image distance between rows of ``new`` and ``placed`` in a cubic box."""
    delta = new[:, None, :] - placed[None, :, :]
    delta -= side_A * np.round(delta / side_A)
    return float(np.sqrt((delta ** 2).sum(axis=-1).min()))


def time_calls(calculator: Calculator, atoms: Atoms, repeats: int, warmup: int = 2,
               stress: bool = True, min_seconds: float = 1.0) -> dict:
    """Time ``calculator`` on ``atoms``: ``warmup`` untimed calls, then timed ones, at least
    ``repeats`` and until they took ``min_seconds`` (s) in all, so that fast calls (a few ms) get
    a median over hundreds of calls.

    Each call computes energy and forces, and stress when ``stress`` is asked, ``atoms`` is
    periodic in all three directions and the calculator implements it, from scratch (neighbour
    list included).

    Returns ``median_ms`` (ms per call), ``n_calls`` (timed), ``atom_steps_per_s`` (atoms / median seconds),
    ``with_stress``, ``peak_MB`` (the CUDA peak allocated by torch during the calls when they
    allocated on the GPU, else the rise of this process's peak resident memory over its resident
    memory before the calls) and
    both of those under ``rss_peak_MB`` and ``cuda_peak_MB`` (None without CUDA). The warm-up
    calls count (compilation, caches); memory the process already holds and reuses does not,
    so a model run after a bigger one may show less than it would alone. JAX teachers on a GPU
    allocate outside torch: their ``cuda_peak_MB`` is not measured here.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    atoms = atoms.copy()
    with_stress = stress and bool(atoms.pbc.all()) and "stress" in calculator.implemented_properties
    properties = ["energy", "forces"] + (["stress"] if with_stress else [])
    cuda = torch.cuda.is_available()
    rss_before_kB = _reset_peak_rss_kB()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        cuda_before = torch.cuda.memory_allocated()
    for _ in range(warmup):
        calculator.calculate(atoms, properties, all_changes)
    seconds: list[float] = []
    while len(seconds) < repeats or sum(seconds) < min_seconds:
        start = time.perf_counter()
        calculator.calculate(atoms, properties, all_changes)
        if cuda:
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    rss_peak_MB = max(_peak_rss_kB() - rss_before_kB, 0) / 1024
    cuda_peak_MB = (torch.cuda.max_memory_allocated() - cuda_before) / 2**20 if cuda else None
    median_s = statistics.median(seconds)
    return {"n_atoms": len(atoms), "median_ms": 1e3 * median_s, "n_calls": len(seconds),
            "atom_steps_per_s": len(atoms) / median_s, "with_stress": with_stress,
            "peak_MB": cuda_peak_MB if cuda_peak_MB else rss_peak_MB,
            "rss_peak_MB": rss_peak_MB, "cuda_peak_MB": cuda_peak_MB}


def _reset_peak_rss_kB() -> int:
    """Reset this process's peak resident memory to its current value (Linux ``clear_refs``)
    and return it in kB. Where that cannot be done, the peak so far is returned, and a later
    rise measures only what goes above the earlier peak."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass
    return _peak_rss_kB()


def _peak_rss_kB() -> int:
    """This process's peak resident memory in kB: ``VmHWM`` of ``/proc/self/status`` (the value
    ``clear_refs`` resets), else ``getrusage``'s ``ru_maxrss``, which also keeps the peaks of exited
    threads and so cannot be reset."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def compare_speed(teacher_calc: Calculator, student_calc: Calculator, systems: Sequence[Atoms],
                  repeats: int, warmup: int = 2) -> list[dict]:
    """One row per system: ``system`` (its ``info["system"]``, else its formula), ``n_atoms``,
    ``teacher_ms``/``student_ms`` (median ms per call),
    ``speedup`` (teacher_ms / student_ms), ``*_atom_steps_per_s``, ``*_peak_MB`` and
    ``with_stress``. Both compute the same properties: stress (periodic systems) only when both
    calculators implement it. The student is timed on every system first, then the teacher: so
    the student's peak memory is not hidden under the teacher's where the peak cannot be reset
    (see `time_calls`), and its millisecond calls are not timed right after the teacher's (on 2
    cores a compiled 64-atom student call measured 3.6-4.5 ms alone and 5.0-5.3 ms right after
    calls of the JAX teacher in the same process)."""
    stress = all("stress" in calc.implemented_properties for calc in (teacher_calc, student_calc))
    students = [time_calls(student_calc, atoms, repeats, warmup, stress) for atoms in systems]
    rows = []
    for atoms, student in zip(systems, students):
        teacher = time_calls(teacher_calc, atoms, repeats, warmup, stress)
        rows.append({
            "system": atoms.info.get("system", atoms.get_chemical_formula()), "n_atoms": len(atoms),
            "teacher_ms": teacher["median_ms"], "student_ms": student["median_ms"],
            "speedup": teacher["median_ms"] / student["median_ms"],
            "teacher_atom_steps_per_s": teacher["atom_steps_per_s"],
            "student_atom_steps_per_s": student["atom_steps_per_s"],
            "teacher_peak_MB": teacher["peak_MB"], "student_peak_MB": student["peak_MB"],
            "with_stress": teacher["with_stress"],
        })
    return rows


def speed_rows(config: dict, teacher, student_calculator: Calculator,
               structures: Sequence[Atoms]) -> list[dict]:
    """The evaluate stage's speed step: `compare_speed` rows for systems of
    ``evaluate.speed.sizes`` atoms (default `SPEED_DEFAULTS`) built from the run's seeds
    (``sample:``; the sampled ``structures`` when the config names no seeds), ``timing_repeats``
    calls each. ``teacher`` is a `Teacher`, ``student_calculator`` a `StudentCalculator` (its
    ``inference_path`` is recorded by the caller)."""
    from mlff_distill.sample import seed_structures
    from mlff_distill.teachers import TeacherCalculator

    settings = {**SPEED_DEFAULTS, **config["evaluate"].get("speed", {})}
    seeds = seed_structures(config["sample"]) or list(structures)
    systems = build_timing_systems(seeds, settings["sizes"], float(student_calculator.model.cutoff_A),
                                   config["seed"])
    return compare_speed(TeacherCalculator(teacher), student_calculator, systems,
                         config["evaluate"]["timing_repeats"], settings["warmup"])
