"""The evaluate stage: the student against its teacher on the held-out test split.

Accuracy, speed on the test structures and at several sizes, teacher symmetry, MD validation and,
for an ensemble teacher, one of its members as the alternative to beat (`mlff_distill.evaluation`).
Outputs in ``<results>/<run>/evaluate/``: measurements.json, parity.png, errors.png, speed.png,
rdf.png (when those steps ran) and report_context.json (what the report shows beside the
measurements); all logged to MLflow with the student as a model. The verdict is not made here:
the report stage (`mlff_distill.stages.report`) checks the acceptance gates on measurements.json
and writes metrics.json and report.html, so that editing ``evaluate.gates`` reruns only it.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from ase import Atoms
from ase.data import chemical_symbols
from ase.io import read

from mlff_distill.calculator_pool import student_processes
from mlff_distill.data import LabeledArrays
from mlff_distill.evaluation.accuracy import (
    accuracy,
    accuracy_by_target,
    errors_by_round,
    mlflow_metrics,
    provenance,
    split_column,
    structure_kinds,
    time_test_structures,
)
from mlff_distill.evaluation.ensemble_member import member_of, member_test_accuracy, member_verdict
from mlff_distill.evaluation.md_validation import md_validation, target_nvt_rows
from mlff_distill.evaluation.metrics import (
    per_kind_force_errors,
    training_fit,
    worst_force_errors,
)
from mlff_distill.evaluation.plots import write_figures
from mlff_distill.evaluation.speed import speed_rows, torch_threads
from mlff_distill.evaluation.targets import (
    frames_accuracy,
    nvt_starts,
    timed_target_frames,
    timing_systems,
    with_frames_accuracy,
)
from mlff_distill.evaluation.teacher_symmetry import rotation_force_change
from mlff_distill.logs import stage_logger
from mlff_distill.sampling.boxes import build_timing_systems
from mlff_distill.sampling.condensed import teacher_md_frames
from mlff_distill.sampling.on_policy import label_contact_bounds
from mlff_distill.sampling.seeds import seed_structures
from mlff_distill.sampling.targets import targets_from
from mlff_distill.settings import MeasurementSettings, SampleSettings, TargetSettings, TeacherSettings, build
from mlff_distill.store import read_labels, read_samples, store_attrs
from mlff_distill.student import StudentCalculator, StudentPotential, load_student, predict
from mlff_distill.student.aoti import ExportedStudentCalculator
from mlff_distill.student.compilation import use_compile_cache
from mlff_distill.teachers import load_teacher, teacher_implementations, teacher_md_calculator
from mlff_distill.tracking import stage_run


def _log_student_model(tracker: Any, model: Any) -> str:
    """Log the student as an MLflow model (pytorch flavour, pickled) in the stage run; its URI."""
    # imported last: its import calls logging.basicConfig, which would echo the stage log on stderr
    import mlflow.pytorch

    mlflow.set_tracking_uri(tracker.pipeline.tracking_uri)
    with mlflow.start_run(run_id=tracker.run_id):
        info = mlflow.pytorch.log_model(
            model,
            name="student",
            serialization_format="pickle",  # pt2 needs a traceable forward
            pip_requirements=["mlff-distill", f"torch=={torch.__version__.split('+')[0]}"],
        )
    return info.model_uri


def run(
    *,
    run_name: str,
    seed: int,
    teacher: dict,
    sample: dict,
    target: dict,
    evaluate: dict,
    store: Path,
    checkpoint: Path,
    inference_path_file: Path,
    structures_file: Path,
    measurements_file: Path,
    context_file: Path,
    pipeline_file: Path,
    log_file: Path,
    earlier_checkpoints: Sequence[Path] = (),
    compile_cache_dir: Path | None = None,
    threads: int = 1,
) -> None:
    """The Snakemake job. ``checkpoint``: the final round's student; ``earlier_checkpoints``: those
    of the rounds before it, round 0 first, tested too so that the rounds' effect shows;
    ``compile_cache_dir``: TorchInductor's cache of the run (`mlff_distill.student.compilation`);
    ``threads``: the job's cores, for the speed step's all-cores pass (one thread everywhere else);
    ``evaluate``: the section without its verdict keys (`mlff_distill.settings.measurement_section`)."""
    settings = build(MeasurementSettings, evaluate, "evaluate")
    logger = stage_logger("evaluate", log_file)
    use_compile_cache(compile_cache_dir, logger)
    out_dir = Path(measurements_file).parent
    with stage_run(pipeline_file, "evaluate", evaluate, log_file) as tracker:
        test = read_labels(store, "test")
        if test.n_structures == 0:
            raise ValueError(f"{store}: the test split is empty; raise sample.test_fraction")
        model, student_metadata = load_student(checkpoint)
        # The student runs on the tune stage's choice where this machine can take it (Triton
        # needs a CUDA device): eager, torch.compile or the fused Triton kernels.
        student_calculator = StudentCalculator(model, tuned_kernels=inference_path_file)
        all_cores = (
            StudentCalculator(model, threads=threads, tuned_kernels=inference_path_file)
            if settings.speed.all_cores and threads > 1
            else None
        )
        package = exported_package_path(inference_path_file, logger)
        exported = ExportedStudentCalculator(package) if package else None
        all_cores_exported = ExportedStudentCalculator(package, threads=threads) if package and all_cores else None
        periodic = bool(test.pbc.all(axis=1).any())
        predictions = predict(model, test, compute_stress=periodic)
        energy_std_eV = split_column(store, "test", "energy_std_eV")
        teacher_settings = build(TeacherSettings, teacher, "teacher")
        teacher_model = load_teacher(teacher_settings)
        n_members = teacher_model.identity.members
        # The store keeps the members' energy spread only: an ensemble labels the test frames again
        # for its force spread (seconds), the yardstick beside the student's force error.
        forces_std = (
            teacher_model.compute([test.atoms(i) for i in range(test.n_structures)]).forces_std_eV_per_A
            if n_members > 1
            else None
        )
        metrics = accuracy(test, predictions, energy_std_eV, forces_std, n_members)
        earlier = [predict(load_student(path)[0], test, compute_stress=periodic) for path in earlier_checkpoints]
        metrics["rounds"] = errors_by_round(test, [*earlier, predictions])

        member = member_of(teacher_model)  # the alternative a user of an ensemble teacher has
        if member is not None:
            metrics["ensemble_member"] = member_test_accuracy(member, test, periodic)
        leading = [
            test.atoms(i)
            for i in range(min(test.n_structures, max(settings.timing_structures, settings.symmetry_structures)))
        ]
        n_parameters = sum(p.numel() for p in model.parameters())
        metrics.update(
            {
                "teacher": teacher_model.identity.label,
                "student": f"{type(model).__name__} ({n_parameters} parameters, cutoff {model.cutoff_A:g} A)",
                "n_test": test.n_structures,
                **time_test_structures(
                    teacher_model, student_calculator, leading[: settings.timing_structures], settings.timing_repeats
                ),
                "inference_path": student_calculator.inference_path,
                "teacher_weights_sha256": teacher_model.identity.weights_sha256,
                "reference_calibration": calibration_facts(student_metadata),
            }
        )
        turned = leading[: settings.symmetry_structures]
        metrics["teacher_rotation"] = (
            rotation_force_change(teacher_model, turned, np.random.default_rng(seed)) if turned else None
        )
        sampled = read(structures_file, ":")
        sample_indices = split_column(store, "test", "sample_index")
        kinds = structure_kinds(sample_indices, sampled)
        metrics["per_kind"] = per_kind_force_errors(test, predictions["forces_eV_per_A"], kinds)
        metrics["training_fit"] = teacher_md_fit(model, store, test, predictions["forces_eV_per_A"], sampled)
        # A single-model teacher stores zeros for the spread: the column is left out for it.
        ensemble = n_members > 1
        spreads = [float(std) if np.isfinite(std) else None for std in energy_std_eV]
        metrics["worst_structures"] = worst_force_errors(
            test,
            predictions["forces_eV_per_A"],
            [
                {
                    "sample_index": int(index),
                    "kind": kinds[i],
                    **({"teacher_energy_std_eV": spreads[i]} if ensemble else {}),
                }
                for i, index in enumerate(sample_indices)
            ],
        )
        targets = targets_from(build(TargetSettings, target, "target").systems)
        if targets:
            metrics["accuracy_by_target"] = accuracy_by_target(
                test, predictions, [sampled[int(index)].info for index in sample_indices], forces_std, n_members
            )
        # The teacher's other implementations, which the speed table times beside it (the
        # student's speed-up is counted against the fastest).
        implementations = teacher_implementations(teacher_settings)
        metrics["teacher_implementations"] = {
            "labeling": implementations.labeling,
            "others": sorted(implementations.others),
            "missing": implementations.missing,
        }
        if implementations.missing:
            logger.warning("speed: not timed: %s", implementations.missing)
        # MD runs before the speed step: FeNNol teachers keep the padded size of the largest system
        # they have seen, so after the 2048-atom timing a molecule's MD step is slow.
        seeds = seed_structures(build(SampleSettings, sample, "sample")) or sampled
        if targets:
            _, md_calculator = teacher_md_calculator(teacher_model, implementations)
            starts = nvt_starts(targets, sampled, settings.md.all_temperatures)
            processes = student_processes(threads, len(starts))
            metrics["target_nvt"] = target_nvt_rows(
                (
                    functools.partial(StudentCalculator, model, threads=1, tuned_kernels=inference_path_file)
                    if processes > 1
                    else student_calculator
                ),
                starts,
                teacher_md_frames(sampled),
                settings.md,
                seed,
                label_contact_bounds(store, settings.md.contact_fraction),
                md_calculator,
                processes,
            )
            metrics["md_validation"] = None
            with torch_threads(threads):  # the teacher's MD on torch's threads, all of the job's cores
                frames = timed_target_frames(
                    targets,
                    build(TargetSettings, target, "target"),
                    min(settings.speed.sizes),
                    md_calculator,
                    seed,
                    settings.speed.accuracy_frames,
                    logger,
                )
            systems = timing_systems(frames, settings.speed.sizes)
            # before the speed step, which leaves FeNNol teachers padded to its largest system
            accuracy_on_frames = {
                name: frames_accuracy(its_frames, teacher_model, model, member) for name, its_frames in frames.items()
            }
        else:
            metrics["md_validation"] = md_validation(
                settings.md, seeds, seed, teacher_model, student_calculator, sampled
            )
            systems = build_timing_systems(seeds, settings.speed.sizes, float(student_calculator.model.cutoff_A), seed)
        metrics["speed"] = speed_rows(
            systems,
            settings,
            teacher_model,
            student_calculator,
            member=member,
            implementations=implementations,
            all_cores_student=all_cores,
            all_cores_threads=threads,
            exported_student=exported,
            all_cores_exported_student=all_cores_exported,
        )
        if targets:
            n_frames = settings.speed.accuracy_frames
            metrics["speed"] = with_frames_accuracy(metrics["speed"], accuracy_on_frames, n_frames)
        if member is not None:
            metrics["ensemble_member"].update(
                member_verdict(metrics["force_rel_rmse"], metrics["speed"], metrics["ensemble_member"])
            )
        Path(measurements_file).write_text(json.dumps(metrics, indent=2))

        figures = write_figures(out_dir, test, predictions, metrics)
        teacher_identity = store_attrs(store).get("teacher") or teacher_model.identity.as_dict()
        shown_config = {
            "run_name": run_name,
            "seed": seed,
            "teacher": teacher,
            "sample": sample,
            "target": target,
            "label": store_attrs(store).get("label_settings"),
            **student_metadata.get("settings", {}),
            "evaluate": evaluate,
        }
        context = {
            "config": shown_config,
            "teacher": teacher_identity,
            "provenance": provenance(store, sampled),
            "figures": {name: Path(path).name for name, path in figures.items()},
        }
        Path(context_file).write_text(json.dumps(context, indent=2))

        numbers = mlflow_metrics(metrics)
        tracker.log_metrics(numbers)
        for row in metrics["speed"]:  # one step per system size, in atoms
            tracker.log_metrics(
                {f"speed.{k}": v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
                step=int(row["n_atoms"]),
            )
        tracker.set_tags({"teacher": metrics["teacher"], "student": metrics["student"]})
        for artifact in (measurements_file, *figures.values()):
            tracker.log_artifact(artifact)
        tracker.log_artifact(checkpoint, "student")
        logger.info("metrics %s", numbers)
        logger.info("student model %s", _log_student_model(tracker, model))


def teacher_md_fit(
    model: StudentPotential,
    store: Path,
    test: LabeledArrays,
    test_forces_eV_per_A: np.ndarray,
    sampled: Sequence[Atoms],
) -> dict | None:
    """`training_fit` on the teacher-MD frames of the targets: those of the training split (predicted
    here) against those of the test split (``test_forces_eV_per_A``: the student's forces on all of
    ``test``); None where either has none."""
    md_samples = [int(atoms.info["sample_index"]) for frames in teacher_md_frames(sampled).values() for atoms in frames]
    trained_on = read_samples(store, "train", md_samples)
    tested = np.flatnonzero(np.isin(test.sample_index, md_samples))
    if not (trained_on.n_structures and len(tested)):
        return None
    trained_forces = predict(model, trained_on)["forces_eV_per_A"]
    return training_fit(trained_on, trained_forces, test.subset(tested), test_forces_eV_per_A[test.atom_rows(tested)])


def calibration_facts(metadata: dict) -> dict | None:
    """The final student's calibration of its reference energies on the targets' teacher MD
    (`mlff_distill.student.calibration`): the per-species shift (eV, by chemical symbol) and the
    training structures' energy MAE before and after it, or None when it was not calibrated."""
    shift = metadata.get("reference_shift_eV")
    if not shift:
        return None
    shift_eV = {chemical_symbols[int(z)]: value for z, value in shift.items()}
    return {"shift_eV": shift_eV, **metadata["reference_calibration"]}


def exported_package_path(inference_path_file: Path, logger: logging.Logger) -> str | None:
    """The path of the tune stage's AOTInductor package, where it made one."""
    record = json.loads(Path(inference_path_file).read_text()).get("exported") or {}
    if not record.get("path"):
        logger.info("speed: no exported package to time (%s)", record.get("error", "tune.export_aoti is off"))
        return None
    return record["path"]
