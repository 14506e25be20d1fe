"""Periodic systems of a given size built from seeds: packed boxes of molecules, repeated crystals.

Lengths in Angstrom, densities in atoms per Angstrom^3.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from ase import Atoms

from mlff_distill.data import LabeledArrays
from mlff_distill.sampling.strategies import cell_heights_A, random_rotation

# Liquid water and small organics hold about 0.1 atoms per cubic Angstrom.
LIQUID_DENSITY_ATOMS_PER_A3 = 0.1
MIN_DISTANCE_A = 1.2  # between atoms of different molecules in a packed box
_PLACEMENT_TRIES = 2000


def build_timing_systems(
    seeds: Sequence[Atoms],
    sizes: Sequence[int],
    cutoff_A: float,
    seed: int,
    density_atoms_per_A3: float = LIQUID_DENSITY_ATOMS_PER_A3,
    min_distance_A: float = MIN_DISTANCE_A,
) -> list[Atoms]:
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
        raise ValueError(
            "seeds: neither a crystal (periodic in x, y and z) nor a molecule "
            "(no periodic direction); slabs and wires are not supported here"
        )
    return [_packed(molecules, int(size), cutoff_A, density_atoms_per_A3, min_distance_A, rng) for size in sizes]


def _replicated(crystal: Atoms, size: int, cutoff_A: float) -> Atoms:
    """``crystal`` repeated to about ``size`` atoms, the supercell as near cubic as possible."""
    heights = cell_heights_A(crystal)
    factor = max(size / len(crystal), 1.0)
    side_A = (factor * np.prod(heights)) ** (1 / 3)
    low = np.maximum(np.floor(side_A / heights), 1).astype(int)
    at_least = np.ceil(cutoff_A / heights - 1e-9).astype(int)
    candidates = [np.maximum(low + np.array(step), at_least) for step in np.ndindex(2, 2, 2)]
    # Closest in number of atoms (log scale), then the most cubic.
    best = min(candidates, key=lambda r: (abs(np.log(np.prod(r) / factor)), np.ptp(r * heights)))
    system = crystal.repeat(tuple(int(r) for r in best))
    system.info = {
        "system": crystal.info.get("seed", crystal.get_chemical_formula()),
        "repeats": " ".join(map(str, best)),
    }
    return system


def _packed(
    molecules: Sequence[Atoms],
    size: int,
    cutoff_A: float,
    density: float,
    min_distance_A: float,
    rng: np.random.Generator,
) -> Atoms:
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
        raise ValueError(
            f"sizes: {size} atoms at {density} atoms/A^3 fill a box of {side_A:.2f} A, "
            f"smaller than the cutoff {cutoff_A} A; ask for more atoms"
        )
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
            raise ValueError(
                f"could not place molecule {index + 1} of {len(chosen)} "
                f"({molecule.get_chemical_formula()}) in a {side_A:.2f} A box with "
                f"min_distance_A={min_distance_A}; lower the density or the distance"
            )
        placed = np.concatenate([placed, trial])
        positions.append(trial)
        numbers.append(molecule.numbers)
    system = Atoms(numbers=np.concatenate(numbers), positions=np.concatenate(positions), cell=box, pbc=True)
    system.wrap()
    system.info = {"system": "packed molecules", "molecules": len(chosen)}
    return system


def _min_image_distance_A(new: np.ndarray, placed: np.ndarray, side_A: float) -> float:
    """Smallest minimum-image distance between rows of ``new`` and ``placed`` in a cubic box."""
    delta = new[:, None, :] - placed[None, :, :]
    delta -= side_A * np.round(delta / side_A)
    return float(np.sqrt((delta**2).sum(axis=-1).min()))


def cpu_timing_structures(
    data: LabeledArrays, atom_counts: list[int], cutoff_A: float, n_single: int = 8
) -> list[Atoms]:
    """The CPU path's timing set: the first ``n_single`` structures of ``data`` as they are, then
    one periodic system of about each of ``atom_counts`` atoms built from them
    (`build_timing_systems`: packed molecules, or repeated crystals)."""
    singles = [data.atoms(i) for i in range(min(n_single, data.n_structures))]
    if not singles:
        raise ValueError("the test split is empty: nothing to time the inference paths on")
    return singles + build_timing_systems(singles, atom_counts, cutoff_A, seed=0)
