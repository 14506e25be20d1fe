"""ASE calculator for a trained student (energy in eV, forces in eV/Angstrom, stress in eV/Angstrom^3)."""

from __future__ import annotations

import copy
import ctypes
import functools
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
from mlff_distill.student.tuned_kernels import load_tuned_kernels

# Below this many atoms one torch thread is faster than several (thread start-up and
# synchronisation cost more than the small tensors' work).
AUTO_THREADS_MIN_ATOMS = 256
# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
KEEP_FREED_MEMORY_BYTES = 1 << 30


def keep_freed_memory(threshold_bytes: int = KEEP_FREED_MEMORY_BYTES) -> bool:
    """Make glibc's malloc reuse freed memory for blocks up to ``threshold_bytes`` (bytes).

    By default glibc returns blocks above 32 MB (and heap tops above 64 MB) to the kernel on
    ``free``, so every large tensor of every call is mapped afresh and page-faulted in, which
    slows the student's calls on large systems markedly. With
    this, the memory of one call is kept by the process and reused by the next: its resident
    memory stays at the peak of the largest call. Process-wide; returns False (and changes
    nothing) where the C library is not glibc.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the process already uses
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, int(threshold_bytes))) and bool(
        mallopt(_M_TRIM_THRESHOLD, int(threshold_bytes))
    )


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
            it); ``None`` chooses: compiled, one thread at every size (the compiled kernels were
            slower on more threads here, and a change of thread count recompiles); eager, one thread
            below ``AUTO_THREADS_MIN_ATOMS`` atoms, else ``torch.get_num_threads()`` as it was when
            the calculator was made.
        keep_memory: call `keep_freed_memory` (process-wide, glibc only) so that large tensors
            are not page-faulted in afresh on every call.
        compiled: run the model's energy and edge-vector gradient through ``torch.compile``
            (Inductor, dynamic shapes, one graph with the gradient through ``torch.func.grad``):
            faster per call than eager on a CPU, after a first call that compiles (quicker when
            Inductor's on-disk cache already holds the kernels). Needs a C++ compiler on the CPU.
        tuned_kernels: the tune stage's ``inference_path.json``: what it chose is applied. On a CUDA
            device a ``"triton"`` choice runs the fused edge-message kernels with the configs tuned
            for this GPU; a ``"torch_compile"`` choice sets ``compiled``. The path taken is the
            attribute ``inference_path`` (``"eager"``, ``"torch_compile"`` or ``"triton"``).
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(
        self,
        model: Union[StudentPotential, str, Path],
        device: str = "cpu",
        threads: Optional[int] = None,
        keep_memory: bool = True,
        compiled: bool = False,
        tuned_kernels: Optional[Union[str, Path]] = None,
        **kwargs: Any,
    ) -> None:
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
            chosen = load_tuned_kernels(tuned_kernels)["chosen_path"]
            if chosen == "triton" and self.device.type == "cuda":
                self.model.radial_backend = "triton"
            compiled = compiled or chosen == "torch_compile"
        self.inference_path = "triton" if self.model.radial_backend == "triton" else "eager"
        self._compute = functools.partial(energy_forces_stress_of_pairs, self.model, functional=False)
        if compiled and self.inference_path == "eager":
            self.threads = 1 if threads is None else threads
            self._compute = torch.compile(
                functools.partial(energy_forces_stress_of_pairs, self.model, functional=True), dynamic=True
            )
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

    def _energy_forces_stress(
        self, atoms: Atoms, with_stress: bool
    ) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """Energy ``[1]`` (eV), forces ``[N, 3]`` (eV/Angstrom), stress ``[1, 3, 3]`` or None of ``atoms``."""
        device = self.device
        pairs = pairs_of_one_structure(
            atoms.positions, atoms.cell.array, atoms.pbc, self.model.cutoff_A, torch.get_num_threads()
        )
        src, dst, shifts = (t.to(device) for t in pairs)
        species = self.model.species_indices(torch.as_tensor(atoms.numbers, device=device))
        batch = torch.zeros(len(atoms), dtype=torch.long, device=device)
        atom_energy, forces, stress = self._compute(
            species,
            torch.as_tensor(atoms.positions, device=device),
            torch.as_tensor(atoms.cell.array, device=device),
            torch.as_tensor(atoms.pbc, device=device),
            src,
            dst,
            shifts,
            batch,
            with_stress,
        )
        # The float64 sum stays outside torch.compile (Inductor's CPU codegen fails on a float64 scatter).
        return self.model.structure_energies(atom_energy, species, batch, 1), forces, stress


def energy_forces_stress_of_pairs(
    model: StudentPotential,
    species: torch.Tensor,
    positions_A: torch.Tensor,
    cell_A: torch.Tensor,
    pbc: torch.Tensor,
    src: torch.Tensor,
    dst: torch.Tensor,
    shifts: torch.Tensor,
    batch: torch.Tensor,
    compute_stress: bool,
    functional: bool,
) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Atom energies ``[N]`` (`StudentPotential.atom_energies`: eV, without the reference energies: see
    `StudentPotential.structure_energies`), forces ``[N, 3]`` (eV/Angstrom) and stress ``[1, 3, 3]``
    (eV/Angstrom^3) or None of one structure, from its species indices, float64 positions ``[N,
    3]`` and cell ``[3, 3]`` (Angstrom), pbc ``[3]``, pairs (as `neighbours.neighbour_list`) and
    ``batch`` (zeros ``[N]``: every atom in structure 0).

    The edge vectors are formed in float64 (no rounding of large coordinates), then cast to the
    model's dtype. ``functional=True`` takes the gradient with ``torch.func.grad``, which
    ``torch.compile`` traces into one graph with the rest (with ``torch.autograd.grad`` it would
    break the graph in two); ``False`` uses the autograd engine (eager, and the Triton kernels,
    whose autograd functions ``torch.func`` does not differentiate).
    """
    dtype = model.embedding.weight.dtype
    vectors = (
        positions_A.index_select(0, dst) - positions_A.index_select(0, src) + shifts.to(positions_A.dtype) @ cell_A
    ).to(dtype)
    if functional:

        def learned_energy(edge_vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            atom_energy = model.atom_energies(species, src, dst, edge_vectors)
            return atom_energy.sum(), atom_energy

        edge_gradient, atom_energy = torch.func.grad(learned_energy, has_aux=True)(vectors)
    else:
        vectors.requires_grad_(True)
        atom_energy = model.atom_energies(species, src, dst, vectors)
        (edge_gradient,) = torch.autograd.grad(atom_energy.sum(), vectors)
        atom_energy, vectors = atom_energy.detach(), vectors.detach()
    forces, stress = forces_and_stress(
        edge_gradient, vectors, src, dst, batch, cell_A.to(dtype)[None], pbc[None], 1, compute_stress
    )
    return atom_energy, forces, stress
