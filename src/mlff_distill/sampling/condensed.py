"""Training and test data of the targets (`mlff_distill.sampling.targets`): teacher MD of each target
at each of its temperatures, and structures derived from its frames.

`target_trajectories` runs the teacher's Langevin MD from fresh starts (packed anew for boxes),
after a short FIRE relaxation; `derived_structures` makes, from the frames of one trajectory,
rattled copies with a strained cell (periodic frames) and molecular clusters (`molecular_clusters`:
pairs and small clusters of whole molecules cut from frames that carry ``molecule_index``, as
non-periodic structures); `teacher_md_frames` finds the teacher-MD frames of each target among
sampled structures. Units: Angstrom, K, fs.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from typing import Sequence

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator
from ase.geometry import find_mic
from tqdm import tqdm

from mlff_distill.sampling.strategies import rattle_and_strain, teacher_md, teacher_relax
from mlff_distill.sampling.targets import Target, target_of_size, target_start
from mlff_distill.settings import TargetMDSettings, TargetSettings

TEACHER_MD = ("md", "test-md")  # the strategies of teacher-MD frames: training (and validation), test


def teacher_md_frames(sampled: Sequence[Atoms]) -> dict[tuple[str, float], list[Atoms]]:
    """The teacher's MD frames of each (target, temperature_K) among the sampled structures, in order."""
    frames: dict[tuple[str, float], list[Atoms]] = collections.defaultdict(list)
    for atoms in sampled:
        if atoms.info.get("strategy") in TEACHER_MD and "target" in atoms.info:
            frames[(atoms.info["target"], float(atoms.info["temperature_K"]))].append(atoms)
    return dict(frames)


def training_teacher_md_samples(sampled: Sequence[Atoms]) -> list[int]:
    """Sample indices of the teacher's MD frames of the targets in the training split."""
    return sorted(
        int(atoms.info["sample_index"])
        for frames in teacher_md_frames(sampled).values()
        for atoms in frames
        if atoms.info.get("split") == "train"
    )


def molecular_clusters(frame: Atoms, sizes: Sequence[int], per_frame: int, rng: np.random.Generator) -> list[Atoms]:
    """Clusters of whole molecules cut from a periodic ``frame`` with ``arrays["molecule_index"]``:
    for each size, ``per_frame`` clusters.

    A cluster of ``size`` >= 3 is a random central molecule and its size - 1 nearest molecules
    (minimum-image distance between molecular centres of mass); a pair (size 2) is a random molecule
    and a random other one, at any distance, so that pairs show the student two molecules at short and
    long range. Every molecule sits where its minimum image relative to the central one is, made whole
    across the periodic boundary: a pair's separation is its minimum-image separation in the frame.
    Sizes larger than the frame's number of molecules are skipped.

    Each cluster is non-periodic (zero cell), ``arrays["molecule_index"]`` 0..size-1 (central molecule
    first); ``info``: the frame's ``seed``, ``target`` and ``temperature_K`` (where present),
    ``strategy="cluster"``, ``cluster_size``.
    """
    if "molecule_index" not in frame.arrays:
        raise ValueError("molecular_clusters: the frame has no arrays['molecule_index']")
    index = np.asarray(frame.arrays["molecule_index"], dtype=int)
    molecules = [np.flatnonzero(index == m) for m in np.unique(index)]
    whole = [_whole(frame, atoms) for atoms in molecules]
    masses = frame.get_masses()
    centres = np.array([masses[atoms] @ positions / masses[atoms].sum() for atoms, positions in zip(molecules, whole)])
    provenance = {key: frame.info[key] for key in ("seed", "target", "temperature_K") if key in frame.info}
    clusters = []
    for size in sizes:
        size = int(size)
        if size < 1 or size > len(molecules):
            continue
        for _ in range(per_frame):
            central = int(rng.integers(len(molecules)))
            to_centres, distances = find_mic(centres - centres[central], frame.cell, frame.pbc)
            if size == 2:
                others = np.delete(np.arange(len(molecules)), central)
                chosen = [central, int(rng.choice(others))]
            else:
                order = np.argsort(distances, kind="stable")
                chosen = [central] + [int(m) for m in order if m != central][: size - 1]
            positions = [whole[m] - centres[m] + centres[central] + to_centres[m] for m in chosen]
            cluster = Atoms(
                numbers=np.concatenate([frame.numbers[molecules[m]] for m in chosen]),
                positions=np.concatenate(positions),
            )
            cluster.arrays["molecule_index"] = np.repeat(np.arange(size), [len(molecules[m]) for m in chosen])
            cluster.info = {**provenance, "strategy": "cluster", "cluster_size": size}
            clusters.append(cluster)
    return clusters


def _whole(frame: Atoms, atoms: np.ndarray) -> np.ndarray:
    """Positions of the atoms ``atoms`` of one molecule made whole: each at the minimum image of its
    vector from the molecule's first atom (molecules smaller than half the cell)."""
    first = frame.positions[atoms[0]]
    vectors, _ = find_mic(frame.positions[atoms] - first, frame.cell, frame.pbc)
    return first + vectors


