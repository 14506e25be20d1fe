"""What the evaluate stage runs on the targets: the starts of the student's long NVT, the teacher's
own MD frames it is compared with, and the systems the speed table times (each target at several
sizes, equilibrated by the teacher)."""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator

from mlff_distill.sampling.boxes import replicated
from mlff_distill.sampling.condensed import equilibrated_system, teacher_md_frames
from mlff_distill.sampling.targets import Target
from mlff_distill.settings import TargetSettings


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


def timing_systems(
    targets: Sequence[Target],
    settings: TargetSettings,
    sizes: Sequence[int],
    md_calculator: Calculator,
    seed: int,
    logger: logging.Logger,
) -> list[Atoms]:
    """Each periodic target at each of ``sizes`` (atoms, about): a system of the smallest size
    equilibrated by teacher MD (``md_calculator``, an ASE calculator of the teacher) at the target's
    lowest temperature (`equilibrated_system`), repeated
    to the larger sizes (`replicated`). Molecule targets are not timed here (not periodic). The
    systems come smallest first, all targets together: FeNNol teachers keep the padded size of the
    largest system they have seen, so a small system timed after a large one would be slowed."""
    rng = np.random.default_rng([seed, 4])
    systems = []
    for target in targets:
        if target.kind == "molecule":
            logger.info("target %s: a molecule, not timed at the speed table's sizes", target.name)
            continue
        smallest = equilibrated_system(target, min(sizes), settings, md_calculator, min(target.temperatures_K), rng)
        for size in sizes:
            system = smallest if size == min(sizes) else replicated(smallest, size)
            system.info.update(system=target.name, target=target.name)
            systems.append(system)
        logger.info("target %s timed at %s atoms", target.name, [len(s) for s in systems[-len(sizes) :]])
    return sorted(systems, key=len)
