"""The training set's design: structures for the teacher to label, made from the seeds.

Two strategies are always available: rattling (Gaussian displacements, sigma in Angstrom) and short
Langevin MD driven by the teacher at several temperatures (K); the others of
`mlff_distill.sampling.strategies` run when their settings ask for structures. Every structure
records in ``atoms.info`` where it came from (``seed``, ``strategy``, ``temperature_K``), its
``group`` (one MD trajectory, or one rattled structure) and its ``split``; splits are drawn by
group, so frames of one trajectory never straddle train, validation and test.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
from ase import Atoms, units
from ase.io import write
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary, ZeroRotation, thermalize_momenta
from tqdm import tqdm

from mlff_distill.sampling import strategies
from mlff_distill.sampling.seeds import read_seed_files, seed_structures
from mlff_distill.settings import MDSettings, SampleSettings
from mlff_distill.teachers import Teacher, TeacherCalculator, check_structures_for

SPLITS = ("train", "val", "test")


def rattled(seed: Atoms, count: int, sigma_range_A: Sequence[float], rng: np.random.Generator) -> list[Atoms]:
    """``count`` copies of ``seed``, each displaced by a Gaussian of sigma drawn from the range."""
    structures = []
    for _ in range(count):
        sigma = rng.uniform(*sigma_range_A)
        atoms = seed.copy()
        atoms.positions += rng.normal(0.0, sigma, atoms.positions.shape)
        atoms.info = {"seed": seed.info["seed"], "strategy": "rattle", "sigma_A": sigma}
        structures.append(atoms)
    return structures


def teacher_md(
    seed: Atoms, teacher: Teacher, temperature_K: float, md: MDSettings, rng: np.random.Generator
) -> list[Atoms]:
    """Frames of a Langevin trajectory driven by the teacher, taken after equilibration."""
    atoms = seed.copy()
    atoms.calc = TeacherCalculator(teacher)
    thermalize_momenta(atoms, temperature_K=temperature_K, rng=rng)
    Stationary(atoms)
    if not atoms.pbc.any():  # rotation is a rigid mode of molecules only
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
    frames = []
    for _ in range(md.frames_per_trajectory):
        dynamics.run(md.steps_between_frames)
        frame = Atoms(
            numbers=atoms.numbers, positions=atoms.positions.copy(), cell=atoms.cell.copy(), pbc=atoms.pbc.copy()
        )
        frame.info = {"seed": seed.info["seed"], "strategy": "md", "temperature_K": temperature_K}
        frames.append(frame)
    return frames


def min_distance_A(atoms: Atoms) -> float:
    """Shortest interatomic distance (minimum image for periodic cells), Angstrom."""
    if len(atoms) < 2:
        return float("inf")
    distances = atoms.get_all_distances(mic=atoms.pbc.any())
    return float(distances[np.triu_indices(len(atoms), k=1)].min())


def assign_splits(
    groups: Sequence[int], val_fraction: float, test_fraction: float, rng: np.random.Generator
) -> list[str]:
    """A split per structure such that all structures of a group share one split.

    Groups are shuffled and filled into test, then validation, until each holds its fraction of
    the structures; the rest is training data.
    """
    groups = np.asarray(groups)
    unique, sizes = np.unique(groups, return_counts=True)
    order = rng.permutation(len(unique))
    targets = {"test": test_fraction * len(groups), "val": val_fraction * len(groups)}
    split_of_group, filled = {}, {"test": 0, "val": 0}
    for position in order:
        split = next((s for s in ("test", "val") if filled[s] < targets[s]), "train")
        split_of_group[unique[position]] = split
        if split != "train":
            filled[split] += sizes[position]
    return [split_of_group[g] for g in groups]


def extra_strategies(
    seeds: Sequence[Atoms], settings: SampleSettings, teacher: Teacher, rng: np.random.Generator, logger: logging.Logger
) -> list[list[Atoms]]:
    """Groups of structures from the optional strategies of `mlff_distill.sampling.strategies`; each is off
    unless its settings ask for structures."""
    groups: list[list[Atoms]] = []
    strain = settings.rattle_strain
    if strain.structures_per_seed:
        for seed in seeds:
            groups += [
                [atoms]
                for atoms in strategies.rattle_and_strain(
                    seed, strain.structures_per_seed, strain.sigma_A, strain.max_strain, rng
                )
            ]
    relax = settings.rattle_relax
    if relax.generations:
        for seed in tqdm(seeds, desc="rattle-relax", unit="seed"):
            groups.append(
                strategies.rattle_relax(
                    seed,
                    teacher,
                    relax.generations,
                    relax.children_per_generation,
                    relax.sigma_A,
                    relax.relax_steps,
                    relax.temperature_K,
                    rng,
                )
            )
            logger.info("rattle-relax %s: %d structures", seed.info["seed"], len(groups[-1]))
    vacancies = settings.vacancies
    if vacancies.structures_per_seed:
        for seed in (seed for seed in seeds if seed.pbc.all()):
            groups += [
                [atoms]
                for atoms in strategies.with_vacancies(
                    seed, vacancies.structures_per_seed, vacancies.max_vacancies, vacancies.sigma_A, rng
                )
            ]
    modes = settings.normal_modes
    if np.any(modes.structures_per_seed):
        for seed in tqdm(seeds, desc="normal modes", unit="seed"):
            groups += [
                [atoms]
                for atoms in strategies.normal_mode_samples(
                    seed, teacher, modes.temperatures_K, modes.structures_per_seed, rng, modes.delta_A
                )
            ]
    return groups


def teacher_filters(
    structures: list[Atoms], settings: SampleSettings, teacher: Teacher, logger: logging.Logger
) -> list[Atoms]:
    """The optional filters, in order: near duplicates (``duplicate_tolerance_A``), largest
    teacher force (``max_force_eV_per_A``), ensemble disagreement (``select_by_disagreement``, a
    count). Each is off when its setting is null."""
    before = len(structures)
    if settings.duplicate_tolerance_A is not None:
        structures = strategies.remove_near_duplicates(structures, settings.duplicate_tolerance_A)
        logger.info("near-duplicate removal kept %d of %d structures", len(structures), before)
    if settings.max_force_eV_per_A is not None and structures:
        forces = [teacher.compute(structures[i : i + 64]).forces_eV_per_A for i in range(0, len(structures), 64)]
        count = len(structures)
        structures = strategies.max_force_filter(structures, np.concatenate(forces), settings.max_force_eV_per_A)
        logger.info("max-force filter kept %d of %d structures", len(structures), count)
    if settings.select_by_disagreement is not None:
        count = len(structures)
        structures = strategies.select_by_disagreement(structures, teacher, settings.select_by_disagreement)
        logger.info("disagreement selection kept %d of %d structures", len(structures), count)
    return structures


def sample_structures(
    settings: SampleSettings, random_seed: int, teacher: Teacher, molecule_only: bool, logger: logging.Logger
) -> list[Atoms]:
    """All structures of the sample stage, filtered, grouped and split; ``random_seed`` seeds every
    random choice; ``molecule_only`` (the teacher's setting) refuses periodic seeds.

    With ``test_files``, their frames are the test split, as given, and no sampled structure is.
    """
    rng = np.random.default_rng(random_seed)
    seeds = seed_structures(settings)
    check_structures_for(teacher, seeds, molecule_only)
    trajectories: list[list[Atoms]] = []
    for seed in seeds:
        trajectories += [
            [atoms] for atoms in rattled(seed, settings.rattle.structures_per_seed, settings.rattle.sigma_A, rng)
        ]
    md_jobs = [(seed, t) for seed in seeds for t in settings.md.temperatures_K]
    if settings.md.frames_per_trajectory:
        for seed, temperature in tqdm(md_jobs, desc="teacher MD", unit="trajectory"):
            trajectories.append(teacher_md(seed, teacher, temperature, settings.md, rng))
            logger.info("MD %s at %g K: %d frames", seed.info["seed"], temperature, len(trajectories[-1]))
    trajectories += extra_strategies(seeds, settings, teacher, rng, logger)
    structures = []
    for group, trajectory in enumerate(trajectories):
        for atoms in trajectory:
            if min_distance_A(atoms) < settings.min_distance_A:
                logger.warning(
                    "dropped a %s structure (%s): atoms closer than %g A",
                    atoms.info["seed"],
                    atoms.info["strategy"],
                    settings.min_distance_A,
                )
                continue
            atoms.info["group"] = group
            structures.append(atoms)
    structures = teacher_filters(structures, settings, teacher, logger)
    groups = [atoms.info["group"] for atoms in structures]
    test_files = read_seed_files(settings.test_files)
    test_fraction = 0.0 if test_files else settings.test_fraction
    splits = assign_splits(groups, settings.val_fraction, test_fraction, rng)
    for group, atoms in enumerate(test_files, start=len(trajectories)):
        atoms.info.update(strategy="test-file", group=group)
    structures, splits = structures + test_files, splits + ["test"] * len(test_files)
    for index, (atoms, split) in enumerate(zip(structures, splits)):
        atoms.info["split"] = split
        atoms.info["sample_index"] = index
    return structures


def write_structures(structures: Sequence[Atoms], path: Path) -> None:
    """Write ``structures`` to an extxyz file atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.extxyz")
    write(partial, list(structures), format="extxyz")
    partial.rename(path)