def target_trajectories(
    target: Target,
    settings: TargetSettings,
    md_calculator: Calculator,
    rng: np.random.Generator,
    logger: logging.Logger,
    test: bool,
) -> list[list[Atoms]]:
    """Teacher MD trajectories of ``target``: for each of its temperatures, ``settings.md.trajectories``
    runs (when ``test``: ``settings.test.trajectories`` runs of ``settings.test.frames_per_trajectory``
    frames), each from a fresh `target_start` (boxes packed anew with ``settings.min_distance_A``),
    relaxed by ``settings.md.relax_steps`` FIRE steps on the teacher (fixed cell), then Langevin MD
    (`mlff_distill.sampling.strategies.teacher_md` with ``settings.md``), both driven by
    ``md_calculator`` (the teacher's fastest implementation in MD,
    `mlff_distill.teachers.teacher_md_calculator`; the label stage labels the frames). Frames' ``info``: ``seed``
    and ``target`` (the name), ``temperature_K``, ``strategy`` "md" (or "test-md"); box frames keep
    ``molecule_index``. Every random choice comes from ``rng``."""
    runs = settings.test.trajectories if test else settings.md.trajectories
    frames = settings.test.frames_per_trajectory if test else settings.md.frames_per_trajectory
    if not runs or not frames:
        return []
    md = md_of_test_runs(settings, frames) if test else settings.md
    strategy = "test-md" if test else "md"
    jobs = [(float(t), run) for t in target.temperatures_K for run in range(runs)]
    trajectories = []
    for temperature, run in tqdm(jobs, desc=f"{strategy} {target.name}", unit="trajectory"):
        start = target_start(target, rng, settings.min_distance_A)
        energy = teacher_relax(start, md_calculator, settings.md.relax_steps)
        trajectories.append(teacher_md(start, md_calculator, temperature, md, rng, strategy=strategy))
        logger.info(
            "%s %s at %g K, run %d of %d: %d atoms, %d frames (start energy %.3f eV after %d relax steps)",
            strategy,
            target.name,
            temperature,
            run + 1,
            runs,
            len(start),
            len(trajectories[-1]),
            energy,
            settings.md.relax_steps,
        )
    return trajectories


def derived_structures(frames: Sequence[Atoms], settings: TargetSettings, rng: np.random.Generator) -> list[Atoms]:
    """Structures derived from the frames of one trajectory (so they belong to its group and split):
    for each periodic frame, ``settings.rattle.structures_per_frame`` copies rattled by a Gaussian of
    sigma drawn from ``settings.rattle.sigma_A`` with a random cell strain up to
    ``settings.rattle.max_strain`` (`rattle_and_strain`, strategy "rattle-strain"); for each frame with
    ``molecule_index``, `molecular_clusters` of ``settings.clusters.sizes``,
    ``settings.clusters.per_frame`` of each. ``info`` keeps the frame's ``target`` and
    ``temperature_K``."""
    rattle, clusters = settings.rattle, settings.clusters
    derived: list[Atoms] = []
    for frame in frames:
        provenance = {key: frame.info[key] for key in ("target", "temperature_K") if key in frame.info}
        if frame.pbc.all() and rattle.structures_per_frame:
            for atoms in rattle_and_strain(frame, rattle.structures_per_frame, rattle.sigma_A, rattle.max_strain, rng):
                atoms.info.update(provenance)
                derived.append(atoms)
        if "molecule_index" in frame.arrays and clusters.per_frame and clusters.sizes:
            derived += molecular_clusters(frame, clusters.sizes, clusters.per_frame, rng)
    return derived


def md_of_test_runs(settings: TargetSettings, frames: int) -> TargetMDSettings:
    """``settings.md`` as the test trajectories run it: ``settings.test``'s equilibration and
    spacing of frames (longer, spread over the run), ``frames`` frames."""
    return dataclasses.replace(
        settings.md,
        equilibration_steps=settings.test.equilibration_steps,
        frames_per_trajectory=frames,
        steps_between_frames=settings.test.steps_between_frames,
    )


def equilibrated_frames(
    target: Target,
    n_atoms: int,
    settings: TargetSettings,
    md_calculator: Calculator,
    temperature_K: float,
    rng: np.random.Generator,
    frames: int,
) -> list[Atoms]:
    """``frames`` frames of a periodic system of ``target`` with about ``n_atoms`` atoms
    (`target_of_size`), relaxed and then run by teacher MD (``md_calculator``) at ``temperature_K``
    as the test trajectories are (`md_of_test_runs`: equilibrated, then a frame every
    ``settings.test.steps_between_frames`` steps); ``info``: ``system`` and ``target`` (the name)."""
    start = target_of_size(target, n_atoms, rng, settings.min_distance_A)
    start.info.update(seed=target.name, target=target.name)
    teacher_relax(start, md_calculator, settings.md.relax_steps)
    run = teacher_md(start, md_calculator, temperature_K, md_of_test_runs(settings, frames), rng, strategy="timing")
    for frame in run:
        frame.info.update(system=target.name, target=target.name)
    return run
