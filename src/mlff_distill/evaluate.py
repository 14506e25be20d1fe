"""The evaluate stage: the student against its teacher on the held-out test split, and the report.

Accuracy (`mlff_distill.metrics`): energy per atom (eV/atom), forces (eV/Angstrom), stress (GPa)
for periodic structures, per element, beside the teacher ensemble's own spread; acceptance gates
from ``evaluate.gates``. Speed on the test structures: teacher and student timed in this one
process, one structure per call as in MD (energy and forces, neighbour list included), after a
warm-up call on every structure; the median over repeats, in seconds per structure. Speed at
several sizes (`mlff_distill.speed`) and MD validation (`mlff_distill.md_validation`) are called
when those modules exist (`optional_step`); the report says "not run" otherwise.

Outputs in ``<results>/<run>/evaluate/``: metrics.json, parity.png, errors.png (and speed.png,
rdf.png when those steps ran), report.html; all logged to MLflow with the student as a model.
The acceptance rule (`check_acceptance`) fails afterwards when ``evaluate.strict`` and a gate
fails, so that these files are kept.
"""

from __future__ import annotations

import collections
import importlib
import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from ase import Atoms

from mlff_distill.data import LabeledArrays
from mlff_distill.metrics import (check_gates, energy_force_errors, ensemble_spread, failed_gates,
                                  per_kind_force_errors, per_species_force_errors, stress_errors,
                                  worst_force_errors)
from mlff_distill.teacher_symmetry import rotation_force_change

# MD validation runs before the speed step: FeNNol teachers keep the padded size of the largest
# system they have seen, so after the 2048-atom timing a molecule's MD step cost 0.26 s, not 7 ms.
OPTIONAL_STEPS = {"md_validation": ("md_validation", "md_validation"), "speed": ("speed", "speed_rows")}


class GatesFailedError(RuntimeError):
    """Raised by `check_acceptance` in strict mode when an acceptance gate fails."""


def accuracy(reference: LabeledArrays, predictions: dict[str, np.ndarray],
             energy_std_eV: np.ndarray | None = None) -> dict[str, Any]:
    """Flat error metrics (see `metrics`), plus ``per_species`` and ``ensemble_spread`` dicts.

    ``predictions``: ``energy_eV``, ``forces_eV_per_A`` and optionally ``stress_eV_per_A3``.
    """
    result: dict[str, Any] = energy_force_errors(reference, predictions["energy_eV"],
                                                 predictions["forces_eV_per_A"])
    result.update(stress_errors(reference.stress_eV_per_A3, predictions.get("stress_eV_per_A3")))
    result["per_species"] = per_species_force_errors(reference, predictions["forces_eV_per_A"])
    result["ensemble_spread"] = ensemble_spread(reference, energy_std_eV)
    return result


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


def structure_kinds(sample_indices: Sequence[int], sampled: Sequence[Atoms]) -> list[str]:
    """A label per structure: its sampling strategy, with the temperature where it has one
    ("md 300 K", "normal-modes 1000 K", "rattle"), from the sampled structures
    (``sampled[sample_index].info``)."""
    kinds = []
    for index in sample_indices:
        info = sampled[int(index)].info
        temperature = f" {info['temperature_K']:g} K" if "temperature_K" in info else ""
        kinds.append(f"{info.get('strategy', 'unknown')}{temperature}")
    return kinds


def split_column(store: Path, split: str, name: str) -> np.ndarray:
    """The per-structure array ``structures/<name>`` of the store (``energy_std_eV``, the teacher
    ensemble's energy spread in eV; ``sample_index``, the row in the sampled structures file) for
    the structures of ``split``, in store order."""
    import zarr

    from mlff_distill.store import SPLIT_CODES

    group = zarr.open_group(store=str(store), mode="r", zarr_format=3)
    keep = group["structures/split"][...] == SPLIT_CODES[split]
    return group[f"structures/{name}"][...][keep]


