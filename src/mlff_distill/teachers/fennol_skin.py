"""A FeNNol teacher as its own MD runs it: the neighbour list kept across steps with a skin.

FeNNol's MD engine (``fennol.md``, keyword ``nblist_skin``) builds the neighbour list once for the
cutoff plus a skin and, on the following steps, only filters those pairs by the cutoff at the new
positions (``preprocessing.update_skin``, compiled by JAX), rebuilding in full every so many steps.
`FennolSkinCalculator` does the same for ASE: a full build when the atoms, their species or the
cell change, or when an atom has moved more than half the skin since the last build (so no pair
can have entered the cutoff unseen), or when the filtered pairs overflow FeNNol's padded capacity;
the skin update otherwise. Energies in eV, forces in eV/Angstrom, stress in eV/Angstrom^3 (ASE's
sign convention, Voigt order), the mean over the ensemble's members, as
`mlff_distill.teachers.fennol_ensemble.FennolEnsembleTeacher` labels them.

The speed table (`mlff_distill.evaluation.speed`) times it beside the labeling path: its calls on
one unchanged structure all take the skin update after the first, so its time is a step of FeNNol's
MD without the rebuilds, a lower bound on FeNNol's cost per MD step.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from mlff_distill.teachers.fennol_ensemble import FennolEnsembleTeacher, fennol_inputs, over_members

DEFAULT_SKIN_A = 1.0
FENNOL_SKIN = "fennol-skin"  # its name in the speed table


class FennolSkinCalculator(Calculator):
    """A FeNNol ensemble with the neighbour list reused across calls within ``skin_A`` (Angstrom).

    ``load_teacher`` makes the teacher on the first call (a `FennolEnsembleTeacher` of its own:
    its models' preprocessing is switched to the skin list, so it must not be the labeling one).
    ``rebuilds`` counts the full builds. Periodic cells (all three directions) and molecules.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]
    uses_torch_threads = False  # JAX: XLA's own thread pool, whatever torch is set to

    def __init__(
        self, load_teacher: Callable[[], FennolEnsembleTeacher], skin_A: float = DEFAULT_SKIN_A, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if not skin_A > 0:
            raise ValueError(f"skin_A={skin_A}: the skin must be a positive distance (Angstrom)")
        self._load_teacher = load_teacher
        self._teacher: FennolEnsembleTeacher | None = None
        self.skin_A = float(skin_A)
        self.rebuilds = 0
        self._built: dict[str, Any] | None = None  # what the last full build was made for, and its inputs

    @property
    def teacher(self) -> FennolEnsembleTeacher:
        """The teacher, loaded on first use."""
        if self._teacher is None:
            self._teacher = self._load_teacher()
        return self._teacher

    def calculate(
        self, atoms: Atoms | None = None, properties: list[str] | None = None, system_changes=all_changes
    ) -> None:
        properties = properties or ["energy"]
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        if atoms.pbc.any() and not atoms.pbc.all():
            raise ValueError("FeNNol needs periodicity in all three directions or none")
        with_stress = "stress" in properties and bool(atoms.pbc.all())
        inputs = fennol_inputs([atoms], self.teacher.input_dtype)
        processed = None if self._needs_rebuild(atoms) else self._skin_update(inputs["coordinates"])
        if processed is None:
            processed = self._rebuild(atoms, inputs)
        volume_A3 = atoms.get_volume() if with_stress else None
        energies, forces, stresses = zip(
            *(stack.evaluate(inputs_of, 1, volume_A3) for stack, inputs_of in zip(self.teacher.stacks, processed))
        )
        out = over_members(np.concatenate(energies), np.concatenate(forces), np.concatenate(stresses))
        self.results = {
            "energy": float(out.energy_eV[0]),
            "free_energy": float(out.energy_eV[0]),
            "forces": out.forces_eV_per_A.copy(),
        }
        if with_stress:
            self.results["stress"] = full_3x3_to_voigt_6_stress(out.stress_eV_per_A3[0])

    def _needs_rebuild(self, atoms: Atoms) -> bool:
        """True when the last build does not cover ``atoms``: none yet, other atoms or cell, or an
        atom moved more than half the skin since."""
        built = self._built
        if built is None or len(atoms) != len(built["numbers"]) or not np.array_equal(atoms.numbers, built["numbers"]):
            return True
        if not np.array_equal(atoms.pbc, built["pbc"]) or not np.allclose(atoms.cell.array, built["cell"], atol=0.0):
            return True
        moved = np.linalg.norm(atoms.positions - built["positions"], axis=1).max(initial=0.0)
        return bool(moved > 0.5 * self.skin_A)

    def _rebuild(self, atoms: Atoms, inputs: dict[str, np.ndarray]) -> list[dict]:
        """FeNNol's preprocessed inputs of every member group (`MemberStack`), its neighbour lists built
        in full on the cutoff plus the skin."""
        processed = []
        for stack in self.teacher.stacks:
            model = stack.model
            if model.preproc_state is None:
                model.preprocess(**inputs)  # creates FeNNol's preprocessing state
            _set_skin(model, self.skin_A)
            processed.append(model.preprocess(**inputs))
        self._built = {
            "numbers": atoms.numbers.copy(),
            "pbc": atoms.pbc.copy(),
            "cell": atoms.cell.array.copy(),
            "positions": atoms.positions.copy(),
            "processed": processed,
        }
        self.rebuilds += 1
        return processed

    def _skin_update(self, coordinates_A: np.ndarray) -> list[dict] | None:
        """The preprocessed inputs at the new coordinates, their neighbour lists filtered from the
        skin pairs of the last build; None when any list overflows its capacity (rebuild then)."""
        assert self._built is not None
        processed = []
        for stack, built in zip(self.teacher.stacks, self._built["processed"]):
            padded = np.zeros_like(np.asarray(built["coordinates"]))  # FeNNol's atom padding
            padded[: len(coordinates_A)] = coordinates_A
            updated = stack.model.preprocessing.update_skin({**built, "coordinates": padded})
            if any(bool(value.get("overflow", False)) for value in updated.values() if isinstance(value, dict)):
                return None
            processed.append(updated)
        return processed


def _set_skin(model: Any, skin_A: float) -> None:
    """Switch a FENNIX model's neighbour-list layers to a list on the cutoff plus ``skin_A``."""
    from flax.core import freeze, unfreeze  # FeNNol's own dependency, present where it runs

    state = unfreeze(model.preproc_state)
    state["layers_state"] = [{**layer, "nblist_skin": skin_A} for layer in state["layers_state"]]
    object.__setattr__(model, "preproc_state", freeze(state))
