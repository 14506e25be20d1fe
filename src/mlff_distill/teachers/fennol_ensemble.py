"""A FeNNol model or an ensemble of FeNNol models (``.fnx`` files) as a teacher.

The members of an ensemble share one architecture, so their weights are stacked and evaluated with
one ``jax.vmap``: one compilation and one call for all members. Structures are padded by FeNNol's
atom padding, so batches of different sizes do not trigger recompilation.
Models store energies in their own unit (Hartree for ANI); outputs here are eV and eV/Angstrom.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from ase import Atoms

from mlff_distill.teachers.base import TeacherIdentity, TeacherOutput, sha256_of_files


class FennolEnsembleTeacher:
    """Mean energy and forces over the members of a FeNNol ensemble, in eV and eV/Angstrom."""

    def __init__(self, model_files: Sequence[Path], name: str, batch_size: int = 32,
                 float64: bool = False):
        import jax

        if float64:
            jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp
        from ase.units import Hartree
        from fennol import FENNIX
        from fennol.utils.atomic_units import au

        self.model_files = [Path(p) for p in model_files]
        members = [FENNIX.load(str(p), use_atom_padding=True) for p in self.model_files]
        first = members[0]
        self._model = first
        self._variables = jax.tree_util.tree_map(
            lambda *leaves: jnp.stack(leaves), *[m.variables for m in members]
        )
        self._energy_and_forces = jax.jit(jax.vmap(first._energy_and_forces, in_axes=(0, None)))
        self._eV_per_model_unit = Hartree / au.get_multiplier(first.energy_unit)
        self._dtype = np.float64 if float64 else np.float32
        self.batch_size = batch_size
        species = tuple(sorted(_species_of(first)))
        self.identity = TeacherIdentity(
            name=name,
            kind="fennol",
            source=", ".join(str(p) for p in self.model_files),
            weights_sha256=sha256_of_files(self.model_files),
            cutoff_A=float(first.cutoff),
            species=species,
            conservative=True,
            trained=True,
            members=len(members),
            extra={"energy_unit_in_model": first.energy_unit, "float64": float64},
        )

    def compute(self, structures: Sequence[Atoms]) -> TeacherOutput:
        """Energies (eV) and forces (eV/Angstrom) of molecules or periodic cells."""
        energies, stds, forces = [], [], []
        for start in range(0, len(structures), self.batch_size):
            chunk = structures[start:start + self.batch_size]
            for group in _split_by_cell(chunk):
                e, e_std, f = self._compute_group(group)
                energies.append(e), stds.append(e_std), forces.append(f)
        # _split_by_cell keeps molecules batched and periodic cells one by one, in input order.
        return TeacherOutput(
            energy_eV=np.concatenate(energies) if energies else np.zeros(0),
            forces_eV_per_A=np.concatenate(forces) if forces else np.zeros((0, 3)),
            energy_std_eV=np.concatenate(stds) if stds else np.zeros(0),
        )

    def _compute_group(self, structures: Sequence[Atoms]):
        n_atoms = np.array([len(a) for a in structures], dtype=np.int32)
        inputs = {
            "species": np.concatenate([a.numbers for a in structures]).astype(np.int32),
            "coordinates": np.concatenate([a.positions for a in structures]).astype(self._dtype),
            "natoms": n_atoms,
            "batch_index": np.repeat(np.arange(len(structures)), n_atoms).astype(np.int32),
        }
        if structures[0].pbc.all():
            cell = structures[0].cell.array.astype(self._dtype)
            inputs["cells"] = cell.reshape(1, 3, 3)
            inputs["reciprocal_cells"] = np.linalg.inv(cell).reshape(1, 3, 3)
        processed = self._model.preprocess(**inputs)
        energy, forces, output = self._energy_and_forces(self._variables, processed)
        true_systems = np.asarray(output["true_sys"][0], dtype=bool)
        true_atoms = np.asarray(output["true_atoms"][0], dtype=bool)
        energy = np.asarray(energy, dtype=np.float64)[:, true_systems] * self._eV_per_model_unit
        forces = np.asarray(forces, dtype=np.float64)[:, true_atoms] * self._eV_per_model_unit
        return energy.mean(axis=0), energy.std(axis=0), forces.mean(axis=0)


def _species_of(model) -> set[int]:
    """Atomic numbers named in the ``species_order`` entries of the model's description."""
    from ase.data import atomic_numbers

    found: set[int] = set()

    def visit(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "species_order":
                    found.update(atomic_numbers[symbol] for symbol in value)
                visit(value)

    visit(model._input_args)
    return found


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
