"""Does MD with a potential behave: NVE energy drift and blow-ups, NVT radial distributions.

`nve_run` integrates with velocity Verlet and reports total energies (eV) against time (ps);
`energy_drift_eV_per_atom_per_ps` fits their slope. `nvt_run` samples frames with ASE's Langevin
thermostat; `radial_distribution` turns frames into g(r) and `rdf_difference` compares two.
`md_validation` is the evaluate stage's step: all of the above for a teacher and a student.
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import Calculator
from ase.md.verlet import VelocityVerlet
from ase.neighborlist import neighbor_list

from mlff_distill.sampling.dynamics import blow_up_reason, check_steps, langevin_frames, thermalized
from mlff_distill.settings import MDValidationSettings
from mlff_distill.teachers import Teacher, TeacherCalculator


def nve_run(
    calculator: Calculator, atoms: Atoms, timestep_fs: float, steps: int, temperature_K: float, seed: int
) -> dict:
    """Velocity-Verlet NVE from ``atoms`` with velocities drawn at ``temperature_K``.

    Returns ``times_ps`` and ``total_energies_eV`` (one per step done, the start included),
    ``blew_up`` and ``reason`` (None when it ran to the end). The run stops at the first step
    with a non-finite energy or force, a force above `MAX_FORCE_eV_PER_A`, an atom moving more
    than `MAX_STEP_DISPLACEMENT_A` in one step, or a total energy more than
    `MAX_ENERGY_CHANGE_eV_PER_ATOM` per atom away from the start.
    """
    check_steps(timestep_fs, steps)
    atoms = thermalized(atoms, calculator, temperature_K, seed)
    dynamics = VelocityVerlet(atoms, timestep=timestep_fs * units.fs)
    energies = [atoms.get_total_energy()]
    reason = blow_up_reason(atoms, energies[0], energies[0], atoms.positions)
    while reason is None and len(energies) <= steps:
        previous = atoms.positions.copy()
        dynamics.run(1)
        energies.append(atoms.get_total_energy())
        reason = blow_up_reason(atoms, energies[-1], energies[0], previous)
    times_ps = np.arange(len(energies)) * timestep_fs * 1e-3
    return {
        "times_ps": times_ps,
        "total_energies_eV": np.array(energies),
        "blew_up": reason is not None,
        "reason": reason,
    }


def energy_drift_eV_per_atom_per_ps(times_ps: np.ndarray, energies_eV: np.ndarray, n_atoms: int) -> float:
    """Least-squares slope of total energy against time, per atom (eV/atom/ps)."""
    times_ps, energies_eV = np.asarray(times_ps, float), np.asarray(energies_eV, float)
    if times_ps.shape != energies_eV.shape or len(times_ps) < 2 or np.ptp(times_ps) == 0:
        raise ValueError(
            f"times_ps and energies_eV: need two or more points at different times "
            f"and equal lengths, got {len(times_ps)} and {len(energies_eV)}"
        )
    if n_atoms < 1:
        raise ValueError(f"n_atoms: must be >= 1, got {n_atoms}")
    slope_eV_per_ps = np.polyfit(times_ps, energies_eV, 1)[0]
    return float(slope_eV_per_ps / n_atoms)


def nvt_run(
    calculator: Calculator,
    atoms: Atoms,
    temperature_K: float,
    timestep_fs: float,
    steps: int,
    sample_every: int,
    seed: int,
    friction_per_fs: float = 0.01,
) -> list[Atoms]:
    """The frames of `langevin_frames`, as a list."""
    return list(
        langevin_frames(calculator, atoms, temperature_K, timestep_fs, steps, sample_every, seed, friction_per_fs)
    )


def radial_distribution(
    frames: Sequence[Atoms], r_max_A: float, n_bins: int, pairs: tuple[int, int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Bin centres ``r`` (Angstrom) and g(r) averaged over ``frames``.

    Periodic frames (all three directions): the usual g(r), pair counts over shells with all
    images within ``r_max_A``, normalised by the ideal-gas count at the frame's number density,
    so g -> 1 at long range. Molecules (no periodic direction): the pair-distance histogram
    divided by the number of pairs and the bin width (a density per Angstrom that integrates to
    the fraction of pairs within ``r_max_A``). ``pairs=(Z1, Z2)`` keeps pairs of those atomic
    numbers only.
    """
    if not frames:
        raise ValueError("frames: empty")
    if r_max_A <= 0 or n_bins < 1:
        raise ValueError(f"r_max_A must be > 0 and n_bins >= 1, got {r_max_A} and {n_bins}")
    periodic = [bool(frame.pbc.all()) for frame in frames]
    if any(frame.pbc.any() and not p for frame, p in zip(frames, periodic)) or len(set(periodic)) > 1:
        raise ValueError("frames: all must be periodic in x, y and z, or all without periodicity")
    edges = np.linspace(0.0, r_max_A, n_bins + 1)
    g = np.zeros(n_bins)
    for frame in frames:
        g += _periodic_g(frame, edges, pairs) if periodic[0] else _molecular_g(frame, edges, pairs)
    return 0.5 * (edges[1:] + edges[:-1]), g / len(frames)