def provenance(store: Path, sampled: Sequence[Atoms] | None) -> dict[str, Any]:
    """Where the data came from: store path and attributes, structures per split, and the sampled
    structures (``info["strategy"]`` of each) per strategy."""
    import zarr

    from mlff_distill.label import FAILURES_FILE
    from mlff_distill.store import EXCLUDED_CODE, SPLIT_CODES, store_attrs

    attrs = store_attrs(store)
    splits = zarr.open_group(store=str(store), mode="r", zarr_format=3)["structures/split"][...]
    facts: dict[str, Any] = {
        "label store": str(Path(store).resolve()),
        "structures file": attrs.get("structures_file"),
        "structures labeled": attrs.get("n_structures"),
        "atoms labeled": attrs.get("n_atoms"),
        "config hash": attrs.get("config_hash"),
    }
    failures = Path(store).resolve().parent / FAILURES_FILE
    if failures.is_file():
        facts["structures the teacher failed on"] = len(json.loads(failures.read_text()))
    facts["structures per split"] = {name: int(np.sum(splits == code)) for name, code in SPLIT_CODES.items()}
    if attrs.get("max_force_eV_per_A") is not None:
        facts[f"structures excluded (teacher force >= {attrs['max_force_eV_per_A']:g} eV/A)"] = int(
            np.sum(splits == EXCLUDED_CODE))
    if sampled is not None:
        strategies = collections.Counter(a.info.get("strategy", "unknown") for a in sampled)
        facts["sampled structures per strategy"] = dict(sorted(strategies.items()))
    facts["package versions"] = attrs.get("package_versions") or {}
    return facts


def optional_step(name: str) -> Callable[..., Any] | None:
    """The function of an optional step (`OPTIONAL_STEPS`) if its module defines it, else None.

    Both are called as ``function(config, teacher, student_calculator, structures)`` with the
    student's `StudentCalculator` (on the tune stage's inference path) and the sampled structures
    (``list[Atoms]``); ``speed`` returns rows ``{"n_atoms",
    "teacher_ms", "student_ms", ...}``, ``md_validation`` a dict ``{"drift": [rows], "rdf":
    {"r_A", "g_teacher", "g_student", scalars...}}``.
    """
    module_name, function = OPTIONAL_STEPS[name]
    try:
        module = importlib.import_module(f"mlff_distill.{module_name}")
    except ModuleNotFoundError as error:
        if error.name != f"mlff_distill.{module_name}":
            raise
        return None
    return getattr(module, function, None)


def write_figures(out_dir: Path, test: LabeledArrays, predictions: dict[str, np.ndarray],
                  metrics: dict[str, Any]) -> dict[str, Path]:
    """The PNG files of the evaluate stage in ``out_dir``, by report key."""
    from mlff_distill import plots

    items = plots.quantities(test, predictions["energy_eV"], predictions["forces_eV_per_A"],
                             predictions.get("stress_eV_per_A3"))
    figures = {"parity": plots.parity_plot(items, out_dir / "parity.png"),
               "errors": plots.error_histograms(items, out_dir / "errors.png")}
    if metrics.get("speed"):
        figures["speed"] = plots.speed_plot(metrics["speed"], out_dir / "speed.png")
    rdf = (metrics.get("md_validation") or {}).get("rdf")
    if rdf:
        figures["rdf"] = plots.rdf_plot(np.asarray(rdf["r_A"]), np.asarray(rdf["g_teacher"]),
                                        np.asarray(rdf["g_student"]), out_dir / "rdf.png")
    return figures


def summary_text(metrics_file: Path) -> str:
    """The lines printed when the pipeline ends."""
    metrics = json.loads(Path(metrics_file).read_text())
    lines = [
        "",
        "mlff-distill finished",
        f"  teacher:               {metrics['teacher']}",
        f"  student:               {metrics['student']}",
        f"  test structures:       {metrics['n_test']}",
        f"  force error (rel RMS): {100 * metrics['force_rel_rmse']:.2f} %",
    ]
    worst = metrics.get("worst_structures")
    if worst:
        lines.append(f"  worst {len(worst['structures'])} structures:   {100 * worst['share_of_squared_error']:.0f} % of "
                     f"the squared force error; the others {100 * worst['force_rel_rmse_of_the_others']:.2f} %")
    lines += [
        f"  energy MAE:            {1000 * metrics['energy_mae_per_atom_eV']:.2f} meV/atom",
        f"  speed-up, test set:    {metrics['speedup']:.1f}x "
        f"({1000 * metrics['teacher_s_per_structure']:.2f} ms -> "
        f"{1000 * metrics['student_s_per_structure']:.2f} ms, one structure per call, "
        f"{metrics['inference_path']})",
    ]
    if metrics.get("speed"):
        speedups = " / ".join(f"{row['speedup']:.1f}x" for row in metrics["speed"])
        sizes = " / ".join(str(row["n_atoms"]) for row in metrics["speed"])
        lines.append(f"  speed-up by size:      {speedups} at {sizes} atoms (energy, forces, stress)")
    rotation = metrics.get("teacher_rotation")
    if rotation and rotation["invariant_student_floor"] > 0.1 * metrics["force_rel_rmse"]:
        lines.append(f"  teacher symmetry:      its forces change by {100 * rotation['force_rel_change']:.1f} % "
                     "when structures are rotated: no rotation-invariant student can get below "
                     f"about {100 * rotation['invariant_student_floor']:.1f} %")
    if metrics.get("gates"):
        failed = failed_gates(metrics["gates"])
        lines.append(f"  acceptance gates:      {'FAILED: ' + '; '.join(failed) if failed else 'passed'}")
    report = Path(metrics_file).with_name("report.html")
    if report.is_file():
        lines.append(f"  report:                {report.resolve()}")
    lines.append(f"  results:               {Path(metrics_file).resolve().parent.parent}")
    return "\n".join(lines)


