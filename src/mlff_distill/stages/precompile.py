"""The precompile stage: the student's training loss (and, on a CPU, its compiled inference path)
compiled into TorchInductor's on-disk cache while the teacher samples
(`mlff_distill.student.compilation`), so that the train stage starts training at once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlff_distill.logs import stage_logger
from mlff_distill.sampling.boxes import build_timing_systems
from mlff_distill.sampling.seeds import read_seed_files, seed_structures
from mlff_distill.sampling.targets import target_start, targets_from
from mlff_distill.settings import SampleSettings, StudentSettings, build, section_settings
from mlff_distill.student.compilation import (
    attempt,
    compile_inference,
    compile_training_loss,
    species_of,
    use_compile_cache,
)


def run(
    *,
    seed_settings: dict,
    target_systems: list,
    target_min_distance_A: float,
    student: dict,
    train_loss: dict,
    try_compile: bool,
    record_file: Path,
    cache_dir: Path,
    log_file: Path,
    threads: int,
) -> None:
    """The Snakemake job: compile into ``cache_dir`` and write what was done to ``record_file``
    (``training_loss`` and, on a CPU with ``tune.try_compile``, ``inference``). ``train_loss``:
    the keys of ``train:`` that shape the compiled loss (``compile``, ``batch_size`` and the
    weights). ``seed_settings``: the keys of ``sample:`` that name the seed structures
    (`mlff_distill.sampling.seeds.SEED_KEYS`);
    ``target_systems`` and ``target_min_distance_A``: ``target.systems`` and
    ``target.min_distance_A``. The stage reads no other key, so that editing one (the teacher MD,
    the rattles) does not recompile."""
    logger = stage_logger("precompile", log_file)
    torch.set_num_threads(threads)
    size = vars(build(StudentSettings, student, "student"))
    if not train_loss["compile"]:
        record: dict[str, Any] = {"training_loss": {"skipped": "train.compile is false"}}
    else:
        cache = use_compile_cache(cache_dir, logger)
        settings = section_settings(SampleSettings, "sample", seed_settings)
        rng = np.random.default_rng(0)
        starts = [target_start(t, rng, target_min_distance_A) for t in targets_from(target_systems)]
        seeds = seed_structures(settings) + read_seed_files(settings.test_files) + starts
        if not seeds:
            raise ValueError("nothing to compile on: no sample.molecules, crystals, seed_files or target systems")
        weights = {k: v for k, v in train_loss.items() if k != "compile"}
        record = {
            "cache_dir": cache,
            "training_loss": attempt(lambda: compile_training_loss(size, seeds, **weights), "training loss", logger),
        }
        if try_compile and not torch.cuda.is_available():
            periodic = [atoms for atoms in seeds if atoms.pbc.all()]
            systems = [seeds[0], *(periodic[:1] or build_timing_systems(seeds[:1], [64], size["cutoff_A"], seed=0))]
            record["inference"] = attempt(
                lambda: compile_inference(size, species_of(seeds), systems), "inference path", logger
            )
    logger.info("%s", record)
    Path(record_file).parent.mkdir(parents=True, exist_ok=True)
    Path(record_file).write_text(json.dumps(record, indent=2))
