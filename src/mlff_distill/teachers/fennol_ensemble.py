"""A FeNNol model or an ensemble of FeNNol models (``.fnx`` files) as a teacher.

Members that share one architecture (same model description, same weight shapes) have their weights
stacked and are evaluated with one ``jax.vmap``: one compilation and one call for all members.
Members that cannot be stacked are evaluated one by one. A single ``.fnx`` is an ensemble of one.
Structures are padded by FeNNol's atom padding, and the padded sizes are set up front from the
largest batches (`FennolEnsembleTeacher.reserve_capacity`), so batches of different sizes rarely
recompile.
Models store energies in their own unit (Hartree for ANI); outputs here are eV, eV/Angstrom and
eV/Angstrom^3.

FeNNol's neighbour list sums over every periodic image within the cutoff (it is not a minimum-image
list), so cells smaller than twice the cutoff are handled; periodicity must be all or nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers
from ase.units import Hartree

from mlff_distill.teachers.base import TeacherIdentity, TeacherOutput, default_cache_dir, sha256_of_files

# XLA's compiled teacher functions kept on disk, under the user cache (`default_cache_dir`).
JAX_CACHE_SUBDIR = "jax-cache"
JAX_CACHE_MAX_BYTES = 2**30


@dataclass
class MemberStack:
    """Members sharing one architecture: their stacked weights and vmapped functions."""

    model: Any  # the first member's FENNIX model: preprocessing and unit
    variables: Any  # weights with a leading member axis
    energy_and_forces: Callable
    energy_forces_and_virial: Callable
    eV_per_model_unit: float

    def evaluate(
        self, processed: dict, n_structures: int, volume_A3: float | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-member energy [K, n] (eV), forces [K, m, 3] (eV/A) and stress [K, n, 3, 3] (eV/A^3;
        NaN unless ``volume_A3``, the one periodic cell's volume, is given) of FeNNol's
        preprocessed inputs, padding removed."""
        if volume_A3 is not None:
            e, f, virial, output = self.energy_forces_and_virial(self.variables, processed)
        else:
            e, f, output = self.energy_and_forces(self.variables, processed)
        true_systems = np.asarray(output["true_sys"][0], dtype=bool)
        true_atoms = np.asarray(output["true_atoms"][0], dtype=bool)
        energy = np.asarray(e, dtype=np.float64)[:, true_systems] * self.eV_per_model_unit
        forces = np.asarray(f, dtype=np.float64)[:, true_atoms] * self.eV_per_model_unit
        if volume_A3 is None:
            return energy, forces, np.full((len(e), n_structures, 3, 3), np.nan)
        virial = np.asarray(virial, dtype=np.float64)[:, true_systems]
        return energy, forces, virial * self.eV_per_model_unit / volume_A3


