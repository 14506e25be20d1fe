"""Any ASE calculator as a teacher, built by a factory named ``package.module:callable``.

Structures are evaluated one at a time (the calculator gets a copy of each). Energies in eV,
forces in eV/Angstrom, stress in eV/Angstrom^3 with ASE's sign convention.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from typing import Callable, Sequence

import numpy as np
from ase import Atoms
from ase.stress import voigt_6_to_full_3x3_stress

from mlff_distill.teachers.base import TeacherIdentity, TeacherOutput


class AseCalculatorTeacher:
    """The ASE calculator ``factory(**kwargs)`` as a single-model teacher.

    ``species`` (atomic numbers) and ``cutoff_A`` are what the calculator covers, when known;
    unknown is recorded as ``species=()`` and ``cutoff_A=0.0``, and the checks needing them skip.
    Whether forces are the energy's gradient cannot be known from outside: ``conservative`` is
    assumed True. The identity's ``weights_sha256`` hashes the factory string and ``kwargs``, not
    any weights the calculator may load itself.
    """

    handles_small_cells = True  # ASE calculators get the Atoms as they are, images and all
    handles_mixed_pbc = True

    def __init__(
        self,
        factory: str,
        kwargs: dict | None = None,
        species: Sequence[int] | None = None,
        cutoff_A: float | None = None,
        name: str | None = None,
    ):
        kwargs = dict(kwargs or {})
        self.calculator = import_factory(factory)(**kwargs)
        recipe = json.dumps({"factory": factory, "kwargs": kwargs}, sort_keys=True, default=repr)
        self.identity = TeacherIdentity(
            name=name or f"ase/{factory}",
            kind="ase",
            source=factory,
            weights_sha256=hashlib.sha256(recipe.encode()).hexdigest(),
            cutoff_A=float(cutoff_A) if cutoff_A is not None else 0.0,
            species=tuple(sorted(species)) if species is not None else (),
            conservative=True,
            trained=True,
            extra={"kwargs": json.loads(recipe)["kwargs"]},
        )

    def compute(self, structures: Sequence[Atoms], compute_stress: bool = False) -> TeacherOutput:
        """Energies (eV), forces (eV/Angstrom) and, if ``compute_stress``, stress (eV/Angstrom^3;
        NaN for structures not periodic in all directions and when not asked)."""
        energies = np.zeros(len(structures))
        stress = np.full((len(structures), 3, 3), np.nan)
        forces = []
        for index, structure in enumerate(structures):
            atoms = structure.copy()
            atoms.set_constraint()  # labels are raw forces, whatever the constraints
            atoms.calc = self.calculator
            energies[index] = atoms.get_potential_energy()
            forces.append(np.array(atoms.get_forces(), dtype=np.float64))
            if compute_stress and atoms.pbc.all():
                stress[index] = voigt_6_to_full_3x3_stress(atoms.get_stress(voigt=True))
        forces_array = np.concatenate(forces) if forces else np.zeros((0, 3))
        return TeacherOutput(
            energy_eV=energies,
            forces_eV_per_A=forces_array,
            energy_std_eV=np.zeros(len(structures)),
            forces_std_eV_per_A=np.zeros_like(forces_array),
            stress_eV_per_A3=stress,
        )


def import_factory(factory: str) -> Callable:
    """The callable named ``package.module:attribute`` (attribute may be dotted)."""
    module_name, sep, attribute = factory.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"ASE calculator factory {factory!r} must look like 'package.module:callable'")
    try:
        target = importlib.import_module(module_name)
    except ImportError as error:
        raise ImportError(
            f"ASE calculator factory {factory!r}: cannot import module {module_name!r} ({error})"
        ) from error
    owner = module_name
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ImportError(f"ASE calculator factory {factory!r}: {owner!r} has no attribute {part!r}")
        target, owner = getattr(target, part), f"{owner}.{part}"
    if not callable(target):
        raise TypeError(f"ASE calculator factory {factory!r} is not callable")
    return target
