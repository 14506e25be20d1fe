"""The closest contact of each pair of elements over a set of structures (Angstrom).

Where the teacher's labels never bring two elements closer than some distance, a student knows
nothing about them there: exploration and evaluation treat a much closer pair as a blow-up
(`mlff_distill.sampling.on_policy.ContactBounds`), and the student puts a repulsive wall below
it (`mlff_distill.student.StudentPotential`, ``contact_wall_A``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols
from vesin import NeighborList

from mlff_distill.store import read_labels

OUTLIER_FRACTION = 0.01  # the most structures that may lie below an nth-closest contact


def closest_contacts_A(structures: Iterable[Atoms], cutoff_A: float, nth: int = 1) -> dict[tuple[int, int], float]:
    """The closest distance (Angstrom, minimum image) between two atoms of each pair of elements
    ``(Z1, Z2)``, ``Z1 <= Z2``, over ``structures``; pairs never closer than ``cutoff_A`` are left out.

    ``nth`` > 1: the ``nth`` smallest of the structures' own closest distances of the pair (the
    closest that ``nth`` structures reach, so that a few outlying structures do not set it), but
    never with more than `OUTLIER_FRACTION` of the structures that have the pair within ``cutoff_A``
    below it (in a small set, the closest of all).
    """
    if nth < 1:
        raise ValueError(f"nth: must be >= 1, got {nth}")
    per_structure: dict[tuple[int, int], list[float]] = {}
    counts: dict[tuple[int, int], int] = {}
    for atoms in structures:
        if len(atoms) < 2:
            continue
        first, second, distances = NeighborList(cutoff=cutoff_A, full_list=False).compute(
            atoms.positions, atoms.cell.array, atoms.pbc, "ijd"
        )
        low, high = (
            np.minimum(atoms.numbers[first], atoms.numbers[second]),
            np.maximum(atoms.numbers[first], atoms.numbers[second]),
        )
        for pair in set(zip(low.tolist(), high.tolist())):
            shortest = float(distances[(low == pair[0]) & (high == pair[1])].min())
            kept = per_structure.setdefault(pair, [])
            kept.append(shortest)
            counts[pair] = counts.get(pair, 0) + 1
            if len(kept) > 2 * nth:  # only the nth smallest is wanted: keep the list short
                kept.sort()
                del kept[nth:]
    return {
        pair: sorted(kept)[max(min(nth, int(OUTLIER_FRACTION * counts[pair])), 1) - 1]
        for pair, kept in per_structure.items()
    }


def closest_labeled_contacts_A(
    store: Path, cutoff_A: float, split: str = "train", nth: int = 1
) -> dict[tuple[int, int], float]:
    """`closest_contacts_A` (``nth`` as there) of the structures of ``split`` in the label store ``store``."""
    labels = read_labels(store, split)
    return closest_contacts_A(map(labels.atoms, range(labels.n_structures)), cutoff_A, nth)


def describe_contacts(closest_A: dict[tuple[int, int], float]) -> str:
    """Contacts by element pair as "H-H 1.29, O-O 2.39" (Angstrom)."""
    return ", ".join(f"{chemical_symbols[a]}-{chemical_symbols[b]} {d:.2f}" for (a, b), d in sorted(closest_A.items()))
