"""More ways to make structures for the teacher to label, and filters to prune them.

Seeds can come from structure files (any format ASE reads) and periodic seeds can be replicated to a
minimum cell size. Strategies: Langevin MD driven by the teacher (`teacher_md`), rattling with a
random cell strain (periodic seeds), rattle-and-relax family trees guided by the teacher (in the
spirit of augment-atoms), and classical harmonic sampling along the teacher's normal modes.
Filters: selection by ensemble disagreement, a maximum teacher force, and near-duplicate removal.

Units: lengths in Angstrom (``_A``), energies in eV (``_eV``), forces in eV/Angstrom, temperatures
in K (``_K``), masses in amu; Hessians in eV/Angstrom^2, mass-weighted ones in eV/(Angstrom^2 amu).
Every new structure records its origin in ``atoms.info`` (``seed``, ``strategy`` and the strategy's
parameters) like the structures of `mlff_distill.sampling.sampler`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import Calculator
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary, ZeroRotation, thermalize_momenta
from ase.optimize import FIRE

from mlff_distill.settings import MDSettings, TargetMDSettings
from mlff_distill.teachers import Teacher, TeacherCalculator

# Mass-weighted Hessian eigenvalues below this (eV/(Angstrom^2 amu); 1.0 is about 521 cm^-1, so
# 1e-3 is about 16 cm^-1) are treated as imaginary or zero modes and not sampled.
MIN_MODE_EIGENVALUE = 1e-3


# ----------------------------------------------------------------------------------------- seeds


def cell_heights_A(atoms: Atoms) -> np.ndarray:
    """Perpendicular heights of the cell (Angstrom): distance between opposite faces, per axis."""
    cell = atoms.cell.complete()  # missing (non-periodic) vectors filled orthogonally
    return 1.0 / np.linalg.norm(cell.reciprocal(), axis=1)


def replicate_to_min_size(atoms: Atoms, min_length_A: float) -> Atoms:
    """``atoms`` repeated along its periodic axes until every perpendicular cell height is at least
    ``min_length_A`` (Angstrom); molecules (no periodic axis) are returned unchanged."""
    if not atoms.pbc.any():
        return atoms
    heights = cell_heights_A(atoms)
    repeats = [int(np.ceil(min_length_A / h - 1e-9)) if periodic else 1 for h, periodic in zip(heights, atoms.pbc)]
    repeats = [max(1, r) for r in repeats]
    if repeats == [1, 1, 1]:
        return atoms
    bigger = atoms.repeat(repeats)
    bigger.info = {**atoms.info, "replicated": " ".join(map(str, repeats))}
    return bigger


# ------------------------------------------------------------------------------------ strategies


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A rotation matrix drawn uniformly (QR of a Gaussian matrix, signs fixed, det +1)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def random_symmetric_strain(max_strain: float, rng: np.random.Generator) -> np.ndarray:
    """A symmetric 3x3 strain tensor (dimensionless) with components uniform in
    [-max_strain, max_strain]."""
    upper = np.triu(rng.uniform(-max_strain, max_strain, (3, 3)))
    return upper + np.triu(upper, k=1).T


def rattle_and_strain(
    seed: Atoms, count: int, sigma_range_A: Sequence[float], max_strain: float, rng: np.random.Generator
) -> list[Atoms]:
    """``count`` copies of ``seed`` displaced by a Gaussian of sigma (Angstrom) drawn from
    ``sigma_range_A``; periodic seeds' cells are also strained by a random symmetric strain with
    components uniform in [-max_strain, max_strain], atoms scaled with the cell.

    ``info``: ``strategy="rattle-strain"``, ``sigma_A``, ``strain`` (the 9 components, row-major;
    zeros for molecules).
    """
    structures = []
    for _ in range(count):
        sigma = rng.uniform(*sigma_range_A)
        atoms = seed.copy()
        atoms.calc = None
        atoms.positions += rng.normal(0.0, sigma, atoms.positions.shape)
        strain = np.zeros((3, 3))
        if atoms.pbc.any():
            strain = random_symmetric_strain(max_strain, rng)
            atoms.set_cell(np.asarray(atoms.cell) @ (np.eye(3) + strain), scale_atoms=True)
        atoms.info = {
            "seed": seed.info["seed"],
            "strategy": "rattle-strain",
            "sigma_A": sigma,
            "strain": strain.ravel(),
        }
        structures.append(atoms)
    return structures


def with_vacancies(
    seed: Atoms, count: int, max_vacancies: int, sigma_range_A: Sequence[float], rng: np.random.Generator
) -> list[Atoms]:
    """``count`` copies of a periodic ``seed`` with 1 to ``max_vacancies`` random atoms removed,
    then displaced by a Gaussian of sigma (Angstrom) drawn from ``sigma_range_A``.

    ``info``: ``strategy="vacancies"``, ``n_vacancies``, ``sigma_A``.
    """
    if not seed.pbc.all():
        raise ValueError(f"vacancies: seed {seed.info['seed']!r} is not periodic in 3 directions")
    if max_vacancies >= len(seed):
        raise ValueError(
            f"vacancies: seed {seed.info['seed']!r} has {len(seed)} atoms, too few for up to {max_vacancies} vacancies"
        )
    structures = []
    for _ in range(count):
        n_vacancies = int(rng.integers(1, max_vacancies + 1))
        sigma = rng.uniform(*sigma_range_A)
        atoms = seed.copy()
        atoms.calc = None
        del atoms[rng.choice(len(atoms), n_vacancies, replace=False).tolist()]
        atoms.positions += rng.normal(0.0, sigma, atoms.positions.shape)
        atoms.info = {"seed": seed.info["seed"], "strategy": "vacancies", "n_vacancies": n_vacancies, "sigma_A": sigma}
        structures.append(atoms)
    return structures


def boltzmann_weights(energies_eV: Sequence[float], temperature_K: float) -> np.ndarray:
    """Normalised weights exp(-(E - E_min)/(k_B T)) for energies in eV at ``temperature_K``."""
    energies = np.asarray(energies_eV, dtype=float)
    weights = np.exp(-(energies - energies.min()) / (units.kB * temperature_K))
    return weights / weights.sum()


def teacher_relax(atoms: Atoms, calculator: Calculator, steps: int, max_step_A: float = 0.1) -> float:
    """At most ``steps`` FIRE steps (each moving an atom at most ``max_step_A``, Angstrom) on the
    teacher's potential energy surface, in place, with a fixed cell; the final energy in eV.
    ``calculator``: an ASE calculator of the teacher (`TeacherCalculator`, or a faster
    implementation of the same model, `mlff_distill.teachers.teacher_md_calculator`)."""
    atoms.calc = calculator
    if steps > 0:
        FIRE(atoms, logfile=None, maxstep=max_step_A).run(fmax=1e-3, steps=steps)
    energy = float(atoms.get_potential_energy())
    atoms.calc = None
    return energy


def teacher_md(
    seed: Atoms,
    calculator: Calculator,
    temperature_K: float,
    md: MDSettings | TargetMDSettings,
    rng: np.random.Generator,
    strategy: str = "md",
) -> list[Atoms]:
    """``md.frames_per_trajectory`` frames of a Langevin trajectory at ``temperature_K`` driven by the
    teacher's ASE ``calculator`` (as in `teacher_relax`) from ``seed`` (Maxwell-Boltzmann velocities,
    no net momentum): ``md.equilibration_steps`` steps, then a frame every ``md.steps_between_frames``
    steps of ``md.timestep_fs`` (fs), friction ``md.friction_per_fs`` (1/fs). ``md`` is either
    settings section (both have these fields).

    Frames keep the cell, periodicity and ``arrays["molecule_index"]`` (if any); ``info``: ``seed``
    and, if the seed has one, ``target`` (from the seed's info), ``strategy``, ``temperature_K``.
    """
    atoms = seed.copy()
    atoms.calc = calculator
    thermalize_momenta(atoms, temperature_K=temperature_K, rng=rng)
    Stationary(atoms)
    if not atoms.pbc.any():  # rotation is a rigid mode of molecules only
        with np.errstate(invalid="ignore", divide="ignore"):  # a linear molecule's zero moment (ASE masks it)
            ZeroRotation(atoms)
    dynamics = Langevin(
        atoms,
        timestep=md.timestep_fs * units.fs,
        temperature_K=temperature_K,
        friction=md.friction_per_fs / units.fs,
        fixcm=False,
        rng=rng,
    )
    dynamics.run(md.equilibration_steps)
    provenance = {"seed": seed.info["seed"], **({"target": seed.info["target"]} if "target" in seed.info else {})}
    frames = []
    for _ in range(md.frames_per_trajectory):
        dynamics.run(md.steps_between_frames)
        frame = Atoms(
            numbers=atoms.numbers, positions=atoms.positions.copy(), cell=atoms.cell.copy(), pbc=atoms.pbc.copy()
        )
        if "molecule_index" in seed.arrays:
            frame.arrays["molecule_index"] = np.array(seed.arrays["molecule_index"], dtype=int)
        frame.info = {**provenance, "strategy": strategy, "temperature_K": float(temperature_K)}
        frames.append(frame)
    return frames


def rattle_relax(
    seed: Atoms,
    teacher: Teacher,
    generations: int,
    children_per_generation: int,
    sigma_A: float,
    relax_steps: int,
    temperature_K: float,
    rng: np.random.Generator,
) -> list[Atoms]:
    """Family trees of rattled and briefly relaxed structures (in the spirit of augment-atoms).

    The pool starts with ``seed`` (member 0). Each generation makes ``children_per_generation``
    children: a parent is drawn from the pool with Boltzmann weights exp(-(E - E_min)/(k_B T)) on
    teacher energies (eV, ``temperature_K`` in K), rattled by a Gaussian of ``sigma_A``
    (Angstrom), and relaxed by at most ``relax_steps`` FIRE steps on the teacher; the children
    join the pool after the generation. Returns all children, in order, with ``info``:
    ``strategy="rattle-relax"``, ``generation`` (1-based), ``member`` (pool index, 1-based),
    ``parent`` (pool index of the parent; 0 is the seed), ``sigma_A``, ``temperature_K``.
    """
    pool = [seed.copy()]
    pool[0].calc = None
    calculator = TeacherCalculator(teacher)
    energies = [teacher_relax(pool[0].copy(), calculator, 0)]
    children: list[Atoms] = []
    for generation in range(1, generations + 1):
        weights = boltzmann_weights(energies, temperature_K)
        born = []
        for _ in range(children_per_generation):
            parent = int(rng.choice(len(pool), p=weights))
            child = pool[parent].copy()
            child.positions += rng.normal(0.0, sigma_A, child.positions.shape)
            energy = teacher_relax(child, calculator, relax_steps)
            child.info = {
                "seed": seed.info["seed"],
                "strategy": "rattle-relax",
                "generation": generation,
                "member": len(pool) + len(born),
                "parent": parent,
                "sigma_A": sigma_A,
                "temperature_K": temperature_K,
            }
            born.append((child, energy))
        pool += [child for child, _ in born]
        energies += [energy for _, energy in born]
        children += [child for child, _ in born]
    return children


def teacher_hessian(atoms: Atoms, teacher: Teacher, delta_A: float = 0.01) -> np.ndarray:
    """The teacher's Hessian [3N, 3N] in eV/Angstrom^2 by central differences of forces with
    displacements of ``delta_A`` (Angstrom), symmetrised. All 6N displaced structures go to the
    teacher in one batch."""
    n_coords = 3 * len(atoms)
    displaced = []
    for coordinate in range(n_coords):
        for sign in (1.0, -1.0):
            copy = atoms.copy()
            copy.calc = None
            copy.positions.reshape(-1)[coordinate] += sign * delta_A
            displaced.append(copy)
    forces = teacher.compute(displaced).forces_eV_per_A.reshape(n_coords, 2, n_coords)
    hessian = -(forces[:, 0] - forces[:, 1]) / (2.0 * delta_A)
    return 0.5 * (hessian + hessian.T)


def is_linear(atoms: Atoms, tolerance_A: float = 1e-3) -> bool:
    """Whether the atoms lie on one line (within ``tolerance_A``, Angstrom)."""
    if len(atoms) < 3:
        return True
    centred = atoms.positions - atoms.positions.mean(axis=0)
    return bool(np.linalg.svd(centred, compute_uv=False)[1] < tolerance_A)


def rigid_mode_count(atoms: Atoms) -> int:
    """Zero-frequency modes: 3 translations for periodic cells; 6 (5 if linear) for molecules."""
    if atoms.pbc.any():
        return 3
    return 5 if is_linear(atoms) else 6


def vibrational_modes(
    atoms: Atoms, hessian_eV_per_A2: np.ndarray, min_eigenvalue: float = MIN_MODE_EIGENVALUE
) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (omega^2, eV/(Angstrom^2 amu)) and mass-weighted eigenvectors (columns, [3N, k])
    of the vibrational modes: the `rigid_mode_count` modes of smallest |eigenvalue| are dropped,
    and so are imaginary or near-zero modes (eigenvalue below ``min_eigenvalue``)."""
    inv_sqrt_mass = np.repeat(1.0 / np.sqrt(atoms.get_masses()), 3)
    weighted = hessian_eV_per_A2 * np.outer(inv_sqrt_mass, inv_sqrt_mass)
    eigenvalues, eigenvectors = np.linalg.eigh(weighted)
    rigid = np.argsort(np.abs(eigenvalues))[: rigid_mode_count(atoms)]
    keep = np.setdiff1d(np.flatnonzero(eigenvalues >= min_eigenvalue), rigid)
    return eigenvalues[keep], eigenvectors[:, keep]


def harmonic_displacements_A(
    masses_amu: np.ndarray,
    eigenvalues: np.ndarray,
    eigenvectors: np.ndarray,
    temperature_K: float,
    count: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """``count`` classical thermal displacements [count, N, 3] (Angstrom) along the given modes:
    mass-weighted mode amplitudes are Gaussian with variance k_B T / omega^2, i.e. a Cartesian
    amplitude variance k_B T / (m omega^2) for a mode of reduced mass m."""
    sigma = np.sqrt(units.kB * temperature_K / eigenvalues)  # Angstrom sqrt(amu)
    amplitudes = rng.normal(size=(count, len(eigenvalues))) * sigma
    inv_sqrt_mass = np.repeat(1.0 / np.sqrt(masses_amu), 3)
    return ((amplitudes @ eigenvectors.T) * inv_sqrt_mass).reshape(count, -1, 3)


def normal_mode_samples(
    seed: Atoms,
    teacher: Teacher,
    temperatures_K: float | Sequence[float],
    count: int | Sequence[int],
    rng: np.random.Generator,
    delta_A: float = 0.01,
) -> list[Atoms]:
    """``count`` structures per temperature (K), or one count per temperature, displaced from
    ``seed`` along the teacher's normal modes with classical harmonic Gaussian amplitudes; the
    Hessian (computed once, for all temperatures) comes from central differences of teacher forces
    with steps of ``delta_A`` (Angstrom). Rigid, imaginary and near-zero modes are skipped (see
    `vibrational_modes`); the seed is best a teacher minimum. ``info``: ``strategy="normal-modes"``,
    ``temperature_K``, ``n_modes``."""
    temperatures_K = np.atleast_1d(temperatures_K)
    counts = np.broadcast_to(count, temperatures_K.shape) if np.ndim(count) == 0 else np.asarray(count)
    if counts.shape != temperatures_K.shape:
        raise ValueError(f"{len(counts)} counts for {len(temperatures_K)} temperatures")
    eigenvalues, eigenvectors = vibrational_modes(seed, teacher_hessian(seed, teacher, delta_A))
    structures = []
    for temperature_K, n_structures in zip(temperatures_K, counts):
        displacements = harmonic_displacements_A(
            seed.get_masses(), eigenvalues, eigenvectors, float(temperature_K), int(n_structures), rng
        )
        for displacement in displacements:
            atoms = seed.copy()
            atoms.calc = None
            atoms.positions += displacement
            atoms.info = {
                "seed": seed.info["seed"],
                "strategy": "normal-modes",
                "temperature_K": float(temperature_K),
                "n_modes": len(eigenvalues),
            }
            structures.append(atoms)
    return structures


# --------------------------------------------------------------------------- selection, filters


def per_structure(flat: np.ndarray, structures: Sequence[Atoms]) -> list[np.ndarray]:
    """A flat per-atom array [M, ...] split into one array per structure."""
    return np.split(np.asarray(flat), np.cumsum([len(a) for a in structures])[:-1])


def ensemble_spread(structures: Sequence[Atoms], teacher: Teacher, batch_size: int = 64) -> np.ndarray:
    """Per structure, the teacher ensemble's disagreement: max over atoms of the norm of the
    forces' standard deviation (eV/Angstrom), or, where the teacher gives no force spread, the
    energy standard deviation per atom (eV/atom)."""
    spreads = []
    for start in range(0, len(structures), batch_size):
        batch = structures[start : start + batch_size]
        out = teacher.compute(batch)
        if out.forces_std_eV_per_A is None:
            spreads += [e / len(a) for e, a in zip(out.energy_std_eV, batch)]
        else:
            spreads += [
                float(np.linalg.norm(s, axis=1).max()) if len(s) else 0.0
                for s in per_structure(out.forces_std_eV_per_A, batch)
            ]
    return np.asarray(spreads, dtype=float)


def select_by_disagreement(structures: Sequence[Atoms], teacher: Teacher, count: int) -> list[Atoms]:
    """The ``count`` structures on which the teacher ensemble disagrees most (see
    `ensemble_spread`), in their input order. Every input structure gets
    ``info["ensemble_force_std_eV_per_A"]`` (in place)."""
    structures = list(structures)
    spreads = ensemble_spread(structures, teacher)
    for atoms, spread in zip(structures, spreads):
        atoms.info["ensemble_force_std_eV_per_A"] = float(spread)
    chosen = np.sort(np.argsort(-spreads, kind="stable")[: max(count, 0)])
    return [structures[i] for i in chosen]


def max_force_filter(
    structures: Sequence[Atoms], teacher_forces: np.ndarray | Sequence[np.ndarray], max_force_eV_per_A: float
) -> list[Atoms]:
    """The structures whose largest teacher force norm is at most ``max_force_eV_per_A``.

    ``teacher_forces`` (eV/Angstrom) is either flat [M, 3] in structure order (as in
    `TeacherOutput`) or one [N_i, 3] array per structure.
    """
    if isinstance(teacher_forces, np.ndarray) and teacher_forces.ndim == 2:
        teacher_forces = per_structure(teacher_forces, structures)
    if len(teacher_forces) != len(structures):
        raise ValueError(f"{len(teacher_forces)} force arrays for {len(structures)} structures")
    return [
        atoms
        for atoms, forces in zip(structures, teacher_forces)
        if len(forces) == 0 or np.linalg.norm(forces, axis=1).max() <= max_force_eV_per_A
    ]


def distance_fingerprint_A(atoms: Atoms) -> np.ndarray:
    """All interatomic distances (minimum image for periodic cells), sorted; Angstrom."""
    if len(atoms) < 2:
        return np.zeros(0)
    distances = atoms.get_all_distances(mic=atoms.pbc.any())
    return np.sort(distances[np.triu_indices(len(atoms), k=1)])


def remove_near_duplicates(structures: Sequence[Atoms], tolerance_A: float) -> list[Atoms]:
    """``structures`` without near duplicates: a structure with the same composition as an earlier
    kept one and every sorted interatomic distance within ``tolerance_A`` (Angstrom) of it is
    dropped; the first of each set is kept."""
    kept: list[Atoms] = []
    fingerprints: dict[tuple[int, ...], list[np.ndarray]] = {}
    for atoms in structures:
        composition = tuple(sorted(atoms.numbers.tolist()))
        fingerprint = distance_fingerprint_A(atoms)
        previous = fingerprints.setdefault(composition, [])
        if any(np.all(np.abs(fingerprint - other) <= tolerance_A) for other in previous):
            continue
        previous.append(fingerprint)
        kept.append(atoms)
    return kept
