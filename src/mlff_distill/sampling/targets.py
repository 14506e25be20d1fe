"""Targets: the systems the user will simulate with the student (the ``target.systems`` of the config).

A target is a molecule (an ASE G2 name or a file of one non-periodic structure), a box of molecules
packed at a mass density (g/cm^3), a built-in crystal (`ase.build.bulk`, repeated, with vacancies if
asked), or a periodic structure from a file (a crystal, an interface, a solvated molecule), with
the temperatures (K) it must hold at. `targets_from` reads and checks the
config's systems, `target_start` makes a fresh start structure of a target for teacher MD, and
`target_of_size` a periodic system of a target of about a number of atoms, for timing.
Start structures carry ``info = {"seed": name, "target": name}``; packed boxes also carry
``atoms.arrays["molecule_index"]`` (see `mlff_distill.sampling.boxes.pack_box`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from ase import Atoms
from ase.build import molecule as g2_molecule
from ase.collections import g2
from ase.io import read

from mlff_distill.sampling.boxes import pack_box, replicated, scaled_counts
from mlff_distill.sampling.seeds import bulk_crystal

KINDS = ("molecule", "box", "structure")
_SYSTEM_KEYS = {"name", "temperatures_K", "molecule", "box", "density_g_per_cm3", "file", "crystal"}


@dataclass(frozen=True)
class Target:
    """One system to simulate. ``kind`` "molecule": ``molecules`` holds it (and ``counts`` 1 of it);
    "box": ``counts`` (molecule -> copies) of ``molecules`` at ``density_g_per_cm3``;
    "structure": a periodic ``structure`` (of a file, or a built-in crystal)."""

    name: str
    kind: str  # one of KINDS
    temperatures_K: tuple[float, ...]
    counts: dict[str, int]
    molecules: dict[str, Atoms]
    density_g_per_cm3: float | None
    structure: Atoms | None


def targets_from(systems: Sequence[Mapping]) -> list[Target]:
    """The targets of ``target.systems`` (`TargetSettings.systems`: dicts with ``name``,
    ``temperatures_K`` and exactly one of ``molecule``, ``box`` with ``density_g_per_cm3``, ``file``,
    ``crystal``: ``{formula, structure, a_A, cubic, repeat, vacancies}``).

    Raises ValueError naming ``target.systems[i] (<name>)`` and the problem: a duplicate name, a
    missing or non-positive temperature or density, a molecule that is neither an ASE G2 name nor a
    readable file of one non-periodic structure, a file that is not one structure periodic in all
    three directions. (The config schema checks most of this too; these functions do not rely on it.)
    """
    targets: list[Target] = []
    names: set[str] = set()
    for index, system in enumerate(systems):
        name = system.get("name")
        where = f"target.systems[{index}] ({name})"
        if not isinstance(name, str) or not name:
            raise ValueError(f"{where}: needs a name")
        if name in names:
            raise ValueError(f"{where}: the name {name!r} is used twice; give each system its own name")
        names.add(name)
        unknown = sorted(set(system) - _SYSTEM_KEYS)
        if unknown:
            raise ValueError(f"{where}: unknown keys {unknown} (known: {sorted(_SYSTEM_KEYS)})")
        given = [key for key in ("molecule", "box", "file", "crystal") if system.get(key) is not None]
        if len(given) != 1:
            raise ValueError(f"{where}: give exactly one of molecule, box, file, crystal; got {given or 'none'}")
        temperatures = _temperatures_K(system.get("temperatures_K"), where)
        density = system.get("density_g_per_cm3")
        if given[0] != "box" and density is not None:
            raise ValueError(f"{where}: density_g_per_cm3 applies to a box only")
        if given[0] == "molecule":
            spec = str(system["molecule"])
            single = _molecule(spec, f"{where}: molecule")
            targets.append(Target(name, "molecule", temperatures, {spec: 1}, {spec: single}, None, None))
        elif given[0] == "box":
            if not _positive_number(density):
                raise ValueError(f"{where}: a box needs density_g_per_cm3 > 0 (g/cm^3), got {density!r}")
            counts = _counts(system["box"], where)
            molecules = {spec: _molecule(spec, f"{where}: box molecule") for spec in counts}
            targets.append(Target(name, "box", temperatures, counts, molecules, float(density), None))
        elif given[0] == "crystal":
            structure = _crystal(system["crystal"], where)
            targets.append(Target(name, "structure", temperatures, {}, {}, None, structure))
        else:
            structure = _periodic_structure(str(system["file"]), where)
            targets.append(Target(name, "structure", temperatures, {}, {}, None, structure))
    return targets


def target_start(target: Target, rng: np.random.Generator, min_distance_A: float) -> Atoms:
    """A fresh start structure of ``target``: its molecule; a newly packed box (`pack_box`, no two
    atoms of different molecules closer than ``min_distance_A``, Angstrom); a copy of its periodic
    structure. ``info``: ``{"seed": name, "target": name}``. A box that cannot be packed raises
    ValueError naming the target and the density."""
    if target.kind == "molecule":
        atoms = next(iter(target.molecules.values())).copy()
    elif target.kind == "box":
        atoms = _packed_box(target, target.counts, rng, min_distance_A)
    elif target.kind == "structure":
        atoms = target.structure.copy()
    else:
        raise ValueError(f"target {target.name}: unknown kind {target.kind!r} (one of {', '.join(KINDS)})")
    atoms.calc = None
    atoms.info = {"seed": target.name, "target": target.name}
    return atoms


def target_of_size(target: Target, n_atoms: int, rng: np.random.Generator, min_distance_A: float) -> Atoms:
    """A periodic system of ``target`` with about ``n_atoms`` atoms (for timing at several sizes): a
    box packed with its composition scaled to the size (`scaled_counts`) at its density; a periodic
    structure repeated to the size (`replicated`). A molecule target raises ValueError (it is not
    periodic). ``info``: ``seed`` and ``target`` (the name), ``system`` (the name, for timing tables)."""
    if target.kind == "box":
        sizes = {spec: len(atoms) for spec, atoms in target.molecules.items()}
        atoms = _packed_box(target, scaled_counts(target.counts, sizes, n_atoms), rng, min_distance_A)
    elif target.kind == "structure":
        atoms = replicated(target.structure, n_atoms)
    else:
        raise ValueError(f"target {target.name}: a {target.kind} is not periodic; only boxes and files have sizes")
    atoms.calc = None
    atoms.info = {"seed": target.name, "target": target.name, "system": target.name}
    return atoms


def _packed_box(target: Target, counts: Mapping[str, int], rng: np.random.Generator, min_distance_A: float) -> Atoms:
    try:
        return pack_box(
            [(target.molecules[spec], count) for spec, count in counts.items()],
            target.density_g_per_cm3,
            rng,
            min_distance_A,
        )
    except ValueError as error:
        raise ValueError(f"target {target.name}: {error}") from error


def _positive_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _temperatures_K(values: object, where: str) -> tuple[float, ...]:
    if not isinstance(values, (list, tuple)) or not values or not all(_positive_number(t) for t in values):
        raise ValueError(f"{where}: temperatures_K must be a non-empty list of temperatures > 0 (K), got {values!r}")
    return tuple(float(t) for t in values)


def _counts(box: object, where: str) -> dict[str, int]:
    if not isinstance(box, Mapping) or not box:
        raise ValueError(f"{where}: box must map molecules to numbers of copies, got {box!r}")
    for spec, count in box.items():
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"{where}: box {spec!r}: the number of copies must be an integer >= 1, got {count!r}")
    return {str(spec): int(count) for spec, count in box.items()}


def _read_frames(path: Path, where: str) -> list[Atoms]:
    try:
        frames = read(path, index=":")
    except Exception as error:  # ASE raises many kinds, depending on the format
        raise ValueError(f"{where} {str(path)!r} cannot be read by ASE: {type(error).__name__}: {error}") from error
    frames = [frames] if isinstance(frames, Atoms) else list(frames)
    if len(frames) != 1 or len(frames[0]) == 0:
        raise ValueError(f"{where} {str(path)!r} holds {len(frames)} structures; give a file of exactly one")
    return frames


def _molecule(spec: str, where: str) -> Atoms:
    """An ASE G2 molecule by name, else the one non-periodic structure of the file ``spec``."""
    if spec in g2.names:
        atoms = g2_molecule(spec)
    elif Path(spec).is_file():
        atoms = _read_frames(Path(spec), where)[0]
        if atoms.pbc.any():
            raise ValueError(
                f"{where} {spec!r} is periodic (pbc={atoms.pbc.tolist()}); a molecule is not periodic: "
                "use file: for a periodic structure"
            )
    else:
        raise ValueError(f"{where} {spec!r} is neither an ASE G2 molecule name nor a file")
    return Atoms(numbers=atoms.numbers, positions=atoms.positions)


def _periodic_structure(spec: str, where: str) -> Atoms:
    """The one structure of the file ``spec``, periodic in all three directions (numbers,
    positions, cell and, if the file has it, ``molecule_index``)."""
    if not Path(spec).is_file():
        raise ValueError(f"{where}: file {spec!r} does not exist")
    atoms = _read_frames(Path(spec), f"{where}: file")[0]
    if not atoms.pbc.all() or atoms.cell.rank < 3:
        raise ValueError(
            f"{where}: file {spec!r} is not periodic in all three directions (pbc={atoms.pbc.tolist()}); "
            "use molecule: for a molecule"
        )
    structure = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=True)
    if "molecule_index" in atoms.arrays:
        structure.arrays["molecule_index"] = np.asarray(atoms.arrays["molecule_index"], dtype=int)
    return structure


def _crystal(spec: Mapping, where: str) -> Atoms:
    """The crystal of ``spec`` (`bulk_crystal`; all keys given, as in a completed config),
    repeated ``repeat`` times along its cell vectors, less ``vacancies`` atoms spread evenly over
    the cell (atoms 0, n/v, 2n/v, ... of n)."""
    atoms = bulk_crystal(spec, f"{where}: crystal").repeat(tuple(spec["repeat"]))
    vacancies = int(spec["vacancies"])
    if not 0 <= vacancies < len(atoms):
        raise ValueError(f"{where}: crystal: {vacancies} vacancies in a cell of {len(atoms)} atoms")
    del atoms[[int(i) for i in np.linspace(0, len(atoms), vacancies, endpoint=False)]]
    return Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=True)
