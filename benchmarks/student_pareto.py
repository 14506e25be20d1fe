"""Accuracy against speed for several student sizes, trained on the same labels: the Pareto front.

Usage::

    python benchmarks/student_pareto.py --store results/<run>/round1/label/labels.zarr \
        [--sampled results/<run>/sample/structures.extxyz] \
        [--sizes 16,1,8,4.0 32,2,8,4.0 ...] [--minutes 3.5] [--atoms 512] \
        [--out results/benchmarks/student_pareto.json]

Each size (``n_features,n_interactions,n_radial,cutoff_A``, optionally followed by
``,angular_order,angular_channels``) is a student trained on the store's
train split with the config schema's ``train:`` settings, ``--minutes`` of wall clock each (the
same budget for all: a bigger student gets fewer epochs), then tested on the store's test split
(relative RMS force error, energy MAE in eV/atom) and timed on one system: the first periodic test
structure repeated to about ``--atoms`` atoms (energy, forces and stress per call, one torch thread,
the student through ``torch.compile``; ``--eager`` trains and times every student without
compiling, which starts in seconds instead of minutes per size but runs slower). With
``--sampled`` (the run's sampled structures) each student's reference energies are first
calibrated on the train split's teacher MD of the targets, as the train stage does
(`mlff_distill.stages.train.calibrate_on_target_md`; the shift, eV per species, is in its point);
without it they are as fitted, and a liquid target's energy errors are not the pipeline's. The
fastest implementation of the store's teacher (`mlff_distill.teachers.teacher_implementations`,
with the schema's ``teacher:`` defaults and ``--teacher-config`` on top) is timed on the same
system, so the figure shows which students cost 1/10 and 1/20 of it. A student is on the front
when no other is both faster and more accurate.

Writes ``--out`` (JSON), the figure beside it (``.png``) and an MLflow run (experiment
"benchmarks", run "student_pareto"). Each student's training state is kept under
``<out stem>_states/``: an interrupted benchmark resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import matplotlib
import matplotlib.ticker
import numpy as np
import torch
import yaml
from student_speed import DEFAULT_MLFLOW_URI, machine

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

DEFAULT_SIZES = [
    "16,1,8,3.5",
    "32,1,8,3.5",
    "32,1,8,4.0",
    "32,1,8,3.5,2,8",
    "32,1,8,3.5,3,16",
    "32,2,8,3.5",
    "48,2,8,4.0",
    "64,2,8,4.0,3,32",
]


def parse_size(spec: str) -> dict:
    """``"48,2,8,4.0"`` or, with the angular moments, ``"32,1,8,4.0,3,16"`` (order, channels) ->
    the student settings it names."""
    features, interactions, radial, cutoff, *angular = spec.split(",")
    size = {
        "n_features": int(features),
        "n_interactions": int(interactions),
        "n_radial": int(radial),
        "cutoff_A": float(cutoff),
    }
    if angular:
        order, channels = angular
        size.update(angular_order=int(order), angular_channels=int(channels))
    return size


def pareto_front(points: list[dict]) -> list[bool]:
    """Whether each point (``student_ms``, ``force_rel_rmse``) is on the front: no other point
    is at least as fast and as accurate, and better in one."""
    return [
        not any(
            other["student_ms"] <= point["student_ms"]
            and other["force_rel_rmse"] <= point["force_rel_rmse"]
            and (other["student_ms"], other["force_rel_rmse"]) != (point["student_ms"], point["force_rel_rmse"])
            for other in points
        )
        for point in points
    ]


def draw(points: list[dict], teacher_ms: float, teacher_name: str, n_atoms: int, path: Path) -> Path:
    """Force error (%) against ms per call, front joined, with the 1/10 and 1/20 teacher lines."""
    figure, axis = plt.subplots(figsize=(6.5, 4.5))
    front = sorted((p for p in points if p["on_front"]), key=lambda p: p["student_ms"])
    axis.plot([p["student_ms"] for p in front], [100 * p["force_rel_rmse"] for p in front], "-", color="C0")
    for point in points:
        axis.plot(point["student_ms"], 100 * point["force_rel_rmse"], "o", color="C0" if point["on_front"] else "C7")
        axis.annotate(
            point["size"],
            (point["student_ms"], 100 * point["force_rel_rmse"]),
            fontsize=7,
            xytext=(4, 4),
            textcoords="offset points",
        )
    for factor, style in ((10, "--"), (20, ":")):
        axis.axvline(teacher_ms / factor, linestyle=style, color="C3", label=f"1/{factor} of {teacher_name}")
    axis.set(
        xscale="log",
        xlabel=f"student ms per call, {n_atoms} atoms (energy, forces, stress; 1 thread)",
        ylabel="relative RMS force error on the test split (%)",
        title="features, interactions, radial functions, cutoff (A)[, angular order, channels]",
    )
    axis.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    axis.xaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", type=Path, required=True, help="a run's labels.zarr")
    parser.add_argument(
        "--sizes",
        nargs="+",
        default=DEFAULT_SIZES,
        help="n_features,n_interactions,n_radial,cutoff_A[,angular_order,angular_channels]",
    )
    parser.add_argument(
        "--sampled", type=Path, help="the run's sample/structures.extxyz: calibrate reference energies as train does"
    )
    parser.add_argument("--minutes", type=float, default=3.5, help="training wall clock per student")
    parser.add_argument("--atoms", type=int, default=512, help="atoms of the timed system")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls at least (and 1 s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eager", action="store_true", help="train and time the students without torch.compile")
    parser.add_argument("--teacher-config", type=Path, help="a config whose teacher: labeled the store")
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks/student_pareto.json"))
    parser.add_argument("--mlflow-uri", default=DEFAULT_MLFLOW_URI, help="'none' to skip")
    args = parser.parse_args(argv)

    from mlff_distill.evaluation.metrics import energy_force_errors
    from mlff_distill.evaluation.speed import time_calls
    from mlff_distill.sampling.boxes import replicated
    from mlff_distill.settings import StudentSettings, TeacherSettings, TrainSettings, section_settings
    from mlff_distill.stages.train import calibrate_on_target_md
    from mlff_distill.store import read_labels
    from mlff_distill.student import StudentCalculator
    from mlff_distill.student.fitting import predict
    from mlff_distill.student.training import fit
    from mlff_distill.teachers import TeacherCalculator, load_teacher, teacher_implementations

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logger = logging.getLogger("student_pareto")
    test = read_labels(args.store, "test")
    periodic = [i for i in range(test.n_structures) if test.pbc[i].all()]
    if not periodic:
        raise SystemExit(f"{args.store}: no periodic test structure to time")
    system = replicated(test.atoms(periodic[0]), args.atoms)

    torch.set_num_threads(1)
    teacher_section = yaml.safe_load(args.teacher_config.read_text())["teacher"] if args.teacher_config else {}
    teacher_settings = section_settings(TeacherSettings, "teacher", teacher_section)
    implementations = teacher_implementations(teacher_settings)
    teachers = {implementations.labeling: TeacherCalculator(load_teacher(teacher_settings)), **implementations.others}
    teacher_ms = {name: time_calls(calc, system, 3)["median_ms"] for name, calc in teachers.items()}
    fastest = min(teacher_ms, key=teacher_ms.get)
    logger.info("teacher on %d atoms: %s ms; fastest %s", len(system), teacher_ms, fastest)

    states = args.out.with_name(f"{args.out.stem}_states")
    states.mkdir(parents=True, exist_ok=True)
    train = section_settings(TrainSettings, "train", {"max_minutes": args.minutes, "compile": not args.eager})
    points = []
    for spec in args.sizes:
        student = section_settings(StudentSettings, "student", parse_size(spec))
        model, history, _ = fit(student, train, args.seed, args.store, states / f"{spec}.pt", logger)
        model = model.cpu()
        shift = None
        if args.sampled:
            shift, _ = calibrate_on_target_md(model, args.store, args.sampled, train.in_memory_max_GB, logger)
        predictions = predict(model, test)
        errors = energy_force_errors(test, predictions["energy_eV"], predictions["forces_eV_per_A"])
        timing = time_calls(StudentCalculator(model, threads=1, compiled=not args.eager), system, args.repeats)
        points.append(
            {
                "size": spec,
                **parse_size(spec),
                "n_parameters": sum(p.numel() for p in model.parameters()),
                "epochs": len(history["epochs"]),
                "force_rel_rmse": errors["force_rel_rmse"],
                "energy_mae_per_atom_eV": errors["energy_mae_per_atom_eV"],
                "reference_shift_eV": shift,
                "student_ms": timing["median_ms"],
                "speedup_over_fastest_teacher": teacher_ms[fastest] / timing["median_ms"],
            }
        )
        logger.info("%s", points[-1])
    for point, on_front in zip(points, pareto_front(points)):
        point["on_front"] = on_front
    report = {
        "benchmark": "student_pareto",
        "store": str(args.store.resolve()),
        "n_test": test.n_structures,
        "timed_system": {"formula": system.get_chemical_formula(), "n_atoms": len(system)},
        "minutes_per_student": args.minutes,
        "energies_calibrated_on": str(args.sampled.resolve()) if args.sampled else None,
        "compiled": not args.eager,
        "teacher_ms": teacher_ms,
        "teacher_fastest": fastest,
        "teacher_missing": implementations.missing,
        "points": points,
        "machine": machine("cpu"),
    }
    args.out.write_text(json.dumps(report, indent=1))
    figure = draw(points, teacher_ms[fastest], fastest, len(system), args.out.with_suffix(".png"))
    print(f"{'size':>12} {'params':>7} {'epochs':>6} {'force %':>8} {'meV/atom':>8} {'ms':>7} {'x fastest':>9} front")
    for p in points:
        print(
            f"{p['size']:>12} {p['n_parameters']:7d} {p['epochs']:6d} {100 * p['force_rel_rmse']:8.2f} "
            f"{1000 * p['energy_mae_per_atom_eV']:8.2f} {p['student_ms']:7.2f} "
            f"{p['speedup_over_fastest_teacher']:9.1f} {p['on_front']}"
        )
    print(f"teacher ms on {len(system)} atoms: {teacher_ms}; written {args.out} and {figure}")
    if args.mlflow_uri != "none":
        log_to_mlflow(args.mlflow_uri, report, figure)
    return report


def log_to_mlflow(uri: str, report: dict, figure: Path) -> None:
    import mlflow

    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("benchmarks")
    with mlflow.start_run(run_name="student_pareto"):
        mlflow.log_params({"store": report["store"], "minutes_per_student": report["minutes_per_student"]})
        for step, point in enumerate(report["points"]):
            mlflow.log_metrics(
                {k: float(v) for k, v in point.items() if isinstance(v, (int, float, np.floating))}, step=step
            )
        mlflow.log_metrics({f"teacher_ms.{k}": v for k, v in report["teacher_ms"].items()})
        mlflow.log_dict(report, "student_pareto.json")
        mlflow.log_artifact(str(figure))


if __name__ == "__main__":
    main()
