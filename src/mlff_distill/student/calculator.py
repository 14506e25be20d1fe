"""ASE calculator for a trained student (energy in eV, forces in eV/Angstrom, stress in eV/Angstrom^3)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from mlff_distill.student.checkpoint import load_student
from mlff_distill.student.model import StudentPotential, energy_forces_stress


class StudentCalculator(Calculator):
    """Student potential as an ASE calculator.

    Stress (Voigt order, ASE sign convention) is computed only for structures periodic in all
    three directions; asking for it on others raises ``PropertyNotImplementedError``.

    Args:
        model: a `StudentPotential` or the path of a checkpoint written by `save_student`.
        device: torch device to run on.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, model: Union[StudentPotential, str, Path], device: str = "cpu", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(model, StudentPotential):
            model, _ = load_student(model, map_location=device)
        self.model = model.to(device).eval()
        self.device = torch.device(device)

    def calculate(
        self,
        atoms: Optional[Atoms] = None,
        properties: Optional[list[str]] = None,
        system_changes: list[str] = all_changes,
    ) -> None:
        properties = properties or ["energy"]
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        with_stress = "stress" in properties and bool(atoms.pbc.all())
        energy, forces, stress = energy_forces_stress(
            self.model,
            torch.as_tensor(atoms.numbers, device=self.device),
            torch.as_tensor(atoms.positions, device=self.device),
            torch.as_tensor(atoms.cell.array, device=self.device)[None],
            torch.as_tensor(atoms.pbc, device=self.device)[None],
            torch.tensor([0, len(atoms)], device=self.device),
            compute_stress=with_stress,
        )
        self.results["energy"] = self.results["free_energy"] = float(energy[0])
        self.results["forces"] = forces.detach().cpu().numpy().astype(np.float64)
        if with_stress:
            self.results["stress"] = full_3x3_to_voigt_6_stress(stress[0].detach().cpu().numpy().astype(np.float64))