def check_acceptance(metrics_file: Path, strict: bool, verdict_file: Path, log_file: Path) -> None:
    """Write the gates' verdict to ``log_file`` and ``verdict_file``; in strict mode raise
    `GatesFailedError` naming the failed gates instead of writing ``verdict_file``."""
    metrics = json.loads(Path(metrics_file).read_text())
    failed = failed_gates(metrics.get("gates", []))
    verdict = f"acceptance gates failed: {'; '.join(failed)}" if failed else "acceptance gates passed"
    Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    Path(log_file).write_text(f"{verdict} (strict: {strict})\n")
    if strict and failed:
        raise GatesFailedError(f"{verdict} (evaluate.strict is true); metrics and report: "
                               f"{Path(metrics_file).parent}")
    Path(verdict_file).write_text(json.dumps({"strict": strict, "failed": failed,
                                              "gates": metrics.get("gates", [])}, indent=2))


def time_test_structures(teacher: Any, calculator: Any, structures: Sequence[Atoms],
                          repeats: int) -> dict[str, float]:
    """Teacher and student (a `StudentCalculator`) in seconds per structure by
    `seconds_per_structure`, energy and forces one structure per call, and the ratio."""
    import torch

    teacher_s = seconds_per_structure(lambda a: teacher.compute([a]), structures, repeats)

    def student_call(atoms: Atoms) -> None:
        calculator.calculate(atoms, ["energy", "forces"])

    torch.set_num_threads(1)  # one thread: fastest for molecules; the tune stage times so too
    student_s = seconds_per_structure(student_call, structures, repeats)
    return {"n_timed": len(structures), "teacher_s_per_structure": teacher_s,
            "student_s_per_structure": student_s, "speedup": teacher_s / student_s}