def _pair_selection(numbers: np.ndarray, pairs: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray]:
    """Masks of centre and neighbour atoms for ``pairs`` (all atoms when None)."""
    if pairs is None:
        everything = np.ones(len(numbers), bool)
        return everything, everything
    first, second = (numbers == pairs[0]), (numbers == pairs[1])
    if not first.any() or not second.any():
        raise ValueError(f"pairs: {pairs} not present in a frame with atomic numbers {sorted(set(numbers))}")
    return first, second


def _periodic_g(frame: Atoms, edges: np.ndarray, pairs: tuple[int, int] | None) -> np.ndarray:
    centres, neighbours = _pair_selection(frame.numbers, pairs)
    i, j, d = neighbor_list("ijd", frame, float(edges[-1]))
    keep = centres[i] & neighbours[j]
    counts = np.histogram(d[keep], bins=edges)[0]
    shells_A3 = 4.0 / 3.0 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    density_per_A3 = neighbours.sum() / frame.get_volume()
    return counts / (centres.sum() * density_per_A3 * shells_A3)


def _molecular_g(frame: Atoms, edges: np.ndarray, pairs: tuple[int, int] | None) -> np.ndarray:
    centres, neighbours = _pair_selection(frame.numbers, pairs)
    distances = np.linalg.norm(frame.positions[:, None] - frame.positions[None], axis=-1)
    keep = centres[:, None] & neighbours[None, :] & ~np.eye(len(frame), dtype=bool)
    counts = np.histogram(distances[keep], bins=edges)[0]
    return counts / (keep.sum() * np.diff(edges))


def rdf_difference(r: np.ndarray, g_a: np.ndarray, g_b: np.ndarray) -> float:
    """Integral of |g_a - g_b| dr over ``r`` (trapezoid rule; Angstrom for g(r))."""
    r, g_a, g_b = (np.asarray(x, float) for x in (r, g_a, g_b))
    if not r.shape == g_a.shape == g_b.shape or r.ndim != 1:
        raise ValueError(f"r, g_a and g_b: need equal 1-D shapes, got {r.shape}, {g_a.shape}, {g_b.shape}")
    return float(np.trapezoid(np.abs(g_a - g_b), r))


