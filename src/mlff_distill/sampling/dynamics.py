"""Molecular dynamics with any ASE calculator, and the checks that say when a run has blown up.

`thermalized` starts a run (Maxwell-Boltzmann velocities, no net momentum); `langevin_frames` runs
Langevin NVT and yields frames; `blow_up_reason` names why a step counts as a blow-up. Used by the
on-policy rounds (the student's MD), the evaluate stage's MD validation and ``mlff-distill md``.
Units: Angstrom, eV, eV/Angstrom, fs, K.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import Calculator
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixCom
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary, ZeroRotation, thermalize_momenta
from vesin import NeighborList

# A run "blows up" when any of these is crossed.
MAX_FORCE_eV_PER_A = 100.0


MAX_STEP_DISPLACEMENT_A = 0.5  # per atom, in one MD step


MAX_ENERGY_CHANGE_eV_PER_ATOM = 1.0  # total energy against the first frame


def closest_distance_A(atoms: Atoms, within_A: float = 2.0) -> float:
    """The smallest distance between two atoms of ``atoms`` (minimum image where periodic), or inf
    when no two are within ``within_A`` Angstrom (vesin's cell list, called every MD step: ASE's
    pure-Python neighbour list cost more than the student itself there; vesin's cells are slow to
    build for a cutoff much shorter than 2 Angstrom)."""
    (distances,) = NeighborList(cutoff=float(within_A), full_list=False).compute(
        atoms.positions, atoms.cell.array, atoms.pbc, "d"
    )
    return float(np.min(distances)) if len(distances) else float("inf")


def too_close(atoms: Atoms, min_distance_A: float) -> str | None:
    """``"atoms <d> A apart"`` when two atoms of ``atoms`` are closer than ``min_distance_A``
    (minimum image), else None: the contact check of every MD loop with a student."""
    closest = closest_distance_A(atoms, max(min_distance_A, 2.0))
    return f"atoms {closest:.2f} A apart" if closest < min_distance_A else None


def thermalized(atoms: Atoms, calculator: Calculator, temperature_K: float, seed: int) -> Atoms:
    """A copy of ``atoms`` with ``calculator`` and Maxwell-Boltzmann velocities, no net momentum
    (nor, for molecules, angular momentum)."""
    if temperature_K < 0:
        raise ValueError(f"temperature_K: must be >= 0, got {temperature_K}")
    atoms = atoms.copy()
    atoms.calc = calculator
    thermalize_momenta(atoms, temperature_K, rng=np.random.default_rng(seed))
    Stationary(atoms)
    if not atoms.pbc.any():
        ZeroRotation(atoms)
    return atoms


def check_steps(timestep_fs: float, steps: int) -> None:
    if timestep_fs <= 0 or steps < 1:
        raise ValueError(f"timestep_fs must be > 0 and steps >= 1, got {timestep_fs} and {steps}")


def blow_up_reason(
    atoms: Atoms, energy_eV: float, start_energy_eV: float, previous_positions_A: np.ndarray
) -> str | None:
    """Why this MD step counts as a blow-up, or None."""
    forces = atoms.get_forces()
    if not np.isfinite(energy_eV) or not np.isfinite(forces).all():
        return "non-finite energy or forces"
    largest_force = float(np.linalg.norm(forces, axis=1).max())
    if largest_force > MAX_FORCE_eV_PER_A:
        return f"force of {largest_force:.1f} eV/A"
    largest_step = float(np.linalg.norm(atoms.positions - previous_positions_A, axis=1).max())
    if largest_step > MAX_STEP_DISPLACEMENT_A:
        return f"an atom moved {largest_step:.2f} A in one step"
    change = abs(energy_eV - start_energy_eV) / len(atoms)
    if change > MAX_ENERGY_CHANGE_eV_PER_ATOM:
        return f"total energy changed by {change:.2f} eV/atom"
    return None


def langevin_frames(
    calculator: Calculator,
    atoms: Atoms,
    temperature_K: float,
    timestep_fs: float,
    steps: int,
    sample_every: int,
    seed: int,
    friction_per_fs: float = 0.01,
) -> Iterator[Atoms]:
    """Langevin NVT at ``temperature_K``, velocities drawn with ``seed``: yields a copy of the
    structure every ``sample_every`` steps (positions in Angstrom; its energy (eV) and forces
    (eV/Angstrom) as a single-point calculator; no constraint), the start excluded."""
    check_steps(timestep_fs, steps)
    if sample_every < 1:
        raise ValueError(f"sample_every: must be >= 1, got {sample_every}")
    atoms = thermalized(atoms, calculator, temperature_K, seed)
    atoms.set_constraint(FixCom())  # the thermostat's noise would otherwise move the whole system
    dynamics = Langevin(
        atoms,
        timestep=timestep_fs * units.fs,
        temperature_K=temperature_K,
        friction=friction_per_fs / units.fs,
        fixcm=False,
        rng=np.random.default_rng(seed + 1),
    )
    for _ in range(steps // sample_every):
        dynamics.run(sample_every)
        frame = atoms.copy()
        frame.set_constraint()
        frame.calc = SinglePointCalculator(frame, energy=atoms.get_potential_energy(), forces=atoms.get_forces())
        yield frame
