"""What every teacher is and returns, whatever code computes it.

A teacher maps structures (ASE ``Atoms``) to energies in eV and forces in eV/Angstrom. Its
`TeacherIdentity` says exactly which model it is; it goes into the label store and MLflow.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress


@dataclass(frozen=True)
class TeacherIdentity:
    """Facts about a teacher that make its labels reproducible."""

    name: str  # e.g. "fennol-pmc/ani1x"
    kind: str  # "fennol", "orb", ...
    source: str  # where the weights came from (paths or URL)
    weights_sha256: str  # checksum over all weight files, in order
    cutoff_A: float
    species: tuple[int, ...]  # atomic numbers the model covers
    conservative: bool  # forces are minus the gradient of the energy
    trained: bool  # False for seeded random weights ("untrained teacher")
    members: int = 1  # ensemble size
    extra: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        """Human-readable name; says "untrained teacher" when the weights are random."""
        return self.name if self.trained else f"{self.name} (untrained teacher)"

    def as_dict(self) -> dict:
        return {**asdict(self), "label": self.label}


@dataclass
class TeacherOutput:
    """Labels for a batch of structures; per-atom arrays are flat, in input order.

    For an ensemble, values are the mean over members and ``*_std`` their standard deviation
    (zeros for a single model). Stress follows ASE's sign convention and is NaN for structures
    that are not periodic in all three directions, and for all structures when not asked for.
    """

    energy_eV: np.ndarray  # [N]
    forces_eV_per_A: np.ndarray  # [M, 3]
    energy_std_eV: np.ndarray  # [N]
    forces_std_eV_per_A: np.ndarray | None = None  # [M, 3]
    stress_eV_per_A3: np.ndarray | None = None  # [N, 3, 3]


class Teacher(Protocol):
    identity: TeacherIdentity

    def compute(self, structures: Sequence[Atoms], compute_stress: bool = False) -> TeacherOutput:
        """Energies, forces and (if asked, for periodic cells) stress of ``structures``."""
        ...


BatchLabels = tuple[np.ndarray, np.ndarray, np.ndarray]  # energy [n] (eV), forces [m, 3], stress [n, 3, 3]


def labels_in_batches(
    structures: Sequence[Atoms],
    batch_size: int,
    compute_batch: Callable[[Sequence[Atoms], int], BatchLabels],
    compute_stress: bool,
) -> TeacherOutput:
    """The `TeacherOutput` of a single model (spreads zero), ``batch_size`` structures per call of
    ``compute_batch(batch, index of its first structure)``, which returns energies (eV), forces
    (eV/Angstrom) and stress (eV/Angstrom^3, ASE sign). Stress is kept when ``compute_stress`` and
    for structures periodic in all three directions, NaN otherwise."""
    energies, forces, stresses = [np.zeros(0)], [np.zeros((0, 3))], [np.zeros((0, 3, 3))]
    for start in range(0, len(structures), batch_size):
        energy, force, stress = compute_batch(structures[start : start + batch_size], start)
        energies.append(energy)
        forces.append(force)
        stresses.append(stress)
    periodic = np.array([compute_stress and bool(atoms.pbc.all()) for atoms in structures], dtype=bool)
    stress = np.full((len(structures), 3, 3), np.nan)
    stress[periodic] = np.concatenate(stresses)[periodic]
    all_forces = np.concatenate(forces)
    return TeacherOutput(
        energy_eV=np.concatenate(energies),
        forces_eV_per_A=all_forces,
        energy_std_eV=np.zeros(len(structures)),
        forces_std_eV_per_A=np.zeros_like(all_forces),
        stress_eV_per_A3=stress,
    )


CACHE_ENV = "MLFF_DISTILL_CACHE"


def default_cache_dir() -> Path:
    """The user cache: ``$MLFF_DISTILL_CACHE``, else ``$XDG_CACHE_HOME/mlff-distill``, else
    ``~/.cache/mlff-distill``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mlff-distill"


def sha256_of_files(paths: Sequence[Path]) -> str:
    """SHA-256 over the SHA-256 digests of ``paths``, in the order given."""
    outer = hashlib.sha256()
    for path in paths:
        outer.update(hashlib.sha256(Path(path).read_bytes()).digest())
    return outer.hexdigest()


class TeacherCalculator(Calculator):
    """An ASE calculator that evaluates a `Teacher` one structure at a time (for MD)."""

    implemented_properties = ["energy", "forces", "stress"]

    def __init__(self, teacher: Teacher):
        super().__init__()
        self.teacher = teacher

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        with_stress = "stress" in properties and bool(self.atoms.pbc.all())
        out = self.teacher.compute([self.atoms], compute_stress=with_stress)
        self.results = {"energy": float(out.energy_eV[0]), "forces": out.forces_eV_per_A.copy()}
        if with_stress:
            self.results["stress"] = full_3x3_to_voigt_6_stress(out.stress_eV_per_A3[0])
