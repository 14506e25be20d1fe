"""Labeled structures as flat arrays: the in-memory form of the label store.

Per-atom arrays are concatenated over structures; ``atoms_ptr[i]:atoms_ptr[i+1]`` selects the atoms
of structure ``i`` (the layout of the Zarr store, see `mlff_distill.store`).
Units: positions and cells in Angstrom, energies in eV, forces in eV/Angstrom, stress in
eV/Angstrom^3, Hessian-vector products in eV/Angstrom^2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from ase import Atoms


@dataclass
class LabeledArrays:
    """Structures and their teacher labels, ragged per-atom arrays stored flat."""

    numbers: np.ndarray  # [M] int, atomic numbers
    positions_A: np.ndarray  # [M, 3] float, Angstrom
    forces_eV_per_A: np.ndarray  # [M, 3] float, eV/Angstrom
    energy_eV: np.ndarray  # [N] float, eV
    atoms_ptr: np.ndarray  # [N + 1] int, offsets into the per-atom arrays
    cell_A: np.ndarray  # [N, 3, 3] float, Angstrom (zeros for molecules)
    pbc: np.ndarray  # [N, 3] bool
    stress_eV_per_A3: np.ndarray | None = None  # [N, 3, 3], ASE's sign; NaN for molecules
    # Optional teacher Hessian signal, one direction per structure (see mlff_distill.teachers.hessian):
    hessian_direction: np.ndarray | None = None  # [M, 3], unit norm over each structure's coordinates
    hessian_product_eV_per_A2: np.ndarray | None = None  # [M, 3], the Hessian times that direction
    sample_index: np.ndarray | None = None  # [N] int, each structure's index in the sampled files (from the store)

    @property
    def has_hessian(self) -> bool:
        """True if the Hessian-vector labels are present."""
        return self.hessian_direction is not None and self.hessian_product_eV_per_A2 is not None

    @property
    def n_structures(self) -> int:
        return len(self.energy_eV)

    @property
    def n_atoms(self) -> np.ndarray:
        """Number of atoms of each structure, ``[N]``."""
        return np.diff(self.atoms_ptr)

    def atom_rows(self, indices: Sequence[int]) -> np.ndarray:
        """The rows of the per-atom arrays that hold the atoms of the structures at ``indices``, in that order."""
        if not len(indices):
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([np.arange(self.atoms_ptr[i], self.atoms_ptr[i + 1]) for i in indices])

    def subset(self, indices: Sequence[int]) -> "LabeledArrays":
        """The structures at ``indices``, in that order."""
        indices = np.asarray(indices, dtype=np.int64)
        atom_index = self.atom_rows(indices)
        ptr = np.concatenate([[0], np.cumsum(self.n_atoms[indices])]).astype(np.int64)
        return LabeledArrays(
            numbers=self.numbers[atom_index],
            positions_A=self.positions_A[atom_index],
            forces_eV_per_A=self.forces_eV_per_A[atom_index],
            energy_eV=self.energy_eV[indices],
            atoms_ptr=ptr,
            cell_A=self.cell_A[indices],
            pbc=self.pbc[indices],
            stress_eV_per_A3=None if self.stress_eV_per_A3 is None else self.stress_eV_per_A3[indices],
            hessian_direction=None if self.hessian_direction is None else self.hessian_direction[atom_index],
            hessian_product_eV_per_A2=(
                None if self.hessian_product_eV_per_A2 is None else self.hessian_product_eV_per_A2[atom_index]
            ),
            sample_index=None if self.sample_index is None else self.sample_index[indices],
        )

    def atoms(self, index: int) -> Atoms:
        """Structure ``index`` as ASE ``Atoms`` (no calculator attached)."""
        lo, hi = self.atoms_ptr[index], self.atoms_ptr[index + 1]
        return Atoms(
            numbers=self.numbers[lo:hi],
            positions=self.positions_A[lo:hi],
            cell=self.cell_A[index],
            pbc=self.pbc[index],
        )


def concatenate_structures(structures: Sequence[Atoms]) -> dict[str, np.ndarray]:
    """Flatten ``structures`` into ``numbers, positions_A, atoms_ptr, cell_A, pbc`` arrays."""
    n_atoms = np.array([len(a) for a in structures], dtype=np.int64)
    return {
        "numbers": np.concatenate([a.numbers for a in structures]).astype(np.int64)
        if len(structures)
        else np.zeros(0, dtype=np.int64),
        "positions_A": np.concatenate([a.positions for a in structures]).astype(np.float64)
        if len(structures)
        else np.zeros((0, 3)),
        "atoms_ptr": np.concatenate([[0], np.cumsum(n_atoms)]).astype(np.int64),
        "cell_A": np.array([a.cell.array for a in structures], dtype=np.float64).reshape(-1, 3, 3),
        "pbc": np.array([a.pbc for a in structures], dtype=bool).reshape(-1, 3),
    }
