"""The student: a small, fast PaiNN-style potential distilled from a teacher force field.

Units throughout: Angstrom, eV, eV/Angstrom, eV/Angstrom^3.
"""

from mlff_distill.reference.radial import bessel_cosine_basis
from mlff_distill.student.calculator import StudentCalculator
from mlff_distill.student.checkpoint import load_student, save_student
from mlff_distill.student.export import export_torchscript, load_torchscript
from mlff_distill.student.fitting import fit_reference_energies, predict, train_student
from mlff_distill.student.model import StudentPotential, energy_forces_stress
from mlff_distill.student.neighbours import neighbour_list

__all__ = [
    "StudentCalculator",
    "StudentPotential",
    "bessel_cosine_basis",
    "energy_forces_stress",
    "export_torchscript",
    "fit_reference_energies",
    "load_student",
    "load_torchscript",
    "neighbour_list",
    "predict",
    "save_student",
    "train_student",
]
