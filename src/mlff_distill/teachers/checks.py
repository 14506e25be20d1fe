"""Checks on structures before any teacher labels them; each problem raises a ValueError naming
the structure (index and formula). Distances in Angstrom."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols
from ase.neighborlist import neighbor_list

from mlff_distill.teachers.base import TeacherIdentity

MIN_DISTANCE_A = 0.5  # closer atoms (or periodic images) are overlapping: no teacher is valid there
MIN_CELL_A = 1e-3  # periodic cell vectors must span their directions by more than this


def check_structures(
    structures: Sequence[Atoms],
    identity: TeacherIdentity,
    molecule_only: bool,
    handles_small_cells: bool,
    handles_mixed_pbc: bool = False,
    periodic_only: bool = False,
) -> None:
    """Raise ValueError for the first structure the teacher ``identity`` cannot label.

    Checks, in order: finite positions and cell; species the teacher covers (skipped when
    ``identity.species`` is empty: not declared); no periodic cell when ``molecule_only``; a cell
    periodic in all three directions when ``periodic_only``; no mixed periodicity unless
    ``handles_mixed_pbc``; periodic cell vectors that are not degenerate; cell
    heights of at least twice ``identity.cutoff_A`` in periodic directions unless
    ``handles_small_cells`` (skipped when the cutoff is 0: not declared); no two atoms (or
    periodic images) closer than ``MIN_DISTANCE_A``.
    """
    for index, atoms in enumerate(structures):
        where = f"structure {index} ({atoms.get_chemical_formula()})"
        problem = (  # in order, stopping at the first: later checks rely on earlier ones
            _non_finite(atoms)
            or _uncovered_species(atoms, identity)
            or _periodicity(atoms, molecule_only, handles_mixed_pbc, periodic_only)
            or _small_cell(atoms, identity.cutoff_A, handles_small_cells)
            or _overlap(atoms)
        )
        if problem:
            raise ValueError(f"{where}: {problem}")


def _non_finite(atoms: Atoms) -> str | None:
    bad = np.flatnonzero(~np.isfinite(atoms.positions).all(axis=1))
    if bad.size:
        return f"non-finite positions for atom(s) {bad[:10].tolist()}"
    if not np.isfinite(atoms.cell.array).all():
        return f"non-finite cell {atoms.cell.array.tolist()}"
    return None


def _uncovered_species(atoms: Atoms, identity: TeacherIdentity) -> str | None:
    if not identity.species:
        return None
    unknown = sorted(set(atoms.numbers.tolist()) - set(identity.species))
    if not unknown:
        return None
    return (
        f"holds {', '.join(chemical_symbols[z] for z in unknown)}, which {identity.label} does "
        f"not cover (it knows {', '.join(chemical_symbols[z] for z in identity.species)})"
    )


def _periodicity(atoms: Atoms, molecule_only: bool, handles_mixed_pbc: bool, periodic_only: bool) -> str | None:
    pbc = atoms.pbc
    if molecule_only and pbc.any():
        return f"periodic (pbc={pbc.tolist()}) but the teacher is for molecules only"
    if periodic_only and not pbc.all():
        return f"not periodic in all three directions (pbc={pbc.tolist()}) but the teacher needs a periodic cell"
    if pbc.any() and not pbc.all() and not handles_mixed_pbc:
        return f"mixed periodicity pbc={pbc.tolist()}: the teacher needs all three or none"
    periodic_vectors = atoms.cell.array[pbc]
    if np.linalg.matrix_rank(periodic_vectors, tol=MIN_CELL_A) < len(periodic_vectors):
        return f"periodic (pbc={pbc.tolist()}) with degenerate cell vectors {atoms.cell.array.tolist()}"
    return None


def _small_cell(atoms: Atoms, cutoff_A: float, handles_small_cells: bool) -> str | None:
    """Cell heights (distances between opposite faces) against twice the cutoff: below that a
    minimum-image neighbour list misses neighbours."""
    if handles_small_cells or cutoff_A <= 0 or not atoms.pbc.any():
        return None
    with np.errstate(divide="ignore"):  # an empty open direction has infinite height
        heights = 1.0 / np.linalg.norm(atoms.cell.reciprocal(), axis=1)
    for axis in np.flatnonzero(atoms.pbc):
        if heights[axis] < 2 * cutoff_A:
            return (
                f"cell height {heights[axis]:.3f} A along cell vector {axis} is less than "
                f"twice the cutoff (2 x {cutoff_A} A); this teacher uses the minimum image "
                "convention"
            )
    return None


def _overlap(atoms: Atoms) -> str | None:
    """The closest pair (periodic images included) if closer than ``MIN_DISTANCE_A``."""
    first, second, distance = neighbor_list("ijd", atoms, MIN_DISTANCE_A)
    if distance.size == 0:
        return None
    k = int(np.argmin(distance))
    i, j = sorted((int(first[k]), int(second[k])))
    pair = f"atoms {i} and {j}" if i != j else f"atom {i} and its own periodic image"
    return f"{pair} are {distance[k]:.3f} A apart (closer than {MIN_DISTANCE_A} A): overlapping atoms"