def mlflow_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The numbers of ``metrics`` under flat names (``per_species.H.force_mae_eV_per_A``,
    ``md_validation.rdf.<scalar>``), and ``gate.<metric>`` 1/0 for each evaluated gate."""
    from mlff_distill.tracking import flatten

    flat = flatten({k: v for k, v in metrics.items() if k not in ("gates", "speed")})
    numbers = {k: float(v) for k, v in flat.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    numbers.update({f"gate.{g['metric']}": float(g["passed"]) for g in metrics.get("gates", [])
                    if g["passed"] is not None})
    return numbers


def _log_student_model(tracker: Any, model: Any) -> str:
    """Log the student as an MLflow model (pytorch flavour, pickled) in the stage run; its URI."""
    import mlflow
    import mlflow.pytorch
    import torch

    mlflow.set_tracking_uri(tracker.pipeline.tracking_uri)
    with mlflow.start_run(run_id=tracker.run_id):
        info = mlflow.pytorch.log_model(
            model, name="student", serialization_format="pickle",  # pt2 needs a traceable forward
            pip_requirements=["mlff-distill", f"torch=={torch.__version__.split('+')[0]}"])
    return info.model_uri


def run(config: dict, store: Path, checkpoint: Path, inference_path_file: Path,
        metrics_file: Path, pipeline_file: Path, log_file: Path,
        structures_file: Path | None = None, compile_cache_dir: Path | None = None) -> None:
    """The Snakemake job; it also ends the pipeline's MLflow parent run. ``compile_cache_dir``:
    TorchInductor's cache of the run (`mlff_distill.precompile`)."""
    from ase.io import read

    from mlff_distill.logs import stage_logger
    from mlff_distill.precompile import use_compile_cache
    from mlff_distill.report import build_report
    from mlff_distill.store import read_labels, store_attrs
    from mlff_distill.student import StudentCalculator, load_student
    from mlff_distill.student.fitting import predict
    from mlff_distill.teachers import load_teacher
    from mlff_distill.tracking import PipelineRun, finish_pipeline_run, stage_run

    settings = config["evaluate"]
    logger = stage_logger("evaluate", log_file)
    use_compile_cache(compile_cache_dir, logger)
    out_dir = Path(metrics_file).parent
    with stage_run(pipeline_file, "evaluate", settings, log_file) as tracker:
        test = read_labels(store, "test")
        if test.n_structures == 0:
            raise ValueError(f"{store}: the test split is empty; raise sample.test_fraction")
        model, _ = load_student(checkpoint)
        # The student runs on the tune stage's choice where this machine can take it (Triton
        # needs a CUDA device): eager, torch.compile or the fused Triton kernels.
        student_calculator = StudentCalculator(model, tuned_kernels=inference_path_file)
        chosen = student_calculator.inference_path
        periodic = bool(test.pbc.all(axis=1).any())
        predictions = predict(model, test, compute_stress=periodic)
        energy_std_eV = split_column(store, "test", "energy_std_eV")
        metrics = accuracy(test, predictions, energy_std_eV)

        teacher = load_teacher(config["teacher"])
        leading = [test.atoms(i) for i in range(min(test.n_structures, max(
            settings["timing_structures"], settings["symmetry_structures"])))]
        timed = leading[:settings["timing_structures"]]
        n_parameters = sum(p.numel() for p in model.parameters())
        metrics.update({
            "teacher": teacher.identity.label,
            "student": f"{type(model).__name__} ({n_parameters} parameters, "
                       f"cutoff {model.cutoff_A:g} A)",
            "n_test": test.n_structures,
            **time_test_structures(teacher, student_calculator, timed, settings["timing_repeats"]),
            "inference_path": chosen,
            "teacher_weights_sha256": teacher.identity.weights_sha256,
        })
        turned = leading[:settings["symmetry_structures"]]
        metrics["teacher_rotation"] = (rotation_force_change(teacher, turned, np.random.default_rng(config["seed"]))
                                       if turned else None)
        sampled = read(structures_file, ":") if structures_file else None
        sample_indices = split_column(store, "test", "sample_index")
        kinds = structure_kinds(sample_indices, sampled) if sampled else None
        metrics["per_kind"] = per_kind_force_errors(test, predictions["forces_eV_per_A"], kinds) if kinds else None
        metrics["worst_structures"] = worst_force_errors(test, predictions["forces_eV_per_A"], [
            {"sample_index": int(index), **({"kind": kinds[i]} if kinds else {}),
             "teacher_energy_std_eV": float(energy_std_eV[i]) if np.isfinite(energy_std_eV[i]) else None}
            for i, index in enumerate(sample_indices)])
        for key in OPTIONAL_STEPS:
            step = optional_step(key)
            metrics[key] = None if step is None else step(
                config, teacher, student_calculator,
                sampled or [test.atoms(i) for i in range(test.n_structures)])
            logger.info("%s: %s", key, "done" if step else
                        "not run (no mlff_distill.%s.%s)" % OPTIONAL_STEPS[key])
        metrics["gates"] = check_gates(metrics, settings["gates"])
        metrics["gates_passed"] = not failed_gates(metrics["gates"]) if metrics["gates"] else None
        metrics["strict"] = settings["strict"]
        Path(metrics_file).write_text(json.dumps(metrics, indent=2))

        figures = write_figures(out_dir, test, predictions, metrics)
        teacher_identity = store_attrs(store).get("teacher") or teacher.identity.as_dict()
        report = build_report(out_dir / "report.html", metrics, config, teacher_identity,
                              provenance(store, sampled), figures)

        numbers = mlflow_metrics(metrics)
        tracker.log_metrics(numbers)
        for row in metrics["speed"] or []:  # one step per system size, in atoms
            tracker.log_metrics({f"speed.{k}": v for k, v in row.items()
                                 if isinstance(v, (int, float)) and not isinstance(v, bool)},
                                step=int(row["n_atoms"]))
        tracker.set_tags({"teacher": metrics["teacher"], "student": metrics["student"],
                          "gates_passed": metrics["gates_passed"]})
        for artifact in (metrics_file, report, *figures.values()):
            tracker.log_artifact(artifact)
        tracker.log_artifact(checkpoint, "student")
        model_uri = _log_student_model(tracker, model)
        logger.info("metrics %s; student model %s; report %s", numbers, model_uri, report)
    finish_pipeline_run(PipelineRun.load(pipeline_file))
