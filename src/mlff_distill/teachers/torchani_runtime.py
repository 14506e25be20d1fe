"""The ANI-1x ensemble run by torchani 2.9 with its cell list: the default teacher's fastest implementation.

The labels come from the FeNNol ensemble built from NeuroChem's files
(`mlff_distill.teachers.neurochem`); torchani 2.9 runs the same eight networks from the same files,
with a cell list (linear in the number of atoms) where FeNNol's ASE path builds all pairs, and
computes the descriptors once for all members. The speed table times it beside the labeling
teacher, and a student's speed-up is counted against the faster of the two
(`mlff_distill.evaluation.speed`). Energies in eV, forces in eV/Angstrom, stress in eV/Angstrom^3
(ASE's sign convention).

Stress is the derivative by the pair vectors (torchani's ``fdotr``): torchani's default, the
derivative by a strain of positions and cell (``scaling``), disagrees with finite differences when
the cell list builds the pairs (0.013 eV/Angstrom^3 on a 63-atom water box, measured here) and agrees
with them under all pairs.

torchani 2.9 declares ``zarr<3`` for its dataset readers, which are never imported here, so it is
installed without its dependencies (``envs/no-deps-requirements.txt``, which the Makefile and the
conda environment install). Without it, the speed table times the labeling teacher alone.
"""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

import numpy as np
from ase.calculators.calculator import Calculator
from ase.stress import full_3x3_to_voigt_6_stress

from mlff_distill.teachers.neurochem import AEV_PARAMS_FILE, N_MEMBERS, SELF_ENERGIES_FILE

TORCHANI_RUNTIME_REQUIREMENT = "torchani==2.9.0"
CELL_LIST = "torchani-2.9-cell-list"


def torchani_runtime_missing() -> str | None:
    """Why torchani 2.9 cannot run here (not installed, or another release), else None."""
    try:
        version = importlib.metadata.version("torchani")
    except importlib.metadata.PackageNotFoundError:
        version = None
    if version == TORCHANI_RUNTIME_REQUIREMENT.split("==")[1]:
        return None
    found = f"torchani {version} is installed" if version else "torchani is not installed"
    return f"{found}; install `pip install --no-deps {TORCHANI_RUNTIME_REQUIREMENT}` to time it"


def ani1x_cell_list_calculator(
    resource_dir: str | Path, member: int | None = None, float64: bool = False
) -> Calculator:
    """An ASE calculator running the ANI-1x ensemble (``member`` None) or its member ``member``
    (0..7) from the NeuroChem files in ``resource_dir`` (`torchani_resource_dir`) with torchani 2.9's
    cell list, float32 (``float64``: float64). Raises ImportError naming the install where torchani
    2.9 is missing."""
    missing = torchani_runtime_missing()
    if missing:
        raise ImportError(missing)
    # torchani's compiled extensions (a C++ cell list, CUDA AEVs) need the CUDA toolkit to build;
    # without them it warns on import and runs its pure-torch cell list, which is what is timed here
    os.environ.setdefault("TORCHANI_NO_WARN_EXTENSIONS", "1")
    # torchani only here: an optional runtime, installed apart (module docstring)
    from torchani import neurochem
    from torchani.arch import ANI
    from torchani.ase import Calculator as TorchaniCalculator

    class VoigtStressCalculator(TorchaniCalculator):
        """torchani's calculator with the stress in ASE's Voigt order (it gives the 3x3 matrix)."""

        def calculate(self, *args, **kwargs) -> None:
            super().calculate(*args, **kwargs)
            if np.shape(self.results.get("stress")) == (3, 3):
                self.results["stress"] = full_3x3_to_voigt_6_stress(self.results["stress"])

    resource_dir = Path(resource_dir)
    aev_computer, symbols = neurochem.load_aev_computer_and_symbols(
        resource_dir / AEV_PARAMS_FILE, neighborlist="cell_list"
    )
    if member is None:
        networks = neurochem.load_ensemble(symbols, resource_dir / "train", N_MEMBERS)
    elif 0 <= member < N_MEMBERS:
        networks = neurochem.load_member(symbols, resource_dir / f"train{member}" / "networks")
    else:
        raise ValueError(f"ANI-1x member index {member} is not in 0..{N_MEMBERS - 1}")
    self_energies = neurochem.load_sae(resource_dir / SELF_ENERGIES_FILE)
    model = ANI(symbols, aev_computer, networks, self_energies, periodic_table_index=True)
    return VoigtStressCalculator(model.double() if float64 else model, stress_kind="fdotr")
