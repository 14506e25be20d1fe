"""What the evaluate stage runs on the targets: the starts of the student's long NVT, the teacher's
own MD frames it is compared with, and the systems the speed table times (each target at several
sizes, equilibrated by the teacher) with the frames its accuracy there is measured on."""

from __future__ import annotations

import logging
from typing import Mapping, Sequence

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator

from mlff_distill.evaluation.accuracy import prediction_errors
from mlff_distill.evaluation.ensemble_member import member_test_accuracy
from mlff_distill.evaluation.references import teacher_labels
from mlff_distill.evaluation.speed import ACCURACY_COLUMNS
from mlff_distill.sampling.boxes import replicated
from mlff_distill.sampling.condensed import equilibrated_frames, teacher_md_frames
from mlff_distill.sampling.targets import Target
from mlff_distill.settings import TargetSettings
from mlff_distill.student import StudentPotential, predict
from mlff_distill.teachers import Teacher


def nvt_starts(
    targets: Sequence[Target], sampled: Sequence[Atoms], all_temperatures: bool
) -> list[tuple[str, float, Atoms]]:
    """(target, temperature_K, start) for the student's NVT: each target at its highest
    temperature (or at every one), from the last teacher-MD test frame there (else the last
    training frame): an equilibrated start the student did not train on."""
    frames = teacher_md_frames(sampled)
    starts = []
    for target in targets:
        temperatures = sorted(target.temperatures_K) if all_temperatures else [max(target.temperatures_K)]
        for temperature in temperatures:
            candidates = frames.get((target.name, float(temperature)), [])
            tests = [atoms for atoms in candidates if atoms.info["strategy"] == "test-md"]
            if not candidates:
                raise ValueError(f"target {target.name}: no teacher MD frames at {temperature:g} K to start from")
            starts.append((target.name, float(temperature), (tests or candidates)[-1].copy()))
    return starts


def timed_target_frames(
    targets: Sequence[Target],
    settings: TargetSettings,
    n_atoms: int,
    md_calculator: Calculator,
    seed: int,
    frames: int,
    logger: logging.Logger,
) -> dict[str, list[Atoms]]:
    """For each periodic target, ``frames`` teacher-MD frames of a system of about ``n_atoms``
    atoms (the speed table's smallest) at the target's lowest temperature, run as its test
    trajectories are (`equilibrated_frames`, driven by ``md_calculator``): the first is the timed
    system, all are where the student's accuracy on it is measured (`frames_accuracy`). Molecule
    targets are not timed here (not periodic)."""
    rng = np.random.default_rng([seed, 4])
    found = {}
    for target in targets:
        if target.kind == "molecule":
            logger.info("target %s: a molecule, not timed at the speed table's sizes", target.name)
            continue
        temperature = min(target.temperatures_K)
        found[target.name] = equilibrated_frames(target, n_atoms, settings, md_calculator, temperature, rng, frames)
        size = len(found[target.name][0])
        logger.info("target %s: %d teacher-MD frames of %d atoms at %g K", target.name, frames, size, temperature)
    return found


def timing_systems(frames_by_target: Mapping[str, Sequence[Atoms]], sizes: Sequence[int]) -> list[Atoms]:
    """Each target's first frame (`timed_target_frames`, built at the smallest of ``sizes``),
    repeated to the larger ``sizes`` (atoms, about; `replicated`). The systems come smallest first,
    all targets together: FeNNol teachers keep the padded size of the largest system they have
    seen, so a small system timed after a large one would be slowed."""
    smallest, systems = min(sizes), []
    for name, frames in frames_by_target.items():
        for size in sizes:
            system = frames[0].copy() if size == smallest else replicated(frames[0], size)
            system.info.update(system=name, target=name)
            systems.append(system)
    return sorted(systems, key=len)


def frames_accuracy(
    frames: Sequence[Atoms], teacher: Teacher, student: StudentPotential, member: Teacher | None
) -> dict[str, float]:
    """The student's errors against ``teacher`` over ``frames``, the speed table's
    `ACCURACY_COLUMNS` (relative RMS force error, force MAE in eV/Angstrom, energy MAE in eV/atom,
    relative stress error), and ``member``'s (an ensemble teacher's member) as ``member_*``."""
    labels = teacher_labels(teacher, frames)
    errors = prediction_errors(labels, predict(student, labels, compute_stress=True))
    found = {key: errors[key] for key in ACCURACY_COLUMNS if key in errors}
    if member is not None:
        errors = member_test_accuracy(member, labels, compute_stress=True)
        found.update({f"member_{key}": errors[key] for key in ACCURACY_COLUMNS if key in errors})
    return found


def with_frames_accuracy(rows: Sequence[dict], accuracy_by_target: Mapping[str, dict], frames: int) -> list[dict]:
    """The speed table's ``rows`` with each target's accuracy over its frames (`frames_accuracy`)
    in place of the one timed frame's: the timed frame's own errors (from the timed calls) stay as
    ``timed_frame_*``, ``n_accuracy_frames`` says how many frames the row's errors cover. A larger
    system is the smallest one repeated (`timing_systems`), its frames likewise: a replica of a
    periodic frame has the same errors per atom and relative errors, so those measured at the
    smallest size hold at every size (the ``timed_frame_*`` columns show it, within the teacher's
    rounding)."""
    updated = []
    for row in rows:
        row = dict(row)
        accuracy = accuracy_by_target.get(row.get("target"))
        if accuracy is not None:
            own = [key for key in (*ACCURACY_COLUMNS, *(f"member_{key}" for key in ACCURACY_COLUMNS)) if key in row]
            row.update({f"timed_frame_{key}": row[key] for key in own})
            row.update(accuracy, n_accuracy_frames=frames)
        updated.append(row)
    return updated
