"""The label stage: the teacher labels the sampled structures in shards, on Dask workers or in
this process (`mlff_distill.labeling`; `labeling.cluster.local_workers` says which), combined into
one Zarr v3 store; throughput and one MLflow child run per shard are logged. In an on-policy round
it labels only the round's new structures and combines them with the shards of the earlier rounds."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch
from ase.io import read

from mlff_distill.labeling.cluster import confine_to_cores, in_this_process, local_workers
from mlff_distill.labeling.shards import LabelingFailedError, cached_teacher, label_structures, shards_in
from mlff_distill.logs import stage_logger
from mlff_distill.settings import LabelSettings, TeacherSettings, build, config_hash
from mlff_distill.teachers import check_structures_for
from mlff_distill.tracking import package_versions, stage_run


def run(
    *,
    teacher: dict,
    label: dict,
    where: dict,
    structures_file: Path,
    store: Path,
    shards_dir: Path,
    pipeline_file: Path,
    log_file: Path,
    threads: int,
    previous_shards_dirs: Sequence[Path] = (),
    round_index: Optional[int] = None,
) -> None:
    """The Snakemake job: label, combine, log throughput and one MLflow child run per shard.

    ``label``: the ``label:`` keys that the labels depend on; ``where``: those that say where the
    shards are labeled (`labeling.cluster.WHERE_KEYS`), which the rule keeps out of its params.
    ``previous_shards_dirs``: the shards directories of the earlier rounds, in order; their shards
    (`mlff_distill.labeling.shards.shards_in`) go into ``store`` before this round's, as they are.
    ``round_index``: the on-policy round (the MLflow run nests under "round <k>"); None outside rounds.
    """
    settings = build(LabelSettings, {**label, **where}, "label")
    teacher_settings = build(TeacherSettings, teacher, "teacher")
    logger = stage_logger("label", log_file)
    structures = read(structures_file, ":") if Path(structures_file).stat().st_size else []
    previous_shards = [shard for directory in previous_shards_dirs for shard in shards_in(Path(directory))]
    n_workers = local_workers(settings.workers, threads)
    if in_this_process(settings.scheduler, n_workers):
        confine_to_cores(threads)  # labeling in this process: JAX's pool on the job's cores only
        torch.set_num_threads(threads)  # and a torch teacher's
    model = cached_teacher(teacher_settings)  # the one that labels, when it labels in this process
    check_structures_for(model, structures, teacher_settings.molecule_only)
    params = {**label, **where, "n_workers": n_workers, "previous_shards_dirs": [str(d) for d in previous_shards_dirs]}
    with stage_run(pipeline_file, "label", params, log_file, round_index=round_index) as tracker:
        tracker.set_tags({"teacher": model.identity.label, "teacher_trained": model.identity.trained})
        tracker.log_params({"teacher": model.identity.as_dict()})

        def progress(stat: dict) -> None:
            logger.info(
                "shard %s done: %d/%d structures, %.1f structures/s, %.0f s left",
                stat["shard"],
                stat["structures_done"],
                stat["structures_total"],
                stat["structures_per_second"],
                stat["eta_seconds"],
            )
            tracker.log_metrics(
                {
                    "structures_done": stat["structures_done"],
                    "structures_per_second": stat["structures_per_second"],
                    "eta_seconds": stat["eta_seconds"],
                },
                step=stat["shards_done"],
            )

        attrs = {
            "teacher": model.identity.as_dict(),
            "config_hash": config_hash({"teacher": teacher, "label": label}),
            "label_settings": label,
            "package_versions": package_versions(),
            "structures_file": str(Path(structures_file).resolve()),
            "previous_shards_dirs": [str(Path(d).resolve()) for d in previous_shards_dirs],
            "round": round_index,
        }
        try:
            summary = label_structures(
                structures,
                teacher_settings,
                shards_dir,
                store,
                n_workers,
                settings.shard_size,
                attrs,
                progress,
                max_failed_fraction=settings.max_failed_fraction,
                scheduler=settings.scheduler,
                max_force_eV_per_A=settings.max_force_eV_per_A,
                hessian_step_A=settings.hessian_step_A,
                previous_shards=previous_shards,
            )
        except LabelingFailedError as error:
            tracker.log_metrics(
                {"n_failed": error.summary["n_failed"], "failed_fraction": error.summary["failed_fraction"]}
            )
            logger.error("%s", error)
            raise
        for failure in summary["failures"]:
            logger.warning("structure %d left out: %s", failure["sample_index"], failure["reason"])
        if summary["n_excluded"]:
            logger.info(
                "%d structures with a teacher force of %s eV/A or more excluded from training and "
                "evaluation (sample indices %s)",
                summary["n_excluded"],
                settings.max_force_eV_per_A,
                summary["excluded"],
            )
        for stat in summary["shards"]:
            shard_run = tracker.child(f"label {stat['shard']}")
            shard_run.log_metrics(
                {
                    k: stat[k]
                    for k in ("n_structures", "n_atoms", "n_failed", "seconds", "teacher_seconds", "write_seconds")
                }
            )
            shard_run.end()
        tracker.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))})
        where = summary["scheduler"]
        if where == "local":
            where += ", in this process" if n_workers <= 0 else f", {n_workers} workers"
        logger.info(
            "labeled %d structures (%d failed, %d shards new, %d reused, scheduler %s) in %.1f s into %s, "
            "with %d structures of %d earlier shards: %d in all",
            summary["n_structures"],
            summary["n_failed"],
            summary["shards_labeled"],
            summary["shards_reused"],
            where,
            summary["seconds"],
            store,
            summary["n_previous"],
            summary["n_previous_shards"],
            summary["n_store"],
        )
