"""Reference energies calibrated on the targets' own teacher MD.

A small student with a shorter cutoff than its teacher cannot give the cohesive energy of a liquid
and of the clusters and molecules cut from it at once: fitted on all of them, its energies of the
target's frames carry a mean offset (measured on the default: water's test frames 2.9-3.4 meV/atom
too high after round 1, with 0.5-0.9 meV/atom of scatter about that offset). The offset is a
constant per composition, so a per-species shift of the reference energies (eV per atom) fitted to
the student's energy errors on the training split's teacher-MD frames of the targets takes it out
where the user runs MD. Forces, stress and energy differences at fixed composition do not change;
every other composition (an isolated molecule, a cluster) moves by the same shifts: the cohesive
energy error is moved off the target, not removed.

Units: energies in eV.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence, Union

import numpy as np
import torch

from mlff_distill.data import LabeledArrays
from mlff_distill.student.dataset import StructureBlocks
from mlff_distill.student.fitting import as_blocks, predict, species_counts
from mlff_distill.student.model import StudentPotential


def reference_shift(
    model: StudentPotential,
    training: Union[LabeledArrays, StructureBlocks],
    calibration_samples: Sequence[int],
) -> tuple[dict[int, float], dict[str, float]]:
    """The per-species shift (eV) that, added to ``model``'s reference energies, best removes its
    energy errors on the structures of ``training`` whose sample index is in
    ``calibration_samples`` (least squares on the species counts; minimum norm where their
    compositions leave combinations open), and the energy MAE (eV/atom) before and after it of
    those structures (``target_md_*``) and of the others (``other_*``), with their counts.
    ``training`` may be read block by block (`StructureBlocks`); only per-structure figures are
    kept. Raises ``ValueError`` when none of ``training`` is in ``calibration_samples``."""
    per_block = [
        (
            species_counts(block, model.species),
            predict(model, block)["energy_eV"] - block.energy_eV,
            block.n_atoms,
            block.sample_index,
        )
        for block in as_blocks(training).blocks()
    ]
    counts, errors, n_atoms, sample_index = (np.concatenate(column) for column in zip(*per_block))
    chosen = np.isin(sample_index, np.asarray(calibration_samples, dtype=np.int64))
    if not chosen.any():
        raise ValueError("no training structure is among the calibration samples")
    shift, *_ = np.linalg.lstsq(counts[chosen], -errors[chosen], rcond=None)
    before, after = np.abs(errors) / n_atoms, np.abs(errors + counts @ shift) / n_atoms
    stats = {"n_target_md": int(chosen.sum()), "n_other": int((~chosen).sum())}
    for name, rows in (("target_md", chosen), ("other", ~chosen)):
        if rows.any():
            stats[f"{name}_energy_mae_per_atom_eV_before"] = float(before[rows].mean())
            stats[f"{name}_energy_mae_per_atom_eV_after"] = float(after[rows].mean())
    return {z: float(value) for z, value in zip(model.species, shift)}, stats


def shift_reference_energies(model: StudentPotential, shift: Mapping[int, float]) -> None:
    """Add ``shift`` (eV per atom of each species) to ``model``'s reference energies."""
    model.reference_energies_eV += _per_species(shift, model.species).to(model.reference_energies_eV.device)


def uncalibrated_state(state: dict[str, Any], species: Sequence[int], shift: Mapping[int, float]) -> dict[str, Any]:
    """A copy of a calibrated student's ``state_dict`` (species in ``species`` order) with
    ``shift`` (eV) taken off its reference energies: where the next round's training starts."""
    return {**state, "reference_energies_eV": state["reference_energies_eV"] - _per_species(shift, species)}


def _per_species(shift: Mapping[int, float], species: Sequence[int]) -> torch.Tensor:
    """``shift`` (eV by atomic number) as a float64 vector in the order of ``species``, 0 where missing."""
    return torch.tensor([float(shift.get(int(z), 0.0)) for z in species], dtype=torch.float64)
