"""The evaluate stage: the student against its teacher on the held-out test split.

Accuracy: energy error per atom (eV/atom) and force errors (eV/Angstrom) against the teacher's
labels. Speed: teacher and student timed in this one process on the same test structures, one
structure per call as in MD (energy and forces, neighbour list included), after a warm-up call on
every structure; the median over repeats is reported in seconds per structure.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from ase import Atoms

from mlff_distill.data import LabeledArrays


def accuracy_metrics(reference: LabeledArrays, energy_eV: np.ndarray,
                     forces_eV_per_A: np.ndarray) -> dict[str, float]:
    """Errors of predicted energies and forces against the reference labels."""
    n_atoms = reference.n_atoms
    energy_error = (energy_eV - reference.energy_eV) / n_atoms
    force_error = forces_eV_per_A - reference.forces_eV_per_A
    force_rmse = float(np.sqrt(np.mean(force_error**2)))
    return {
        "energy_mae_per_atom_eV": float(np.mean(np.abs(energy_error))),
        "energy_rmse_per_atom_eV": float(np.sqrt(np.mean(energy_error**2))),
        "force_mae_eV_per_A": float(np.mean(np.abs(force_error))),
        "force_rmse_eV_per_A": force_rmse,
        "force_rel_rmse": force_rmse / float(np.sqrt(np.mean(reference.forces_eV_per_A**2))),
    }


def seconds_per_structure(compute: Callable[[Atoms], object], structures: Sequence[Atoms],
                          repeats: int) -> float:
    """Median over ``repeats`` of the mean time of one call per structure (after a warm-up)."""
    for atoms in structures:
        compute(atoms)
    totals = []
    for _ in range(repeats):
        start = time.perf_counter()
        for atoms in structures:
            compute(atoms)
        totals.append(time.perf_counter() - start)
    return float(np.median(totals)) / len(structures)


def summary_text(metrics_file: Path) -> str:
    """The lines printed when the pipeline ends."""
    metrics = json.loads(Path(metrics_file).read_text())
    return "\n".join([
        "",
        "mlff-distill finished",
        f"  teacher:               {metrics['teacher']}",
        f"  student:               {metrics['student']}",
        f"  test structures:       {metrics['n_test']}",
        f"  force error (rel RMS): {100 * metrics['force_rel_rmse']:.2f} %",
        f"  energy MAE:            {1000 * metrics['energy_mae_per_atom_eV']:.2f} meV/atom",
        f"  speed-up:              {metrics['speedup']:.1f}x "
        f"({1000 * metrics['teacher_s_per_structure']:.2f} ms -> "
        f"{1000 * metrics['student_s_per_structure']:.2f} ms per structure, "
        f"{metrics['inference_path']})",
        f"  results:               {Path(metrics_file).resolve().parent.parent}",
    ])


def parity_plot(reference: LabeledArrays, energy_eV: np.ndarray, forces_eV_per_A: np.ndarray,
                path: Path) -> None:
    """Student against teacher: energy per atom and force components."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(9, 4))
    pairs = [(reference.energy_eV / reference.n_atoms, energy_eV / reference.n_atoms,
              "energy per atom (eV)"),
             (reference.forces_eV_per_A.ravel(), forces_eV_per_A.ravel(), "force component (eV/Å)")]
    for axis, (teacher, student, label) in zip(axes, pairs):
        axis.scatter(teacher, student, s=3, alpha=0.5)
        low, high = min(teacher.min(), student.min()), max(teacher.max(), student.max())
        axis.plot([low, high], [low, high], "k--", lw=0.8)
        axis.set(xlabel=f"teacher {label}", ylabel=f"student {label}")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def run(config: dict, store: Path, checkpoint: Path, inference_path_file: Path,
        metrics_file: Path, pipeline_file: Path, log_file: Path) -> None:
    """The Snakemake job; it also ends the pipeline's MLflow parent run."""
    import torch

    from mlff_distill.logs import stage_logger
    from mlff_distill.store import read_labels
    from mlff_distill.student import StudentCalculator, load_student
    from mlff_distill.student.fitting import predict
    from mlff_distill.teachers import load_teacher
    from mlff_distill.tracking import PipelineRun, finish_pipeline_run, stage_run

    logger = stage_logger("evaluate", log_file)
    with stage_run(pipeline_file, "evaluate", config["evaluate"], log_file) as tracker:
        test = read_labels(store, "test")
        if test.n_structures == 0:
            raise ValueError(f"{store}: the test split is empty; raise sample.test_fraction")
        model, metadata = load_student(checkpoint)
        chosen = json.loads(Path(inference_path_file).read_text())["chosen_path"]
        predictions = predict(model, test)
        metrics = accuracy_metrics(test, predictions["energy_eV"], predictions["forces_eV_per_A"])

        teacher = load_teacher(config["teacher"])
        structures = [test.atoms(i) for i in range(min(test.n_structures,
                                                       config["evaluate"]["timing_structures"]))]
        repeats = config["evaluate"]["timing_repeats"]
        teacher_s = seconds_per_structure(lambda a: teacher.compute([a]), structures, repeats)
        calculator = StudentCalculator(model)
        if chosen == "torch_compile":
            calculator.model = torch.compile(model, dynamic=True)

        def student_call(atoms: Atoms) -> None:
            calculator.calculate(atoms, ["energy", "forces"])

        torch.set_num_threads(1)  # one thread: fastest for molecules; the tune stage times so too
        student_s = seconds_per_structure(student_call, structures, repeats)
        n_parameters = sum(p.numel() for p in model.parameters())
        metrics.update({
            "teacher": teacher.identity.label,
            "student": f"{type(model).__name__} ({n_parameters} parameters, "
                       f"cutoff {model.cutoff_A:g} A)",
            "n_test": test.n_structures,
            "n_timed": len(structures),
            "teacher_s_per_structure": teacher_s,
            "student_s_per_structure": student_s,
            "speedup": teacher_s / student_s,
            "inference_path": chosen,
            "teacher_weights_sha256": teacher.identity.weights_sha256,
        })
        Path(metrics_file).write_text(json.dumps(metrics, indent=2))
        plot = Path(metrics_file).with_name("parity.png")
        parity_plot(test, predictions["energy_eV"], predictions["forces_eV_per_A"], plot)
        tracker.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        tracker.set_tags({"teacher": metrics["teacher"], "student": metrics["student"]})
        for artifact in (metrics_file, plot):
            tracker.log_artifact(artifact)
        logger.info("metrics %s", metrics)
    finish_pipeline_run(PipelineRun.load(pipeline_file))
