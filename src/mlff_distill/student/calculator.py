"""ASE calculator for a trained student (energy in eV, forces in eV/Angstrom, stress in eV/Angstrom^3)."""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from mlff_distill.student.checkpoint import load_student
from mlff_distill.student.model import StudentPotential, energy_forces_stress

# Below this many atoms one torch thread is faster than several (thread start-up and
# synchronisation cost more than the small tensors' work).
AUTO_THREADS_MIN_ATOMS = 256
# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
KEEP_FREED_MEMORY_BYTES = 1 << 30


def keep_freed_memory(threshold_bytes: int = KEEP_FREED_MEMORY_BYTES) -> bool:
    """Make glibc's malloc reuse freed memory for blocks up to ``threshold_bytes`` (bytes).

    By default glibc returns blocks above 32 MB (and heap tops above 64 MB) to the kernel on
    ``free``, so every large tensor of every call is mapped afresh and page-faulted in: measured
    on 2 CPU cores, the student's calls at 512-2048 atoms took about 1.5-2x as long that way. With
    this, the memory of one call is kept by the process and reused by the next: its resident
    memory stays at the peak of the largest call. Process-wide; returns False (and changes
    nothing) where the C library is not glibc.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the process already uses
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, int(threshold_bytes))) and bool(mallopt(_M_TRIM_THRESHOLD, int(threshold_bytes)))


class StudentCalculator(Calculator):
    """Student potential as an ASE calculator.

    Stress (Voigt order, ASE sign convention) is computed only for structures periodic in all
    three directions; asking for it on others raises ``PropertyNotImplementedError``. Each call
    recomputes the neighbour list.

    Args:
        model: a `StudentPotential` or the path of a checkpoint written by `save_student`.
        device: torch device to run on.
        threads: torch intra-op threads during a call (the process's setting is restored after
            it); ``None`` chooses: one thread below ``AUTO_THREADS_MIN_ATOMS`` atoms, else
            ``torch.get_num_threads()`` as it was when the calculator was made.
        keep_memory: call `keep_freed_memory` (process-wide, glibc only) so that large tensors
            are not page-faulted in afresh on every call.
        tuned_kernels: the tune stage's ``inference_path.json``: its Triton configs for this GPU
            are installed, and where it chose ``"triton"`` and the device is CUDA the model runs on
            the fused edge-message kernels. Otherwise eager PyTorch (a ``"torch_compile"`` choice
            is not applied here). The path taken is the attribute ``inference_path``.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, model: Union[StudentPotential, str, Path], device: str = "cpu",
                 threads: Optional[int] = None, keep_memory: bool = True,
                 tuned_kernels: Optional[Union[str, Path]] = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be a positive number of torch threads or None, got {threads}")
        if not isinstance(model, StudentPotential):
            model, _ = load_student(model, map_location=device)
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.threads = threads
        self.max_threads = torch.get_num_threads()
        if keep_memory and self.device.type == "cpu":
            keep_freed_memory()
        self.inference_path = "eager"
        if tuned_kernels is not None:
            from mlff_distill.inference_path import load_tuned_kernels

            if load_tuned_kernels(tuned_kernels)["chosen_path"] == "triton" and self.device.type == "cuda":
                self.model.radial_backend = "triton"
                self.inference_path = "triton"

    def threads_for(self, n_atoms: int) -> int:
        """Torch threads used for a structure of ``n_atoms`` atoms."""
        if self.threads is not None:
            return self.threads
        return 1 if n_atoms < AUTO_THREADS_MIN_ATOMS else self.max_threads

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
        previous_threads = torch.get_num_threads()
        torch.set_num_threads(self.threads_for(len(atoms)))
        try:
            energy, forces, stress = energy_forces_stress(
                self.model,
                torch.as_tensor(atoms.numbers, device=self.device),
                torch.as_tensor(atoms.positions, device=self.device),
                torch.as_tensor(atoms.cell.array, device=self.device)[None],
                torch.as_tensor(atoms.pbc, device=self.device)[None],
                torch.tensor([0, len(atoms)], device=self.device),
                compute_stress=with_stress,
            )
        finally:
            torch.set_num_threads(previous_threads)
        self.results["energy"] = self.results["free_energy"] = float(energy[0])
        self.results["forces"] = forces.detach().cpu().numpy().astype(np.float64)
        if with_stress:
            self.results["stress"] = full_3x3_to_voigt_6_stress(stress[0].detach().cpu().numpy().astype(np.float64))
