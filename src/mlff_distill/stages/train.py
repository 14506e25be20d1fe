"""The train stage: fit a student to the teacher's labels (`mlff_distill.student.training`), log
each epoch to MLflow and write the checkpoint, its TorchScript export, the history (JSON) and a
learning-curve plot.

The resumable state goes to ``<train dir>/resume/state.pt``: not a Snakemake output, so it
survives the deletion of an interrupted job's outputs.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Optional

import torch

from mlff_distill.evaluation.plots import learning_curve_plot
from mlff_distill.logs import stage_logger
from mlff_distill.settings import StudentSettings, TrainSettings, build
from mlff_distill.store import store_attrs
from mlff_distill.student.checkpoint import save_student
from mlff_distill.student.compilation import use_compile_cache
from mlff_distill.student.export import export_torchscript
from mlff_distill.student.training import fit, state_path_for
from mlff_distill.tracking import stage_run


def run(
    *,
    seed: int,
    student: dict,
    train: dict,
    store: Path,
    checkpoint: Path,
    torchscript: Path,
    history_file: Path,
    pipeline_file: Path,
    log_file: Path,
    threads: int,
    precompiled: Optional[Path] = None,
    compile_cache_dir: Optional[Path] = None,
) -> None:
    """The Snakemake job. ``precompiled``: the precompile stage's record; ``compile_cache_dir``:
    the TorchInductor cache it filled (`mlff_distill.student.compilation`)."""
    student_settings, train_settings = build(StudentSettings, student, "student"), build(TrainSettings, train, "train")
    logger = stage_logger("train", log_file)
    torch.set_num_threads(threads)
    use_compile_cache(compile_cache_dir, logger)
    with stage_run(pipeline_file, "train", {"seed": seed, "student": student, "train": train}, log_file) as tracker:
        start = time.perf_counter()

        def on_epoch(epoch: int, metrics: dict) -> None:
            tracker.log_metrics(metrics, step=epoch)
            logger.info("epoch %d %s", epoch, " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))

        model, history, info = fit(
            student_settings, train_settings, seed, Path(store), state_path_for(checkpoint), logger, on_epoch
        )
        model = model.cpu()  # checkpoints and the TorchScript file load on any machine
        n_parameters = sum(p.numel() for p in model.parameters())
        tracker.log_params({"n_parameters": n_parameters})
        best = history["epochs"][history["best_epoch"] - 1] if history["epochs"] else {}
        metadata = {
            "teacher": store_attrs(store)["teacher"],
            "label_store": str(Path(store).resolve()),
            "label_store_sha256": info["store_sha256"],
            "config_hash": info["config_hash"],
            "settings": {"student": dataclasses.asdict(student_settings), "train": dataclasses.asdict(train_settings)},
            "n_train": info["n_train"],
            "n_val": info["n_val"],
            "best_val": best,
        }
        save_student(checkpoint, model, metadata=metadata)
        export_torchscript(model, torchscript, metadata)
        Path(history_file).write_text(json.dumps(history, indent=2))
        plot = Path(checkpoint).with_name("learning_curve.png")
        learning_curve_plot(history, plot)
        for artifact in (checkpoint, torchscript, history_file, plot, *([precompiled] if precompiled else [])):
            tracker.log_artifact(artifact)
        tracker.log_metrics({"train_seconds": time.perf_counter() - start, "n_parameters": n_parameters})
        logger.info(
            "saved %s and %s (%d parameters) in %.1f s",
            checkpoint,
            torchscript,
            n_parameters,
            time.perf_counter() - start,
        )
