"""Seed structures: G2 molecules by name, built-in crystals, and the user's structure files.

Every seed records its name in ``atoms.info["seed"]``; periodic seeds can be replicated to a
minimum cell height (Angstrom).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from ase import Atoms
from ase.build import bulk, molecule
from ase.collections import g2
from ase.io import read

from mlff_distill.sampling.strategies import replicate_to_min_size
from mlff_distill.settings import SampleSettings

# The keys of `sample:` that name seed structures: those `seed_structures` reads, and the test files.
SEED_KEYS = ("molecules", "crystals", "seed_files", "test_files", "min_cell_length_A")


def seed_molecules(names: Sequence[str]) -> list[Atoms]:
    """Molecules by name from ASE's G2 database, with ``info["seed"]`` set."""
    unknown = [name for name in names if name not in g2.names]
    if unknown:
        raise ValueError(f"sample.molecules: {unknown} are not in ASE's G2 molecule database")
    seeds = []
    for name in names:
        atoms = molecule(name)
        atoms.info = {"seed": name}
        seeds.append(atoms)
    return seeds


def bulk_crystal(spec: Mapping, where: str) -> Atoms:
    """The bulk crystal of a ``{formula, structure, a_A, cubic}`` spec (`ase.build.bulk`; ``a_A``,
    the lattice constant, in Angstrom); a failure raises ValueError naming ``where``."""
    try:
        return bulk(spec["formula"], spec["structure"], a=spec["a_A"], cubic=spec["cubic"])
    except (ValueError, KeyError, RuntimeError) as error:
        raise ValueError(f"{where} {dict(spec)}: ase.build.bulk failed: {error}") from error


def seed_crystals(specs: Sequence[dict]) -> list[Atoms]:
    """Bulk crystals from ``{formula, structure, a_A, cubic}`` specs (`bulk_crystal`), with
    ``info["seed"]`` such as ``"Si-diamond"``."""
    seeds = []
    for index, spec in enumerate(specs):
        atoms = bulk_crystal(spec, f"sample.crystals[{index}]")
        atoms.info = {"seed": f"{spec['formula']}-{spec['structure']}"}
        seeds.append(atoms)
    return seeds


def read_seed_files(paths: Sequence[str | Path]) -> list[Atoms]:
    """Every frame of every file in ``paths`` (any format ASE reads), in order.

    Each seed gets ``info = {"seed": "<file name>:<frame index>"}`` and no calculator; cell and
    periodicity are kept. Raises ``ValueError`` naming the file when it cannot be read or holds no
    structures.
    """
    seeds = []
    for path in map(Path, paths):
        try:
            frames = read(path, index=":")
        except Exception as error:  # ASE raises many kinds, depending on the format
            raise ValueError(
                f"seed file {str(path)!r} cannot be read by ASE: {type(error).__name__}: {error}"
            ) from error
        if isinstance(frames, Atoms):
            frames = [frames]
        if not frames or all(len(atoms) == 0 for atoms in frames):
            raise ValueError(f"seed file {str(path)!r} holds no structures")
        for index, atoms in enumerate(frames):
            atoms.calc = None
            atoms.info = {"seed": f"{path.name}:{index}"}
            seeds.append(atoms)
    return seeds


def seed_structures(settings: SampleSettings) -> list[Atoms]:
    """The seeds: G2 molecules by name, built-in crystals, then every frame of ``seed_files`` (if
    any); periodic ones replicated to ``min_cell_length_A`` (Angstrom; 0: as they are)."""
    periodic = seed_crystals(settings.crystals) + read_seed_files(settings.seed_files)
    return seed_molecules(settings.molecules) + [
        replicate_to_min_size(atoms, settings.min_cell_length_A) for atoms in periodic
    ]
