"""Export a student as an AOTInductor package (``.pt2``): the compiled path, compiled ahead of time.

The package holds the graph that `StudentCalculator(compiled=True)` runs under ``torch.compile``
(`calculator.energy_forces_stress_of_pairs`: the atom energies (learned, and the contact wall), and forces and stress
through ``torch.func.grad``), exported by ``torch.export`` with symbolic atom and pair counts,
compiled by Inductor into a shared library and packed with the weights and a JSON metadata entry
(teacher, training data, metrics, hyperparameters, species and reference energies). Its inputs are
one structure's neighbour pairs (found outside it, as the calculator does, by vesin's cell list),
so a call costs what a compiled call costs, without the first call's compilation and without
this package: ``ExportedStudentCalculator`` is the ASE calculator over it.

Inputs of the package's model, in order: species indices ``[N]`` (int64, positions in
``metadata["species"]``), positions ``[N, 3]`` and cell ``[3, 3]`` (float64, Angstrom), pbc
``[3]`` (bool), pair ``src [E]``, ``dst [E]`` (int64) and integer cell shifts ``[E, 3]`` (as
`neighbours.pairs_of_one_structure` gives them). Outputs: atom energies ``[N]`` (eV,
without the reference energies ``metadata["reference_energies_eV"]`` of each species), forces
``[N, 3]`` (eV/Angstrom) and stress ``[1, 3, 3]`` (eV/Angstrom^3, ASE's sign convention; NaN unless
periodic in all three directions).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress
from torch import nn
from torch.fx.experimental.proxy_tensor import make_fx

from mlff_distill.student.calculator import energy_forces_stress_of_pairs
from mlff_distill.student.model import StudentPotential
from mlff_distill.student.neighbours import pairs_of_one_structure

METADATA_KEY = "mlff_distill.json"


class _PairsModel(nn.Module):
    """`energy_forces_stress_of_pairs` of one structure, stress always computed (NaN if not periodic)."""

    def __init__(self, model: StudentPotential) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        species: torch.Tensor,
        positions_A: torch.Tensor,
        cell_A: torch.Tensor,
        pbc: torch.Tensor,
        src: torch.Tensor,
        dst: torch.Tensor,
        shifts: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch = torch.zeros_like(species)
        atom_energy, forces, stress = energy_forces_stress_of_pairs(
            self.model, species, positions_A, cell_A, pbc, src, dst, shifts, batch, True, functional=True
        )
        assert stress is not None
        return atom_energy, forces, stress


def _example_inputs(model: StudentPotential) -> tuple[torch.Tensor, ...]:
    """A small periodic structure's inputs (more than one atom and pair, so that no size is
    specialised to 0 or 1 by the export)."""
    rng = np.random.default_rng(0)
    cell = np.eye(3) * 2.0 * model.cutoff_A
    positions = rng.uniform(0.0, 2.0 * model.cutoff_A, size=(11, 3))
    src, dst, shifts = pairs_of_one_structure(positions, cell, np.array([True] * 3), model.cutoff_A)
    species = torch.arange(11) % len(model.species)
    return species, torch.tensor(positions), torch.tensor(cell), torch.ones(3, dtype=torch.bool), src, dst, shifts


def export_aoti(model: StudentPotential, path: Union[str, Path], metadata: dict[str, Any]) -> Path:
    """Compile ``model`` (eval mode, PyTorch radial basis) ahead of time into the package ``path``
    (``.pt2``; takes a minute or two on a CPU: Inductor compiles C++). ``metadata``
    (JSON-serializable) goes into the package with the model's hyperparameters, species and
    reference energies. Needs a C++ compiler on the CPU, as ``torch.compile`` does."""
    student = copy.deepcopy(model).eval().requires_grad_(False)
    student.radial_backend = "torch"
    atoms, pairs = torch.export.Dim("atoms", min=2), torch.export.Dim("pairs", min=2)
    dynamic = ({0: atoms}, {0: atoms}, None, None, {0: pairs}, {0: pairs}, {0: pairs})
    example = _example_inputs(student)
    # torch.export does not trace through the gradient; make_fx does: the forward pass and its
    # gradient become one graph of ATen operations with symbolic sizes, which is then exported.
    graph = make_fx(_PairsModel(student), tracing_mode="symbolic", _allow_non_fake_inputs=True)(*example)
    program = torch.export.export(graph, example, dynamic_shapes=dynamic)
    content = {
        **metadata,
        "hyperparameters": student.hyperparameters,
        "species": [int(z) for z in student.species],
        "reference_energies_eV": student.reference_energies_eV.double().tolist(),
        "torch_version": torch.__version__,
    }
    configs = {"aot_inductor.metadata": {METADATA_KEY: json.dumps(content)}}
    return Path(torch._inductor.aoti_compile_and_package(program, package_path=str(path), inductor_configs=configs))


class ExportedStudentCalculator(Calculator):
    """An `export_aoti` package as an ASE calculator: energy (eV), forces (eV/Angstrom) and, for
    structures periodic in all three directions, stress (Voigt, eV/Angstrom^3, ASE's sign).

    Each call finds the neighbour pairs with vesin's cell list and runs the package on
    ``threads`` torch (OpenMP) threads, restoring the process's setting after it."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, path: Union[str, Path], threads: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.runner = torch._inductor.aoti_load_package(str(path))
        self.metadata = json.loads(self.runner.get_metadata()[METADATA_KEY])
        self.threads = threads
        self.cutoff_A = float(self.metadata["hyperparameters"]["cutoff_A"])
        species = self.metadata["species"]
        self.index_of = np.full(max(species) + 1, -1, dtype=np.int64)
        self.index_of[species] = np.arange(len(species))
        self.reference_energies_eV = np.asarray(self.metadata["reference_energies_eV"], dtype=np.float64)

    def calculate(
        self,
        atoms: Optional[Atoms] = None,
        properties: Optional[list[str]] = None,
        system_changes: list[str] = all_changes,
    ) -> None:
        super().calculate(atoms, properties or ["energy"], system_changes)
        atoms = self.atoms
        numbers = np.asarray(atoms.numbers)
        unknown = sorted(set(numbers.tolist()) - set(self.metadata["species"]))
        if unknown:
            raise ValueError(f"atomic numbers {unknown} are not species of this student ({self.metadata['species']})")
        species = self.index_of[numbers]
        src, dst, shifts = pairs_of_one_structure(
            atoms.positions, atoms.cell.array, atoms.pbc, self.cutoff_A, self.threads
        )
        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            atom_energy, forces, stress = self.runner(
                torch.from_numpy(species),
                torch.from_numpy(np.ascontiguousarray(atoms.positions, dtype=np.float64)),
                torch.from_numpy(np.ascontiguousarray(atoms.cell.array, dtype=np.float64)),
                torch.from_numpy(np.asarray(atoms.pbc, dtype=bool)),
                src,
                dst,
                shifts,
            )
        finally:
            torch.set_num_threads(previous)
        energy = atom_energy.double().sum().item() + float(self.reference_energies_eV[species].sum())
        self.results["energy"] = self.results["free_energy"] = energy
        self.results["forces"] = forces.numpy().astype(np.float64)
        if atoms.pbc.all():
            self.results["stress"] = full_3x3_to_voigt_6_stress(stress[0].numpy().astype(np.float64))
