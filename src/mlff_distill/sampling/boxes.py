"""Periodic systems built from molecules and crystals: packed boxes, repeated cells, timing systems.

`pack_box` packs copies of molecules at random positions and orientations into a cubic periodic
box of a given mass density; `scaled_counts` scales a box's composition to a number of atoms;
`replicated` repeats a periodic structure to about a number of atoms. Packed boxes carry
``atoms.arrays["molecule_index"]`` (which molecule each atom belongs to; a molecule's atoms are
contiguous and whole: not wrapped into the cell).

Lengths in Angstrom, mass densities in g/cm^3, number densities in atoms per Angstrom^3.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from ase import Atoms, units
from ase.data import covalent_radii, vdw_radii

from mlff_distill.data import LabeledArrays
from mlff_distill.sampling.strategies import cell_heights_A

# Liquid water and small organics hold about 0.1 atoms per cubic Angstrom.
LIQUID_DENSITY_ATOMS_PER_A3 = 0.1
MIN_DISTANCE_A = 1.2  # between atoms of different molecules in a packed box (timing systems)
G_PER_CM3_PER_AMU_PER_A3 = units._amu * 1e27  # 1 amu/A^3 = 1.6605 g/cm^3 (kg -> g: 1e3; A^3 -> cm^3: 1e24)
# Random placement: trials (a random position and orientation each) are tested in batches; a molecule
# that finds no free place in _PLACEMENT_TRIES trials restarts the whole box, at most _BOX_ATTEMPTS times.
_TRIAL_BATCH = 16
_PLACEMENT_TRIES = 2000
_BOX_ATTEMPTS = 3


def pack_box(
    molecules: Sequence[tuple[Atoms, int]],
    density_g_per_cm3: float,
    rng: np.random.Generator,
    min_distance_A: float,
) -> Atoms:
    """A cubic periodic box of ``count`` copies of each ``(molecule, count)`` at random positions and
    orientations, at the mass density ``density_g_per_cm3`` (the box volume is the molecules' total
    mass over the density), no two atoms of different molecules closer than ``min_distance_A``
    (minimum image: periodic images included).

    Molecules keep their shape and order: the copies of the first molecule, then of the second, ...,
    each copy's atoms contiguous and whole (its centre is inside the box, its atoms may stick out);
    ``atoms.arrays["molecule_index"]`` numbers the copies 0, 1, ... in that order. Larger molecules
    are placed first, each at the first of up to ``_PLACEMENT_TRIES`` random trials that is free,
    and the whole box is tried again up to ``_BOX_ATTEMPTS`` times.

    Raises ValueError naming the density: up front when the molecules' van der Waals volume (a
    lower bound, `vdw_volume_lower_bound_A3`) exceeds the box, or when a molecule is too wide for
    the box; and when the molecules could not be placed.
    """
    if not molecules:
        raise ValueError("pack_box: no molecules to pack")
    if not density_g_per_cm3 > 0:
        raise ValueError(f"density_g_per_cm3={density_g_per_cm3}: must be positive")
    if min_distance_A < 0:
        raise ValueError(f"min_distance_A={min_distance_A}: must be >= 0")
    for molecule, count in molecules:
        if isinstance(count, bool) or int(count) != count or count < 1 or len(molecule) == 0:
            raise ValueError(f"pack_box: {count} copies of {molecule.get_chemical_formula()!r}: need >= 1 of >= 1 atom")
    copies = [molecule for molecule, count in molecules for _ in range(int(count))]
    mass_amu = sum(float(molecule.get_masses().sum()) * count for molecule, count in molecules)
    volume_A3 = mass_amu * G_PER_CM3_PER_AMU_PER_A3 / density_g_per_cm3
    where = f"density_g_per_cm3={density_g_per_cm3}"
    vdw_A3 = sum(vdw_volume_lower_bound_A3(molecule) * count for molecule, count in molecules)
    if vdw_A3 > volume_A3:
        raise ValueError(
            f"{where}: the molecules' van der Waals volume (at least {vdw_A3:.0f} A^3) exceeds the box "
            f"({volume_A3:.0f} A^3); no liquid or solid is that dense: lower the density"
        )
    system = _place(copies, volume_A3 ** (1 / 3), rng, min_distance_A, where)
    system.info = {"density_g_per_cm3": float(density_g_per_cm3), "molecules": len(copies)}
    return system


def vdw_volume_lower_bound_A3(molecule: Atoms) -> float:
    """A lower bound on a molecule's van der Waals volume (Angstrom^3): the union of its atoms'
    spheres (ASE's van der Waals radii; covalent radii where none is tabulated) is at least the sum
    of the spheres less all their pairwise overlaps (Bonferroni), and at least its largest sphere.
    For water it gives 18 A^3 (the union is about 19 A^3; liquid water has 30 A^3 per molecule)."""
    vdw, covalent = vdw_radii[molecule.numbers], covalent_radii[molecule.numbers]
    radii = np.where(np.isnan(vdw), covalent, vdw)
    spheres = 4 / 3 * np.pi * radii**3
    first, second = np.triu_indices(len(molecule), k=1)
    d = np.linalg.norm(molecule.positions[first] - molecule.positions[second], axis=1)
    r1, r2 = radii[first], radii[second]
    overlap = np.zeros_like(d)
    inside = d <= np.abs(r1 - r2)  # the smaller sphere lies inside the larger
    overlap[inside] = np.minimum(spheres[first], spheres[second])[inside]
    lens = ~inside & (d < r1 + r2)
    dl, a, b = d[lens], r1[lens], r2[lens]
    overlap[lens] = np.pi * (a + b - dl) ** 2 * (dl**2 + 2 * dl * (a + b) - 3 * (a - b) ** 2) / (12 * dl)
    return float(max(spheres.sum() - overlap.sum(), spheres.max()))


def scaled_counts(counts: Mapping[str, int], molecule_sizes: Mapping[str, int], n_atoms: int) -> dict[str, int]:
    """``counts`` (molecule -> copies) scaled by one factor to about ``n_atoms`` atoms
    (``molecule_sizes``: atoms per molecule), each count rounded and at least 1."""
    missing = sorted(set(counts) - set(molecule_sizes))
    if missing:
        raise ValueError(f"scaled_counts: no size for {missing}")
    if n_atoms < 1 or not counts:
        raise ValueError(f"scaled_counts: need molecules and n_atoms >= 1, got {dict(counts)} and {n_atoms}")
    total = sum(count * molecule_sizes[name] for name, count in counts.items())
    factor = n_atoms / total
    return {name: max(1, int(np.floor(count * factor + 0.5))) for name, count in counts.items()}


def replicated(atoms: Atoms, size: int, min_height_A: float = 0.0) -> Atoms:
    """A structure periodic in all three directions repeated n1 x n2 x n3 to the number of atoms
    closest to ``size`` (log scale), the supercell as near cubic as possible, every cell height at
    least ``min_height_A`` (Angstrom). ``arrays["molecule_index"]``, when present, is offset per
    copy so that every copy's molecules keep their own numbers. ``info``: ``system`` (the source's
    ``seed``, else its formula) and ``repeats``."""
    if not atoms.pbc.all():
        raise ValueError(f"replicated: {atoms.get_chemical_formula()} is not periodic in all three directions")
    heights = cell_heights_A(atoms)
    factor = max(size / len(atoms), 1.0)
    side_A = (factor * np.prod(heights)) ** (1 / 3)
    low = np.maximum(np.floor(side_A / heights), 1).astype(int)
    at_least = np.ceil(min_height_A / heights - 1e-9).astype(int)
    candidates = [np.maximum(low + np.array(step), at_least) for step in np.ndindex(2, 2, 2)]
    # Closest in number of atoms (log scale), then the most cubic.
    best = min(candidates, key=lambda r: (abs(np.log(np.prod(r) / factor)), np.ptp(r * heights)))
    system = atoms.repeat(tuple(int(r) for r in best))
    if "molecule_index" in atoms.arrays:
        index = np.asarray(atoms.arrays["molecule_index"], dtype=int)
        n_copies = int(np.prod(best))
        offsets = np.repeat(np.arange(n_copies) * (int(index.max()) + 1), len(atoms))  # ase repeats copy by copy
        system.arrays["molecule_index"] = np.tile(index, n_copies) + offsets
    system.info = {
        "system": atoms.info.get("seed", atoms.get_chemical_formula()),
        "repeats": " ".join(map(str, best)),
    }
    return system


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
        return [replicated(crystals[0], int(size), cutoff_A) for size in sizes]
    if not molecules:
        raise ValueError(
            "seeds: neither a crystal (periodic in x, y and z) nor a molecule "
            "(no periodic direction); slabs and wires are not supported here"
        )
    return [_packed(molecules, int(size), cutoff_A, density_atoms_per_A3, min_distance_A, rng) for size in sizes]


def _packed(
    molecules: Sequence[Atoms],
    size: int,
    cutoff_A: float,
    density: float,
    min_distance_A: float,
    rng: np.random.Generator,
) -> Atoms:
    """Random copies of ``molecules`` at random orientations in a cubic box of ``density`` (atoms
    per Angstrom^3), wrapped into the cell."""
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
    system = _place(chosen, side_A, rng, min_distance_A, f"{density} atoms/A^3")
    system.wrap()
    system.info = {"system": "packed molecules", "molecules": len(chosen)}
    return system


def _place(
    copies: Sequence[Atoms], side_A: float, rng: np.random.Generator, min_distance_A: float, where: str
) -> Atoms:
    """``copies`` (one Atoms per molecule, in output order) placed at random in a cubic periodic box
    of ``side_A``, no two atoms of different molecules closer than ``min_distance_A`` (minimum
    image); see `pack_box`. ``where`` (the density) starts every error message."""
    centred = [molecule.positions - molecule.positions.mean(axis=0) for molecule in copies]
    widest = max(range(len(copies)), key=lambda i: _diameter_A(centred[i]))
    if _diameter_A(centred[widest]) + min_distance_A > side_A:
        raise ValueError(
            f"{where}: {copies[widest].get_chemical_formula()} ({_diameter_A(centred[widest]):.2f} A across) "
            f"would come closer than min_distance_A={min_distance_A} A to its own periodic image in a "
            f"{side_A:.2f} A box; use more molecules or a lower min_distance_A"
        )
    sizes = np.array([len(molecule) for molecule in copies])
    starts = np.concatenate([[0], np.cumsum(sizes)])
    order = np.argsort(-sizes, kind="stable")  # larger molecules first: they need the larger holes
    for _ in range(_BOX_ATTEMPTS):
        positions = np.zeros((starts[-1], 3))
        placed = np.zeros((starts[-1], 3))  # rows [:n_placed] hold the placed atoms, in placement order
        n_placed = 0
        for count, index in enumerate(order):
            trial = _free_place(centred[index], placed[:n_placed], side_A, rng, min_distance_A)
            if trial is None:
                break
            positions[starts[index] : starts[index + 1]] = trial
            placed[n_placed : n_placed + len(trial)] = trial
            n_placed += len(trial)
        else:
            system = Atoms(
                numbers=np.concatenate([molecule.numbers for molecule in copies]),
                positions=positions,
                cell=np.eye(3) * side_A,
                pbc=True,
            )
            system.arrays["molecule_index"] = np.repeat(np.arange(len(copies)), sizes)
            return system
    raise ValueError(
        f"{where}: could not place molecule {count + 1} of {len(copies)} "
        f"({copies[index].get_chemical_formula()}) in a {side_A:.2f} A box with no atoms of different "
        f"molecules closer than min_distance_A={min_distance_A} A ({_BOX_ATTEMPTS} attempts of "
        f"{_PLACEMENT_TRIES} random tries per molecule); lower the density or min_distance_A"
    )


def _free_place(
    centred: np.ndarray, placed: np.ndarray, side_A: float, rng: np.random.Generator, min_distance_A: float
) -> np.ndarray | None:
    """Positions of a molecule (``centred``: its atoms about their mean) at the first random
    position and orientation no closer than ``min_distance_A`` to any ``placed`` atom (minimum
    image in the cubic box), or None after ``_PLACEMENT_TRIES`` tries."""
    for _ in range(_PLACEMENT_TRIES // _TRIAL_BATCH):
        trials = np.einsum("bij,mj->bmi", _random_rotations(rng, _TRIAL_BATCH), centred)
        trials += rng.uniform(0.0, side_A, (_TRIAL_BATCH, 1, 3))
        if len(placed) == 0:
            return trials[0]
        delta = trials[:, :, None, :] - placed[None, None, :, :]
        delta -= side_A * np.round(delta / side_A)  # exact nearest image in a cubic box
        closest_sq = np.einsum("bmpk,bmpk->bmp", delta, delta).reshape(_TRIAL_BATCH, -1).min(axis=1)
        free = np.flatnonzero(closest_sq >= min_distance_A**2)
        if free.size:
            return trials[free[0]]
    return None


def _random_rotations(rng: np.random.Generator, count: int) -> np.ndarray:
    """``count`` rotation matrices [count, 3, 3] drawn uniformly (as `strategies.random_rotation`)."""
    q, r = np.linalg.qr(rng.normal(size=(count, 3, 3)))
    q = q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]
    q[np.linalg.det(q) < 0, :, 0] *= -1
    return q


def _diameter_A(positions: np.ndarray) -> float:
    """Largest distance between two rows of ``positions`` (0 for one atom)."""
    if len(positions) < 2:
        return 0.0
    return float(np.linalg.norm(positions[:, None, :] - positions[None, :, :], axis=-1).max())


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
