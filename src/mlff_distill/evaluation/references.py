"""Reference labels for the user's own structures: from the teacher, or from the file they came in.

Both return `LabeledArrays` (energies in eV, forces in eV/Angstrom, stress in eV/Angstrom^3 with
ASE's sign convention, NaN where a structure is not periodic or the file gives none), ready for
`mlff_distill.evaluation.accuracy.accuracy`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from ase import Atoms
from ase.calculators.calculator import PropertyNotImplementedError

from mlff_distill.data import LabeledArrays, concatenate_structures
from mlff_distill.teachers import Teacher


def labeled(
    structures: Sequence[Atoms], energy_eV: np.ndarray, forces_eV_per_A: np.ndarray, stress_eV_per_A3: np.ndarray
) -> LabeledArrays:
    """``structures`` with their labels (forces flat over atoms, in order)."""
    return LabeledArrays(
        **concatenate_structures(structures),
        energy_eV=np.asarray(energy_eV, dtype=np.float64),
        forces_eV_per_A=np.asarray(forces_eV_per_A, dtype=np.float64).reshape(-1, 3),
        stress_eV_per_A3=np.asarray(stress_eV_per_A3, dtype=np.float64).reshape(-1, 3, 3),
    )


def teacher_labels(teacher: Teacher, structures: Sequence[Atoms], batch_size: int = 32) -> LabeledArrays:
    """The teacher's energies, forces and stress of ``structures``, computed in batches."""
    outputs = [
        teacher.compute(list(structures[i : i + batch_size]), compute_stress=True)
        for i in range(0, len(structures), batch_size)
    ]
    stress = [
        np.full((output.energy_eV.shape[0], 3, 3), np.nan)
        if output.stress_eV_per_A3 is None
        else output.stress_eV_per_A3
        for output in outputs
    ]
    return labeled(
        structures,
        np.concatenate([o.energy_eV for o in outputs]),
        np.concatenate([o.forces_eV_per_A for o in outputs]),
        np.concatenate(stress),
    )


def file_labels(structures: Sequence[Atoms], path: Path) -> LabeledArrays:
    """The energies and forces (and stress, where given) stored with ``structures`` in the file at
    ``path`` (e.g. extxyz ``energy``/``forces`` columns); raises naming the first structure without."""
    energies, forces, stresses = [], [], []
    for index, atoms in enumerate(structures):
        try:
            energies.append(atoms.get_potential_energy())
            forces.append(atoms.get_forces())
        except (RuntimeError, PropertyNotImplementedError) as error:
            raise ValueError(
                f"{path}: structure {index} ({atoms.get_chemical_formula()}) carries no energy and "
                "forces to compare with; give the teacher (--teacher-config) to label them"
            ) from error
        try:
            stresses.append(atoms.get_stress(voigt=False) if atoms.pbc.all() else np.full((3, 3), np.nan))
        except (RuntimeError, PropertyNotImplementedError):
            stresses.append(np.full((3, 3), np.nan))
    return labeled(structures, np.array(energies), np.concatenate(forces), np.array(stresses))
