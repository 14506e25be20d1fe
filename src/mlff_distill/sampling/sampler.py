"""The training set's design: structures for the teacher to label, made from the seeds and the targets.

Two strategies are always available: rattling (Gaussian displacements, sigma in Angstrom) and short
Langevin MD driven by the teacher at several temperatures (K); the others of
`mlff_distill.sampling.strategies` run when their settings ask for structures. With targets (the
systems the user will simulate, `mlff_distill.sampling.targets`), their teacher MD and the structures
derived from it (`mlff_distill.sampling.condensed`) join the training data, and their test trajectories,
from starts of their own, are the test split. Every structure records in ``atoms.info`` where it came
from (``seed``, ``strategy``, ``temperature_K``, ``target``), its ``group`` (one MD trajectory with the
structures derived from it, or one rattled structure) and its ``split``; splits are drawn by group, so
frames of one trajectory never straddle train, validation and test.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Collection, Sequence

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator
from ase.io import write
from tqdm import tqdm

from mlff_distill.sampling import strategies
from mlff_distill.sampling.condensed import derived_structures, target_trajectories
from mlff_distill.sampling.seeds import read_seed_files, seed_structures
from mlff_distill.sampling.strategies import teacher_md
from mlff_distill.sampling.targets import Target, target_start
from mlff_distill.settings import SampleSettings, TargetSettings
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


def min_distance_A(atoms: Atoms) -> float:
    """Shortest interatomic distance (minimum image for periodic cells), Angstrom."""
    if len(atoms) < 2:
        return float("inf")
    distances = atoms.get_all_distances(mic=atoms.pbc.any())
    return float(distances[np.triu_indices(len(atoms), k=1)].min())


def assign_splits(
    groups: Sequence[int],
    val_fraction: float,
    test_fraction: float,
    rng: np.random.Generator,
    always_train: Collection[int] = (),
) -> list[str]:
    """A split per structure such that all structures of a group share one split.

    Groups are shuffled and filled into test, then validation, until each holds its fraction of
    the structures; the rest is training data. The groups ``always_train`` are training data
    whatever the draw (the others are drawn as if they were not there).
    """
    groups = np.asarray(groups)
    unique, sizes = np.unique(groups, return_counts=True)
    order = rng.permutation(len(unique))
    targets = {"test": test_fraction * len(groups), "val": val_fraction * len(groups)}
    split_of_group, filled = {}, {"test": 0, "val": 0}
    for position in order:
        split = "train"
        if unique[position] not in always_train:
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


def check_targets(
    targets: Sequence[Target], teacher: Teacher, molecule_only: bool, min_distance_A: float, rng: np.random.Generator
) -> None:
    """Build one start of each target (packing errors come here) and check it against the teacher
    (species, periodicity, cell size for its cutoff, overlaps); a ValueError names the target."""
    for target in targets:
        start = target_start(target, rng, min_distance_A)
        try:
            check_structures_for(teacher, [start], molecule_only)
        except ValueError as error:
            raise ValueError(f"target {target.name}: {error}") from error


def target_groups(
    target: Target, settings: TargetSettings, md_calculator: Calculator, random_seed: int, logger: logging.Logger
) -> tuple[list[list[Atoms]], list[list[Atoms]]]:
    """The target's training groups (each a teacher MD trajectory followed by the structures derived
    from it) and test groups (test trajectories), their MD driven by ``md_calculator`` (an ASE
    calculator of the teacher, `mlff_distill.sampling.condensed.target_trajectories`). Training draws from
    ``default_rng([random_seed, 2, <name>])``, the test from ``default_rng([random_seed, 1, <name>])``
    (the name's bytes): test starts are packed apart from the training ones, each target's data do
    not depend on the other targets, and the test trajectories do not change the training data."""
    name = list(target.name.encode())
    train_rng = np.random.default_rng([random_seed, 2, *name])
    test_rng = np.random.default_rng([random_seed, 1, *name])
    trajectories = target_trajectories(target, settings, md_calculator, train_rng, logger, test=False)
    derived = [derived_structures(frames, settings, train_rng) for frames in trajectories]
    training = [frames + more for frames, more in zip(trajectories, derived)]
    logger.info(
        "target %s: %d training trajectories, %d frames, %d derived structures",
        target.name,
        len(trajectories),
        sum(map(len, trajectories)),
        sum(map(len, derived)),
    )
    return training, target_trajectories(target, settings, md_calculator, test_rng, logger, test=True)


def sample_structures(
    settings: SampleSettings,
    random_seed: int,
    teacher: Teacher,
    molecule_only: bool,
    logger: logging.Logger,
    target_training: Sequence[Sequence[Atoms]] = (),
    target_test: Sequence[Sequence[Atoms]] = (),
) -> list[Atoms]:
    """All structures of the sample stage, filtered, grouped and split; ``random_seed`` seeds every
    random choice; ``molecule_only`` (the teacher's setting) refuses periodic seeds.

    Without targets, ``test_fraction`` of the groups is the test split. With the targets' groups
    (`target_groups`: ``target_training``, ``target_test``), their training groups join the seeds'
    structures in train and validation, and their test trajectories are the test split. With
    ``test_files``, their frames are test structures too, as given, and no sampled training
    structure is.
    """
    targets = bool(target_training or target_test)
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
        calculator = TeacherCalculator(teacher)
        for seed, temperature in tqdm(md_jobs, desc="teacher MD", unit="trajectory"):
            trajectories.append(teacher_md(seed, calculator, temperature, settings.md, rng))
            logger.info("MD %s at %g K: %d frames", seed.info["seed"], temperature, len(trajectories[-1]))
    trajectories += extra_strategies(seeds, settings, teacher, rng, logger)
    test_groups = [list(group) for group in target_test]
    first_target_group = len(trajectories)
    trajectories += [list(group) for group in target_training]
    structures = teacher_filters(_numbered(trajectories, 0, settings, logger), settings, teacher, logger)
    groups = [atoms.info["group"] for atoms in structures]
    test_files = read_seed_files(settings.test_files)
    test_fraction = 0.0 if test_files or targets else settings.test_fraction
    always_train = first_trajectory_of_each_target(target_training, first_target_group)
    splits = assign_splits(groups, settings.val_fraction, test_fraction, rng, always_train)
    tests = _numbered(test_groups, len(trajectories), settings, logger)
    for group, atoms in enumerate(test_files, start=len(trajectories) + len(test_groups)):
        atoms.info.update(strategy="test-file", group=group)
    tests += test_files
    structures, splits = structures + tests, splits + ["test"] * len(tests)
    for index, (atoms, split) in enumerate(zip(structures, splits)):
        atoms.info["split"] = split
        atoms.info["sample_index"] = index
    return structures


def first_trajectory_of_each_target(target_training: Sequence[Sequence[Atoms]], first_group: int) -> set[int]:
    """The group (``first_group`` + position) of the first training trajectory of each target at
    each temperature: kept in training, so that no target and temperature is left to validation
    alone (with the default single trajectory each, a draw would otherwise do that)."""
    first: dict[tuple, int] = {}
    for position, trajectory in enumerate(target_training):
        if trajectory:
            key = (trajectory[0].info["target"], trajectory[0].info.get("temperature_K"))
            first.setdefault(key, first_group + position)
    return set(first.values())


def _numbered(
    trajectories: Sequence[Sequence[Atoms]], first_group: int, settings: SampleSettings, logger: logging.Logger
) -> list[Atoms]:
    """The structures of ``trajectories``, each with ``info["group"]`` (``first_group`` + its
    trajectory's position); those with atoms closer than ``settings.min_distance_A`` are dropped."""
    structures = []
    for group, trajectory in enumerate(trajectories, start=first_group):
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
    return structures


def write_structures(structures: Sequence[Atoms], path: Path) -> None:
    """Write ``structures`` to an extxyz file atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.extxyz")
    write(partial, list(structures), format="extxyz")
    partial.rename(path)