def md_validation(
    settings: MDValidationSettings,
    seeds: Sequence[Atoms],
    random_seed: int,
    teacher: Teacher,
    student_calculator: Calculator,
    structures: Sequence[Atoms],
) -> dict:
    """The evaluate stage's MD step, with the ``evaluate.md`` settings.

    Starts: one teacher-MD frame per seed from the sampled ``structures`` (teacher-equilibrated,
    at the frame's temperature), else the run's ``seeds`` at ``temperature_K``; ``random_seed``
    seeds the velocities and thermostats. NVE from the first ``nve_starts`` starts with the
    student and the first ``teacher_nve_starts`` with the teacher (``student_calculator`` a
    `StudentCalculator`); NVT of both from the largest start, compared by `radial_distribution`.
    A teacher run is skipped when one call times the number of steps exceeds
    ``teacher_budget_s`` (seconds); without the teacher's NVT there is no RDF comparison.

    Returns ``{"drift": [rows], "rdf": {...} or None, "rdf_not_run": reason or None}``: a row
    per NVE run (``model``, ``start``, ``n_atoms``, ``temperature_K``, ``time_ps``,
    ``drift_eV_per_atom_per_ps`` (None if not run or stopped before a second step),
    ``max_energy_change_eV_per_atom``, ``blew_up``, ``reason``); ``rdf`` holds ``r_A``,
    ``g_teacher``, ``g_student`` (lists), ``integrated_abs_difference``, ``kind`` (g(r), or for a
    molecule the pair-distance density per pair, 1/Angstrom), ``start``, ``temperature_K`` and
    ``n_frames``.
    """
    starts = _starts(structures, seeds, settings.temperature_K)
    if not starts:
        raise ValueError("md_validation: no structures to start from (no MD frames, no seeds)")
    calculators = {"student": student_calculator, "teacher": TeacherCalculator(teacher)}
    drift = []
    for model, count in (("student", settings.nve_starts), ("teacher", settings.teacher_nve_starts)):
        for name, atoms, temperature_K in starts[:count]:
            row = {"model": model, "start": name, "n_atoms": len(atoms), "temperature_K": temperature_K}
            too_slow = model == "teacher" and _over_budget(
                calculators[model], atoms, settings.nve_steps, settings.teacher_budget_s
            )
            drift.append(
                {
                    **row,
                    **(
                        _nve_row(calculators[model], atoms, temperature_K, settings, random_seed)
                        if not too_slow
                        else {
                            "time_ps": 0.0,
                            "drift_eV_per_atom_per_ps": None,
                            "max_energy_change_eV_per_atom": None,
                            "blew_up": None,
                            "reason": f"not run: {too_slow}",
                        }
                    ),
                }
            )
    name, atoms, temperature_K = max(starts, key=lambda start: len(start[1]))
    too_slow = _over_budget(calculators["teacher"], atoms, settings.nvt_steps, settings.teacher_budget_s)
    if too_slow:
        return {"drift": drift, "rdf": None, "rdf_not_run": f"teacher NVT: {too_slow}"}
    g = {}
    for model, calculator in calculators.items():
        frames = nvt_run(
            calculator,
            atoms,
            temperature_K,
            settings.timestep_fs,
            settings.nvt_steps,
            settings.sample_every,
            random_seed,
        )
        r, g[model] = radial_distribution(frames, settings.rdf_r_max_A, settings.rdf_bins)
    return {
        "drift": drift,
        "rdf_not_run": None,
        "rdf": {
            "r_A": r.tolist(),
            "g_teacher": g["teacher"].tolist(),
            "g_student": g["student"].tolist(),
            "integrated_abs_difference": rdf_difference(r, g["teacher"], g["student"]),
            "kind": "g(r)" if atoms.pbc.all() else "pair-distance density per pair (1/A)",
            "start": name,
            "temperature_K": temperature_K,
            "n_frames": len(frames),
        },
    }


def _nve_row(
    calculator: Calculator, atoms: Atoms, temperature_K: float, settings: MDValidationSettings, seed: int
) -> dict:
    """`nve_run` of ``calculator`` from ``atoms``, summarised for the drift table."""
    run = nve_run(calculator, atoms, settings.timestep_fs, settings.nve_steps, temperature_K, seed)
    energies = run["total_energies_eV"]
    return {
        "time_ps": float(run["times_ps"][-1]),
        "drift_eV_per_atom_per_ps": (
            energy_drift_eV_per_atom_per_ps(run["times_ps"], energies, len(atoms)) if len(energies) > 1 else None
        ),
        "max_energy_change_eV_per_atom": float(np.abs(energies - energies[0]).max() / len(atoms)),
        "blew_up": run["blew_up"],
        "reason": run["reason"],
    }


def _over_budget(calculator: Calculator, atoms: Atoms, steps: int, budget_s: float) -> str | None:
    """Why ``steps`` calls of ``calculator`` on ``atoms`` would exceed ``budget_s`` seconds (the
    second of two calls timed: the first may compile), or None when they would not."""
    atoms = atoms.copy()
    calculator.calculate(atoms, ["energy", "forces"])
    start = time.perf_counter()
    calculator.calculate(atoms, ["energy", "forces"])
    estimate_s = steps * (time.perf_counter() - start)
    return (
        f"{steps} steps would take about {estimate_s:.0f} s, over the {budget_s:g} s budget"
        if estimate_s > budget_s
        else None
    )


def _starts(
    structures: Sequence[Atoms], seeds: Sequence[Atoms], temperature_K: float
) -> list[tuple[str, Atoms, float]]:
    """(name, structure, temperature in K): the first teacher-MD frame of each seed, else the seeds."""
    starts: dict[str, tuple[str, Atoms, float]] = {}
    for atoms in structures:
        seed = atoms.info.get("seed", atoms.get_chemical_formula())
        if atoms.info.get("strategy") == "md" and seed not in starts:
            starts[seed] = (seed, atoms, float(atoms.info.get("temperature_K", temperature_K)))
    return list(starts.values()) or [
        (atoms.info.get("seed", atoms.get_chemical_formula()), atoms, temperature_K) for atoms in seeds
    ]
