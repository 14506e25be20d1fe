"""The train stage: fit a student to the teacher's labels (`mlff_distill.student.training`), log
each epoch to MLflow and write the checkpoint, its TorchScript export, the history (JSON) and a
learning-curve plot.

The resumable state goes to ``<train dir>/resume/state.pt``: not a Snakemake output, so it
survives the deletion of an interrupted job's outputs. An on-policy round starts from the previous
round's student (``initial_checkpoint``), its reference energies as fitted (the calibration on
the targets' teacher MD, `mlff_distill.student.calibration`, is taken off and made again after
training).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from ase.io import read

from mlff_distill.evaluation.plots import learning_curve_plot
from mlff_distill.logs import stage_logger
from mlff_distill.sampling.condensed import training_teacher_md_samples
from mlff_distill.settings import StudentSettings, TrainSettings, build
from mlff_distill.store import SPLIT_CODES, read_index_columns, store_attrs, store_species
from mlff_distill.student.calibration import reference_shift, shift_reference_energies, uncalibrated_state
from mlff_distill.student.checkpoint import load_student, save_student
from mlff_distill.student.compilation import use_compile_cache
from mlff_distill.student.dataset import StructureBlocks
from mlff_distill.student.export import export_torchscript
from mlff_distill.student.model import StudentPotential
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
    initial_checkpoint: Optional[Path] = None,
    round_index: Optional[int] = None,
    explored: Sequence[Path] = (),
    sampled_file: Optional[Path] = None,
) -> None:
    """The Snakemake job. ``precompiled``: the precompile stage's record; ``compile_cache_dir``:
    the TorchInductor cache it filled (`mlff_distill.student.compilation`). ``initial_checkpoint``:
    a student (the previous round's) to start from, of the same species as the store and the sizes
    of ``student``. ``round_index``: the on-policy round (the MLflow run nests under "round <k>").
    ``explored``: the explore stage's structures of the rounds so far; their energies count
    ``train.on_policy_energy_weight`` times. ``sampled_file``: the sample stage's structures, whose
    teacher-MD frames of the targets calibrate the reference energies (``train.calibrate_on_target_md``)."""
    student_settings, train_settings = build(StudentSettings, student, "student"), build(TrainSettings, train, "train")
    logger = stage_logger("train", log_file)
    torch.set_num_threads(threads)
    use_compile_cache(compile_cache_dir, logger)
    initial_weights = None
    if initial_checkpoint is not None:
        initial_weights = initial_student_weights(Path(initial_checkpoint), student_settings, Path(store))
        logger.info("starting from the weights of %s", initial_checkpoint)
    on_policy_samples = [int(atoms.info["sample_index"]) for path in explored for atoms in read(path, index=":")]
    if on_policy_samples:
        logger.info(
            "%d on-policy frames (%s); their energy errors count %g times",
            len(on_policy_samples),
            ", ".join(str(path) for path in explored),
            train_settings.on_policy_energy_weight,
        )
    params = {"seed": seed, "student": student, "train": train}
    if initial_checkpoint is not None:
        params["initial_checkpoint"] = str(initial_checkpoint)
    with stage_run(pipeline_file, "train", params, log_file, round_index=round_index) as tracker:
        start = time.perf_counter()

        def on_epoch(epoch: int, metrics: dict) -> None:
            tracker.log_metrics(metrics, step=epoch)
            logger.info("epoch %d %s", epoch, " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))

        model, history, info = fit(
            student_settings,
            train_settings,
            seed,
            Path(store),
            state_path_for(checkpoint),
            logger,
            on_epoch,
            initial_weights=initial_weights,
            on_policy_samples=on_policy_samples,
        )
        model = model.cpu()  # checkpoints and the TorchScript file load on any machine
        shift, calibration = None, None
        if train_settings.calibrate_on_target_md:
            shift, calibration = calibrate_on_target_md(
                model, Path(store), sampled_file, train_settings.in_memory_max_GB, logger
            )
            tracker.log_metrics({f"calibration.{k}": v for k, v in (calibration or {}).items()})
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
            "initial_checkpoint": None if initial_checkpoint is None else str(Path(initial_checkpoint).resolve()),
            "round": round_index,
            "reference_shift_eV": shift,
            "reference_calibration": calibration,
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


def calibrate_on_target_md(
    model: StudentPotential,
    store: Path,
    sampled_file: Optional[Path],
    in_memory_max_GB: float,
    logger: logging.Logger,
) -> tuple[Optional[dict[int, float]], Optional[dict[str, float]]]:
    """Shift ``model``'s reference energies by `reference_shift` on the training split's
    teacher-MD frames of the targets (from ``sampled_file``; the split read as training reads it,
    whole up to ``in_memory_max_GB``, else block by block), logging what it does to those and to
    the other training structures; the shift (eV) and those figures, or None without such frames."""
    samples = training_teacher_md_samples(read(sampled_file, index=":")) if sampled_file else []
    index = read_index_columns(store)
    if not np.isin(index["sample_index"][index["split"] == SPLIT_CODES["train"]], samples).any():
        logger.info("reference energies as fitted: no teacher-MD frames of a target in the training split")
        return None, None
    training = StructureBlocks.from_store(store, "train", in_memory_max_GB * 1e9)
    shift, stats = reference_shift(model, training, samples)
    shift_reference_energies(model, shift)
    logger.info(
        "reference energies calibrated on %d teacher-MD frames of the targets: shifts (eV) %s; their energy MAE "
        "%.2f -> %.2f meV/atom; the other %d training structures' %.2f -> %.2f meV/atom",
        stats["n_target_md"],
        {z: round(value, 4) for z, value in shift.items()},
        1e3 * stats["target_md_energy_mae_per_atom_eV_before"],
        1e3 * stats["target_md_energy_mae_per_atom_eV_after"],
        stats["n_other"],
        1e3 * stats.get("other_energy_mae_per_atom_eV_before", float("nan")),
        1e3 * stats.get("other_energy_mae_per_atom_eV_after", float("nan")),
    )
    return shift, stats


def initial_student_weights(checkpoint: Path, student: StudentSettings, store: Path) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of the student at ``checkpoint``, its reference energies as fitted (a
    calibration, ``metadata["reference_shift_eV"]``, taken off); raises ``ValueError`` unless it
    knows the species of ``store`` and has the sizes of ``student``."""
    model, metadata = load_student(checkpoint)
    species = store_species(store)
    if model.species != species:
        raise ValueError(
            f"{checkpoint}: a student of species {model.species} cannot start a training on {store}, "
            f"whose species are {species}"
        )
    sizes = {k: v for k, v in model.hyperparameters.items() if k in dataclasses.asdict(student)}
    if sizes != dataclasses.asdict(student):
        raise ValueError(
            f"{checkpoint}: a student of sizes {sizes} cannot start a training of sizes {dataclasses.asdict(student)}"
        )
    return uncalibrated_state(model.state_dict(), model.species, metadata.get("reference_shift_eV") or {})
