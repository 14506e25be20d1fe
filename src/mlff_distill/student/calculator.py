"""ASE calculator for a trained student (energy in eV, forces in eV/Angstrom, stress in eV/Angstrom^3)."""

from __future__ import annotations

import copy
import ctypes
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from mlff_distill.student.checkpoint import load_student
from mlff_distill.student.model import StudentPotential, forces_and_stress
from mlff_distill.student.neighbours import pairs_of_one_structure

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
    recomputes the neighbour list (vesin's C++ cell list, `neighbours.pairs_of_one_structure`).
    The calculator runs its own copy of the model with gradients of the weights switched off.

    Args:
        model: a `StudentPotential` or the path of a checkpoint written by `save_student`.
        device: torch device to run on.
        threads: torch intra-op threads during a call (the process's setting is restored after
            it); ``None`` chooses: one thread below ``AUTO_THREADS_MIN_ATOMS`` atoms, else
            ``torch.get_num_threads()`` as it was when the calculator was made.
        keep_memory: call `keep_freed_memory` (process-wide, glibc only) so that large tensors
            are not page-faulted in afresh on every call.
        compiled: run the model's energy and edge-vector gradient through ``torch.compile``
            (Inductor, dynamic shapes): on 2 CPU cores 3-7x faster per call than eager, after a
            first call that compiles (about 30-60 s, shorter when Inductor's on-disk cache already
            holds the kernels). Needs a C++ compiler on the CPU.
        tuned_kernels: the tune stage's ``inference_path.json``: what it chose is applied. On a CUDA
            device a ``"triton"`` choice runs the fused edge-message kernels with the configs tuned
            for this GPU; a ``"torch_compile"`` choice sets ``compiled``. The path taken is the
            attribute ``inference_path`` (``"eager"``, ``"torch_compile"`` or ``"triton"``).
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, model: Union[StudentPotential, str, Path], device: str = "cpu",
                 threads: Optional[int] = None, keep_memory: bool = True, compiled: bool = False,
                 tuned_kernels: Optional[Union[str, Path]] = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be a positive number of torch threads or None, got {threads}")
        if not isinstance(model, StudentPotential):
            model, _ = load_student(model, map_location=device)
        self.model = copy.deepcopy(model).to(device).eval().requires_grad_(False)
        self.device = torch.device(device)
        self.threads = threads
        self.max_threads = torch.get_num_threads()
        if keep_memory and self.device.type == "cpu":
            keep_freed_memory()
        if tuned_kernels is not None:
            from mlff_distill.inference_path import load_tuned_kernels

            chosen = load_tuned_kernels(tuned_kernels)["chosen_path"]
            if chosen == "triton" and self.device.type == "cuda":
                self.model.radial_backend = "triton"
            compiled = compiled or chosen == "torch_compile"
        self.inference_path = "triton" if self.model.radial_backend == "triton" else "eager"
        self._energies_and_gradient = self.model.learned_energies_and_edge_gradient
        if compiled and self.inference_path == "eager":
            self._energies_and_gradient = torch.compile(self._energies_and_gradient, dynamic=True)
            self.inference_path = "torch_compile"

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
            energy, forces, stress = self._energy_forces_stress(atoms, with_stress)
        finally:
            torch.set_num_threads(previous_threads)
        self.results["energy"] = self.results["free_energy"] = float(energy[0])
        self.results["forces"] = forces.cpu().numpy().astype(np.float64)
        if with_stress:
            self.results["stress"] = full_3x3_to_voigt_6_stress(stress[0].cpu().numpy().astype(np.float64))

    def _energy_forces_stress(self, atoms: Atoms, with_stress: bool
                              ) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """Energy ``[1]`` (eV), forces ``[N, 3]`` (eV/Angstrom), stress ``[1, 3, 3]`` or None of ``atoms``."""
        model, device = self.model, self.device
        dtype = model.embedding.weight.dtype
        species = model.species_indices(torch.as_tensor(atoms.numbers, device=device))
        positions = torch.as_tensor(atoms.positions, device=device, dtype=dtype)
        cell = torch.as_tensor(atoms.cell.array, device=device, dtype=dtype)
        src, dst, shifts = (t.to(device) for t in pairs_of_one_structure(atoms.positions, atoms.cell.array,
                                                                          atoms.pbc, model.cutoff_A))
        vectors = positions.index_select(0, dst) - positions.index_select(0, src) + shifts.to(dtype) @ cell
        atom_energy, edge_gradient = self._energies_and_gradient(species, src, dst, vectors)
        batch = torch.zeros(len(atoms), dtype=torch.long, device=device)
        energy = model.structure_energies(atom_energy, species, batch, 1)
        forces, stress = forces_and_stress(edge_gradient, vectors, src, dst, batch, cell[None],
                                           torch.as_tensor(atoms.pbc, device=device)[None], 1, with_stress)
        return energy, forces, stress
