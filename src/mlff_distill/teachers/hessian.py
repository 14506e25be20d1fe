"""The teacher's Hessian signal: one Hessian-vector product per structure, by central differences.

Amin et al. (ICLR 2025, "Towards fast, specialized machine learning force fields: distilling
foundation models via energy Hessians") train students on rows or random projections of the
teacher's Hessian. Here each structure gets one random direction ``d`` (Gaussian, unit norm over
its ``3n`` coordinates, seeded by the structure's ``sample_index``) and the product ``H d`` (eV/A^2)
from the teacher's forces at ``x +- h d``::

    H d = -(F(x + h d) - F(x - h d)) / (2 h)

Central differences work for every teacher that gives forces (Orb and FeNNol alike) at the cost
of two more force evaluations per structure; their error is ``O(h^2)`` in the third derivatives
plus the teacher's float rounding divided by ``2 h`` (measured in `tests/test_hessian_labels.py`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from ase import Atoms

from mlff_distill.teachers.base import Teacher

DEFAULT_STEP_A = 0.01


def hessian_directions(structures: Sequence[Atoms], seed: int = 0) -> list[np.ndarray]:
    """A random unit direction ``[n, 3]`` for each structure, drawn from ``(seed, sample_index)``
    so that a structure gets the same direction in whichever shard it is labeled."""
    directions = []
    for index, atoms in enumerate(structures):
        key = int(atoms.info.get("sample_index", index))
        direction = np.random.default_rng([seed, key]).standard_normal((len(atoms), 3))
        directions.append(direction / np.linalg.norm(direction))
    return directions


def hessian_vector_products(
    teacher: Teacher, structures: Sequence[Atoms], directions: Sequence[np.ndarray], step_A: float = DEFAULT_STEP_A
) -> np.ndarray:
    """The teacher's Hessian (eV/A^2) times ``directions`` (one ``[n, 3]`` array per structure), by
    central differences of its forces with a displacement of ``step_A`` (Angstrom) along each;
    per-atom rows flat, ``[sum n, 3]``, in input order."""
    if step_A <= 0:
        raise ValueError(f"the Hessian step must be positive, got {step_A} Angstrom")
    displaced = {}
    for sign in (1.0, -1.0):
        moved = []
        for atoms, direction in zip(structures, directions):
            copy = atoms.copy()
            copy.positions = atoms.positions + sign * step_A * direction
            moved.append(copy)
        displaced[sign] = teacher.compute(moved).forces_eV_per_A
    return -(displaced[1.0] - displaced[-1.0]) / (2 * step_A)
