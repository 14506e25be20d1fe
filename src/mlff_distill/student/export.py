"""Export a student as a TorchScript file that runs with plain PyTorch, without this package.

Usage of the exported file (``torch.jit.load`` only)::

    extra = {"metadata.json": ""}
    student = torch.jit.load("student.torchscript.pt", _extra_files=extra)
    out = student(numbers, positions_A, cell_A, pbc)   # one structure
    out["energy_eV"], out["forces_eV_per_A"], out["stress_eV_per_A3"]
    json.loads(extra["metadata.json"])                  # teacher, training data, metrics

Inputs of ``forward``: ``numbers [M]`` int, ``positions_A [M, 3]`` Angstrom, ``cell_A [3, 3]``
Angstrom (rows are cell vectors; zeros for a molecule), ``pbc [3]`` bool. Outputs: the energy
(scalar, float64, eV), forces ``[M, 3]`` (eV/Angstrom) and stress ``[3, 3]`` (eV/Angstrom^3, ASE's
sign convention; NaN unless periodic in all three directions), forces and stress in the model's
dtype. The method ``batch`` takes a batch as `StudentPotential.energy_forces_stress` does.
The first few calls are slow while TorchScript's profiling executor specialises the graph; after
about ten it runs about as fast as the eager model on a CPU.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Union

import torch
from torch import nn

from mlff_distill.student.model import StudentPotential

METADATA_FILE = "metadata.json"


class _ExportedStudent(nn.Module):
    """Energy, forces and stress of one structure, or of a batch, from a scripted student."""

    def __init__(self, model: StudentPotential) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, numbers: torch.Tensor, positions_A: torch.Tensor, cell_A: torch.Tensor, pbc: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        atoms_ptr = torch.tensor([0, numbers.shape[0]], dtype=torch.long)
        out = self.batch(numbers, positions_A, cell_A.reshape(1, 3, 3), pbc.reshape(1, 3), atoms_ptr)
        return {
            "energy_eV": out["energy_eV"][0],
            "forces_eV_per_A": out["forces_eV_per_A"],
            "stress_eV_per_A3": out["stress_eV_per_A3"][0],
        }

    @torch.jit.export
    def batch(
        self,
        numbers: torch.Tensor,
        positions_A: torch.Tensor,
        cell_A: torch.Tensor,
        pbc: torch.Tensor,
        atoms_ptr: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Energies ``[B]``, forces ``[M, 3]`` and stresses ``[B, 3, 3]`` of a batch."""
        energy, forces, stress = self.model.energy_forces_stress(
            numbers, positions_A, cell_A, pbc, atoms_ptr, compute_stress=True
        )
        assert stress is not None
        return {"energy_eV": energy, "forces_eV_per_A": forces, "stress_eV_per_A3": stress}


def export_torchscript(model: StudentPotential, path: Union[str, Path], metadata: dict[str, Any]) -> None:
    """Write ``model`` (eval mode, PyTorch radial basis) to ``path`` as TorchScript.

    ``metadata`` (JSON-serializable: teacher identity, training data, metrics) goes into the
    file's extra file ``metadata.json`` together with the model's hyperparameters.
    """
    student = copy.deepcopy(model).eval()
    student.radial_backend = "torch"
    content = {**metadata, "hyperparameters": student.hyperparameters, "torch_version": torch.__version__}
    scripted = torch.jit.script(_ExportedStudent(student))
    torch.jit.save(scripted, str(path), _extra_files={METADATA_FILE: json.dumps(content)})


def load_torchscript(
    path: Union[str, Path], map_location: Union[str, torch.device] = "cpu"
) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """The module and metadata written by `export_torchscript`."""
    extra = {METADATA_FILE: ""}
    module = torch.jit.load(str(path), map_location=map_location, _extra_files=extra)
    if not extra[METADATA_FILE]:
        raise ValueError(f"{path} has no {METADATA_FILE}: not written by export_torchscript")
    return module, json.loads(extra[METADATA_FILE])