class FennolEnsembleTeacher:
    """Mean and std over the members of a FeNNol ensemble of energy (eV), forces (eV/Angstrom)
    and, when asked, stress of periodic cells (eV/Angstrom^3, ASE's sign convention)."""

    handles_small_cells = True  # the neighbour list includes all periodic images within the cutoff
    uses_torch_threads = False  # JAX: XLA's own thread pool, whatever torch is set to
    handles_mixed_pbc = False  # FeNNol takes a cell periodic in all three directions or none

    def __init__(
        self,
        model_files: Sequence[Path],
        name: str,
        batch_size: int = 32,
        float64: bool = False,
        species: Sequence[int] | None = None,
    ):
        # JAX and FeNNol only for FeNNol teachers: heavy, and JAX settings must precede FeNNol's import
        import jax

        use_compilation_cache(jax)
        if float64:
            jax.config.update("jax_enable_x64", True)
        from fennol import FENNIX  # after JAX's precision is set

        self.model_files = [Path(p) for p in model_files]
        self._options = {"batch_size": batch_size, "float64": float64, "species": species}
        if not self.model_files:
            raise ValueError("a FeNNol ensemble needs at least one .fnx file")
        members = [FENNIX.load(str(p), use_atom_padding=True) for p in self.model_files]
        groups = [members] if _stackable(members) else [[m] for m in members]
        self.stacks = [_make_stack(group) for group in groups]  # one when all members share an architecture
        self.input_dtype = np.float64 if float64 else np.float32  # of positions and cells given to FeNNol
        self.batch_size = batch_size
        first = members[0]
        self.identity = TeacherIdentity(
            name=name,
            kind="fennol",
            source=", ".join(str(p) for p in self.model_files),
            weights_sha256=sha256_of_files(self.model_files),
            cutoff_A=max(float(m.cutoff) for m in members),
            species=tuple(sorted(species if species is not None else _species_of(first))),
            conservative=True,
            trained=True,
            members=len(members),
            extra={"energy_unit_in_model": first.energy_unit, "float64": float64, "stacked": len(self.stacks) == 1},
        )

    def member(self, index: int) -> FennolEnsembleTeacher:
        """Member ``index`` (from 0) of this ensemble as a teacher of its own, with the same options:
        what a user could run in place of the ensemble, at a fraction of its cost."""
        if not 0 <= index < len(self.model_files):
            raise IndexError(f"member {index}: this ensemble has {len(self.model_files)} members")
        name = f"{self.identity.name} member {index + 1} of {len(self.model_files)}"
        return FennolEnsembleTeacher([self.model_files[index]], name=name, **self._options)

    def compute(self, structures: Sequence[Atoms], compute_stress: bool = False) -> TeacherOutput:
        """Energies (eV), forces (eV/Angstrom) and, if ``compute_stress``, stress (eV/Angstrom^3,
        NaN for molecules and when not asked) of molecules or cells periodic in all directions."""
        if len(structures) > self.batch_size:  # one batch sizes the arrays by itself
            self.reserve_capacity(structures)
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        for start in range(0, len(structures), self.batch_size):
            for group in _split_by_cell(structures[start : start + self.batch_size]):
                parts.append(self._compute_group(group, compute_stress))
        # Per-member energies [K, N], forces [K, M, 3], stress [K, N, 3, 3], in input order.
        energy = np.concatenate([p[0] for p in parts], axis=1) if parts else np.zeros((1, 0))
        forces = np.concatenate([p[1] for p in parts], axis=1) if parts else np.zeros((1, 0, 3))
        stress = np.concatenate([p[2] for p in parts], axis=1) if parts else np.zeros((1, 0, 3, 3))
        return over_members(energy, forces, stress)

    def reserve_capacity(self, structures: Sequence[Atoms]) -> None:
        """Size FeNNol's padded arrays for the largest batches of molecules among ``structures``.

        FeNNol pads atoms, neighbour pairs, angles and the atoms of each species to capacities
        that grow (pairs by 5 %) whenever a batch needs more, and each new capacity is a new shape
        that JAX compiles afresh, which costs far more than evaluating a batch. Preprocessing the
        ``batch_size`` molecules with the most atoms, and those with
        the most atoms of each species, sets the capacities at once. `compute` calls this on its
        own structures when they make more than one batch (not per MD step); the label stage calls
        it with the largest molecules of all its shards.
        """
        for batch in largest_molecules(structures, self.batch_size):
            for stack in self.stacks:
                stack.model.preprocess(**fennol_inputs(batch, self.input_dtype))

    def _compute_group(
        self, structures: Sequence[Atoms], compute_stress: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-member energy [K, n] (eV), forces [K, m, 3] (eV/A), stress [K, n, 3, 3] (eV/A^3)
        of molecules, or of one periodic cell."""
        inputs = fennol_inputs(structures, self.input_dtype)
        with_stress = compute_stress and "cells" in inputs
        volume_A3 = structures[0].get_volume() if with_stress else None
        energies, forces, stresses = zip(
            *(stack.evaluate(stack.model.preprocess(**inputs), len(structures), volume_A3) for stack in self.stacks)
        )
        return np.concatenate(energies), np.concatenate(forces), np.concatenate(stresses)


def over_members(energy_eV: np.ndarray, forces_eV_per_A: np.ndarray, stress_eV_per_A3: np.ndarray) -> TeacherOutput:
    """The ensemble's labels from per-member energies [K, N], forces [K, M, 3] and stress [K, N, 3, 3]:
    their mean, with the standard deviation over members of energies and forces."""
    return TeacherOutput(
        energy_eV=energy_eV.mean(axis=0),
        forces_eV_per_A=forces_eV_per_A.mean(axis=0),
        energy_std_eV=energy_eV.std(axis=0),
        forces_std_eV_per_A=forces_eV_per_A.std(axis=0),
        stress_eV_per_A3=stress_eV_per_A3.mean(axis=0),
    )


def use_compilation_cache(jax) -> None:
    """Keep JAX's compiled functions in `default_cache_dir`/jax-cache, unless the user chose a cache
    (``JAX_COMPILATION_CACHE_DIR``): every job and labeling worker that loads the same teacher for
    the same padded shapes then reads what an earlier process compiled (a first call of the
    ANI-1x ensemble on a 24-atom box: 2.4 s instead of 6.9 s here). Every program is kept, however
    quick its compilation (loading the weights alone compiles dozens of small ones), and the least
    recently used are deleted beyond `JAX_CACHE_MAX_BYTES` (which also makes JAX lock the cache
    while it writes, for the processes that share it)."""
    if jax.config.jax_compilation_cache_dir is None:
        jax.config.update("jax_compilation_cache_dir", str(default_cache_dir() / JAX_CACHE_SUBDIR))
        jax.config.update("jax_compilation_cache_max_size", JAX_CACHE_MAX_BYTES)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def _architecture(model) -> tuple:
    """What must agree for two FeNNol models to share one compiled function."""
    import jax  # JAX only where a FeNNol teacher runs (heavy; see FennolEnsembleTeacher)

    leaves, tree = jax.tree_util.tree_flatten(model.variables)
    shapes = tuple((np.shape(leaf), np.asarray(leaf).dtype.str) for leaf in leaves)
    return repr(model._input_args), repr(model.energy_terms), tree, shapes


def _stackable(members: Sequence[Any]) -> bool:
    """True when all members have the same description, weight tree and weight shapes."""
    first = _architecture(members[0])
    return all(_architecture(m) == first for m in members[1:])


def _make_stack(members: Sequence[Any]) -> MemberStack:
    """Stack the weights of ``members`` (one architecture) and vmap the first's functions."""
    # JAX and FeNNol only where a FeNNol teacher runs (heavy; see FennolEnsembleTeacher)
    import jax
    import jax.numpy as jnp
    from fennol.utils.atomic_units import au

    first = members[0]
    return MemberStack(
        model=first,
        # stacked by NumPy: jnp.stack would compile an XLA program for every distinct weight shape
        variables=jax.tree_util.tree_map(lambda *x: jnp.asarray(np.stack(x)), *[m.variables for m in members]),
        energy_and_forces=jax.jit(jax.vmap(first._energy_and_forces, in_axes=(0, None))),
        energy_forces_and_virial=jax.jit(jax.vmap(first._energy_and_forces_and_virial, in_axes=(0, None))),
        eV_per_model_unit=Hartree / au.get_multiplier(first.energy_unit),
    )


def _species_of(model) -> set[int]:
    """Atomic numbers the model's description names: its ``species_order`` entries, else (MACE)
    elements 1..``zmax``; empty when it names neither."""
    found: set[int] = set()
    zmax: list[int] = []

    def visit(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "species_order":
                    symbols = value.split(",") if isinstance(value, str) else value
                    found.update(atomic_numbers[s.strip()] for s in symbols)
                elif key == "zmax" and isinstance(value, int):
                    zmax.append(value)
                visit(value)

    visit(model._input_args)
    return found or (set(range(1, min(zmax) + 1)) if zmax else set())


def largest_molecules(structures: Sequence[Atoms], count: int) -> list[list[Atoms]]:
    """The ``count`` non-periodic structures with the most atoms, then the ``count`` with the most
    atoms of each species present: one list per size (none without molecules)."""
    molecules = [atoms for atoms in structures if not atoms.pbc.any()]
    species = sorted({int(z) for atoms in molecules for z in atoms.numbers})
    sizes = [len] + [lambda atoms, z=z: int((atoms.numbers == z).sum()) for z in species]
    return [sorted(molecules, key=size)[-count:] for size in sizes] if molecules else []


def _split_by_cell(structures: Sequence[Atoms]) -> list[list[Atoms]]:
    """Consecutive molecules go together; each periodic cell goes alone, keeping input order."""
    groups: list[list[Atoms]] = []
    for atoms in structures:
        if atoms.pbc.any():
            if not atoms.pbc.all():
                raise ValueError("FeNNol needs periodicity in all three directions or none")
            groups.append([atoms])
        elif groups and not groups[-1][0].pbc.any():
            groups[-1].append(atoms)
        else:
            groups.append([atoms])
    return groups


def fennol_inputs(structures: Sequence[Atoms], dtype: type) -> dict[str, np.ndarray]:
    """FeNNol's raw inputs for a batch of molecules, or for one periodic cell (Angstrom)."""
    n_atoms = np.array([len(a) for a in structures], dtype=np.int32)
    inputs = {
        "species": np.concatenate([a.numbers for a in structures]).astype(np.int32),
        "coordinates": np.concatenate([a.positions for a in structures]).astype(dtype),
        "natoms": n_atoms,
        "batch_index": np.repeat(np.arange(len(structures)), n_atoms).astype(np.int32),
    }
    if structures[0].pbc.all():
        if len(structures) != 1:
            raise ValueError("FeNNol takes one periodic cell per call")
        cell = structures[0].cell.array.astype(dtype)
        inputs["cells"] = cell.reshape(1, 3, 3)
        inputs["reciprocal_cells"] = np.linalg.inv(cell).reshape(1, 3, 3)
    return inputs
