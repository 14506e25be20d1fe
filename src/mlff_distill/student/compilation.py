"""Compile the student ahead of its use: its training loss and, on a CPU, its inference path, into
TorchInductor's on-disk cache (the precompile stage does this while the teacher samples, so that
the train stage starts training at once and the tune and evaluate stages start timing at once).

The compiled code depends on the student's sizes and species, on the kinds of structures
(molecules; periodic cells with stress labels), on the loss terms in use and on the device, not on
the labels or the weights. So one step on a batch of the seed structures with zero labels compiles
the graphs the train stage will run; that stage reuses them from the cache (its log gives the cache
hits and misses of each kind's first step). Batches of 1 or 3 structures, which Dynamo would
specialise on and compile again, do not occur unless ``train.batch_size`` is 1 or 3
(`mlff_distill.student.dataset.shuffled_batches`). The
inference path is compiled with dynamic shapes too (`mlff_distill.student.StudentCalculator`),
once for molecules and once for periodic systems with stress.

The cache is the ``cache_dir`` of the run (under ``results/``, so that cluster jobs on different
nodes share it) unless ``TORCHINDUCTOR_CACHE_DIR`` is set.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from ase import Atoms
from torch._inductor.runtime.cache_dir_utils import default_cache_dir

from mlff_distill.data import LabeledArrays, concatenate_structures
from mlff_distill.student.calculator import StudentCalculator
from mlff_distill.student.inference_path import calculator_results
from mlff_distill.student.loss import BatchLoss
from mlff_distill.student.model import StudentPotential

# The stress scale of the precompiled loss (eV/Angstrom^3, about 1.6 GPa, a typical RMS stress): a
# positive value selects the stress term for periodic batches, as the RMS training stress does in
# the train stage.
STRESS_SCALE_eV_PER_A3 = 0.01


def use_compile_cache(directory: Path | None, logger: logging.Logger | None = None) -> str | None:
    """Point TorchInductor's cache at ``directory`` (absolute) unless the user set
    ``TORCHINDUCTOR_CACHE_DIR`` (nothing to do for None); returns the directory in use and logs it.
    Call before the first compilation; worker processes started afterwards inherit it. PyTorch
    writes its own default into the environment once it looks the cache up (any process that
    imported it, Snakemake's included), so that value does not count as the user's."""
    if directory is None:
        return None
    configured = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    user_set = configured is not None and os.path.abspath(configured) != default_cache_dir()
    cache = configured if user_set else str(Path(directory).resolve())
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
    if logger is not None:
        logger.info("TorchInductor cache: %s", cache)
    return cache


def unlabeled_batch(structures: Sequence[Atoms], batch_size: int, with_hessian: bool) -> LabeledArrays:
    """``batch_size`` of ``structures`` (repeated in turn) with zero labels, and zero stress labels
    for the periodic ones: a batch with the shapes and kinds of the training batches."""
    chosen = [structures[i % len(structures)] for i in range(batch_size)]
    arrays = concatenate_structures(chosen)
    zeros = np.zeros_like(arrays["positions_A"])
    periodic = arrays["pbc"].all(axis=1)
    stress = np.full((len(chosen), 3, 3), np.nan)
    stress[periodic] = 0.0
    return LabeledArrays(
        **arrays,
        forces_eV_per_A=zeros,
        energy_eV=np.zeros(len(chosen)),
        stress_eV_per_A3=stress if periodic.any() else None,
        hessian_direction=zeros if with_hessian else None,
        hessian_product_eV_per_A2=zeros if with_hessian else None,
    )


def molecule_of(atoms: Atoms) -> Atoms:
    """``atoms`` without cell or periodicity."""
    free = atoms.copy()
    free.pbc = False
    free.cell = None
    return free


def compile_training_loss(
    student: dict[str, Any],
    structures: Sequence[Atoms],
    batch_size: int,
    energy_weight: float,
    force_weight: float,
    stress_weight: float,
    hessian_weight: float,
) -> dict[str, Any]:
    """Compiled training steps of the student of size ``student`` (`StudentPotential`'s keyword
    arguments) with the training loss's weights: one on a batch of the periodic ``structures`` (the
    seeds; with stress labels) and one on a batch of the others (without; the periodic seeds cut
    free where there are none, as the clusters cut from boxes are), as training meets both kinds of
    batch; returns what was compiled and how long it took (s)."""
    species = species_of(structures)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # as the train stage chooses
    model = StudentPotential(species=species, **student).to(device)
    periodic = [atoms for atoms in structures if atoms.pbc.all()]
    others = [atoms for atoms in structures if not atoms.pbc.all()] or [molecule_of(atoms) for atoms in periodic]
    batches = [unlabeled_batch(group, batch_size, hessian_weight > 0) for group in (periodic, others) if group]
    loss = BatchLoss(
        energy_weight, force_weight, stress_weight, STRESS_SCALE_eV_PER_A3, compile=True, hessian_weight=hessian_weight
    )
    start = time.perf_counter()
    for batch in batches:
        loss(model, batch).backward()
    return {
        "compiled": loss.compiled,
        "seconds": time.perf_counter() - start,
        "species": species,
        "periodic": bool(periodic),
        "device": device,
        "batches": [{"structures": batch.n_structures, "atoms": int(batch.atoms_ptr[-1])} for batch in batches],
    }


def compile_inference(student: dict[str, Any], species: list[int], systems: Sequence[Atoms]) -> dict[str, Any]:
    """The compiled inference path (`StudentCalculator` with ``compiled=True``, one thread, as the
    tune and evaluate stages time it on a CPU) of the student of size ``student`` for ``species``,
    on ``systems`` (a seed and a periodic system built from it); returns how long it took (s)."""
    model = StudentPotential(species=species, **student).eval()
    start = time.perf_counter()
    calculator_results(StudentCalculator(model, compiled=True, threads=1), systems)
    return {"seconds": time.perf_counter() - start, "systems_atoms": [len(atoms) for atoms in systems]}


def species_of(structures: Sequence[Atoms]) -> list[int]:
    """Sorted atomic numbers of ``structures``: the species the label store will hold."""
    return sorted({int(z) for atoms in structures for z in atoms.numbers})


def attempt(step: Callable[[], dict[str, Any]], what: str, logger: logging.Logger) -> dict[str, Any]:
    """``step()``, or ``{"error": ...}`` with a warning if it raises: a failed precompilation only
    loses a head start, as the later stages compile for themselves."""
    try:
        return step()
    except Exception as error:
        logger.warning(
            "precompiling the %s failed (%s: %s); it will be compiled where it is used",
            what,
            type(error).__name__,
            error,
        )
        return {"error": f"{type(error).__name__}: {error}"}
