"""The sample stage: structures for the teacher to label, written as extxyz.

`run_target` (one Snakemake job per target, in parallel) makes a target's training and test data
by teacher MD (`mlff_distill.sampling.sampler.target_groups`); `run` makes the seeds' structures
and gathers everything into one file with groups, splits and sample indices
(`mlff_distill.sampling.sampler.sample_structures`), logging counts to MLflow.
"""

from __future__ import annotations

import collections
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from ase import Atoms
from ase.io import read

from mlff_distill.logs import stage_logger
from mlff_distill.sampling.sampler import SPLITS, check_targets, sample_structures, target_groups, write_structures
from mlff_distill.sampling.targets import targets_from
from mlff_distill.settings import SampleSettings, TargetSettings, TeacherSettings, build
from mlff_distill.teachers import load_teacher, teacher_implementations, teacher_md_calculator
from mlff_distill.tracking import stage_run


def run_target(
    *,
    seed: int,
    target_name: str,
    target: dict,
    teacher: dict,
    structures_file: Path,
    pipeline_file: Path,
    log_file: Path,
    threads: int = 1,
) -> None:
    """The Snakemake job of one target: check it against the teacher (before any MD), then its
    training and test trajectories, run by the teacher's fastest implementation in MD
    (`mlff_distill.teachers.teacher_md_calculator`; the label stage labels their frames with the
    teacher itself); each structure's ``info["trajectory"]`` numbers its group within the file and
    ``info["test"]`` marks the test trajectories."""
    logger = stage_logger(f"sample-{target_name}", log_file)
    torch.set_num_threads(threads)
    settings, teacher_settings = build(TargetSettings, target, "target"), build(TeacherSettings, teacher, "teacher")
    (chosen,) = [t for t in targets_from(settings.systems) if t.name == target_name]
    with stage_run(pipeline_file, f"sample {target_name}", {"target": target}, log_file) as tracker:
        start = time.perf_counter()
        model = load_teacher(teacher_settings)
        check_targets(
            [chosen], model, teacher_settings.molecule_only, settings.min_distance_A, np.random.default_rng([seed, 3])
        )
        implementations = teacher_implementations(teacher_settings)
        md_name, md_calculator = teacher_md_calculator(model, implementations)
        logger.info("teacher MD by %s", md_name)
        training, test = target_groups(chosen, settings, md_calculator, seed, logger)
        structures = []
        for index, (group, is_test) in enumerate([(g, False) for g in training] + [(g, True) for g in test]):
            for atoms in group:
                atoms.info.update(trajectory=index, test=is_test)
                structures.append(atoms)
        write_structures(structures, structures_file)
        tracker.log_metrics(
            {"n_structures": len(structures), "n_test": sum(map(len, test)), "seconds": time.perf_counter() - start}
        )
        logger.info("wrote %d structures of target %s to %s", len(structures), target_name, structures_file)


def target_groups_from(files: Sequence[Path]) -> tuple[list[list[Atoms]], list[list[Atoms]]]:
    """The training and test groups written by `run_target`, file by file."""
    training: list[list[Atoms]] = []
    test: list[list[Atoms]] = []
    for path in files:
        groups: dict[int, list[Atoms]] = collections.defaultdict(list)
        for atoms in read(path, ":"):
            groups[int(atoms.info.pop("trajectory"))].append(atoms)
        for index in sorted(groups):
            is_test = bool(groups[index][0].info.pop("test"))
            for atoms in groups[index][1:]:
                atoms.info.pop("test")
            (test if is_test else training).append(groups[index])
    return training, test


def run(
    *,
    seed: int,
    sample: dict,
    target: dict,
    teacher: dict,
    target_files: Sequence[Path],
    structures_file: Path,
    pipeline_file: Path,
    log_file: Path,
    threads: int = 1,
) -> None:
    """The Snakemake job: sample from the seeds (``sample``), gather the targets' structures
    (``target_files``, from `run_target`), write extxyz, log counts to MLflow. The teacher runs on
    ``threads`` threads (the job's)."""
    logger = stage_logger("sample", log_file)
    torch.set_num_threads(threads)
    settings = build(SampleSettings, sample, "sample")
    targets_from(build(TargetSettings, target, "target").systems)  # bad targets fail here, before the teacher loads
    with stage_run(pipeline_file, "sample", {"sample": sample, "target": target}, log_file) as tracker:
        start = time.perf_counter()
        teacher_settings = build(TeacherSettings, teacher, "teacher")
        model = load_teacher(teacher_settings)
        tracker.set_tags({"teacher": model.identity.label})
        training, test = target_groups_from(target_files)
        structures = sample_structures(settings, seed, model, teacher_settings.molecule_only, logger, training, test)
        write_structures(structures, structures_file)
        counts = collections.Counter(atoms.info["split"] for atoms in structures)
        per_strategy = collections.Counter(atoms.info["strategy"] for atoms in structures)
        per_target = collections.Counter(atoms.info["target"] for atoms in structures if "target" in atoms.info)
        metrics = {
            "n_structures": len(structures),
            "seconds": time.perf_counter() - start,
            **{f"n_{split}": counts[split] for split in SPLITS},
            **{f"n_{name}": count for name, count in per_strategy.items()},
            **{f"n_target.{name}": count for name, count in per_target.items()},
        }
        tracker.log_metrics(metrics)
        logger.info("wrote %d structures to %s: %s", len(structures), structures_file, metrics)
