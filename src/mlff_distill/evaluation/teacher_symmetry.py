"""How far the teacher's forces break rotational symmetry: a floor for a rotation-invariant student.

The student's energy is invariant under rotation, so its forces turn with the structure. A teacher
that is not invariant by construction (Orb models learn the symmetry from data; with untrained
weights they have none) gives forces ``F(R x) != R F(x)``. On structures in arbitrary orientations
no invariant student can follow both: its relative RMS force error against such a teacher is at
least about half the teacher's relative force change under rotation (for forces ``a`` and ``b`` of
one structure in two orientations, brought to one frame, any single answer misses them by at least
``|a - b| / 2`` on average).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from ase import Atoms

from mlff_distill.sampling.strategies import per_structure, random_rotation
from mlff_distill.teachers import Teacher


def rotated(atoms: Atoms, rotation: np.ndarray) -> Atoms:
    """``atoms`` with positions and cell (Angstrom) turned by ``rotation`` about the origin."""
    turned = atoms.copy()
    turned.calc = None
    turned.positions = atoms.positions @ rotation.T
    turned.set_cell(atoms.cell.array @ rotation.T, scale_atoms=False)
    return turned


def rotation_force_change(
    teacher: Teacher, structures: Sequence[Atoms], rng: np.random.Generator
) -> dict[str, float | int]:
    """The teacher's relative RMS force change when each of ``structures`` is turned by a random
    rotation (forces compared in one frame), and ``invariant_student_floor``, half of it: the
    least relative RMS force error a rotation-invariant student can expect against this teacher."""
    structures = list(structures)
    rotations = [random_rotation(rng) for _ in structures]
    original = teacher.compute(structures).forces_eV_per_A
    turned = teacher.compute([rotated(a, r) for a, r in zip(structures, rotations)]).forces_eV_per_A
    turned_back = np.concatenate(
        [forces @ rotation for forces, rotation in zip(per_structure(turned, structures), rotations)]
    )
    change = float(np.sqrt(np.sum((turned_back - original) ** 2) / np.sum(original**2)))
    return {"force_rel_change": change, "invariant_student_floor": change / 2, "n_structures": len(structures)}
