"""The sample stage: structures for the teacher to label, written as extxyz
(`mlff_distill.sampling.sampler`), with counts per split and strategy logged to MLflow."""

from __future__ import annotations

import collections
import time
from pathlib import Path

import torch

from mlff_distill.logs import stage_logger
from mlff_distill.sampling.sampler import SPLITS, sample_structures, write_structures
from mlff_distill.sampling.targets import targets_from
from mlff_distill.settings import SampleSettings, TargetSettings, TeacherSettings, build
from mlff_distill.teachers import load_teacher
from mlff_distill.tracking import stage_run


def run(
    *,
    seed: int,
    sample: dict,
    target: dict,
    teacher: dict,
    structures_file: Path,
    pipeline_file: Path,
    log_file: Path,
    threads: int = 1,
) -> None:
    """The Snakemake job: sample from the seeds (``sample``) and the targets (``target``), write
    extxyz, log counts to MLflow. The teacher runs on ``threads`` threads (the job's)."""
    logger = stage_logger("sample", log_file)
    torch.set_num_threads(threads)
    settings, target_settings = build(SampleSettings, sample, "sample"), build(TargetSettings, target, "target")
    targets = targets_from(target_settings.systems)  # bad targets fail here, before the teacher loads
    with stage_run(pipeline_file, "sample", {"sample": sample, "target": target}, log_file) as tracker:
        start = time.perf_counter()
        teacher_settings = build(TeacherSettings, teacher, "teacher")
        model = load_teacher(teacher_settings)
        tracker.set_tags({"teacher": model.identity.label})
        structures = sample_structures(
            settings, seed, model, teacher_settings.molecule_only, logger, targets, target_settings
        )
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
