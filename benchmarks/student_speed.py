"""Teacher against student speed at several system sizes, in one process on one machine.

Usage::

    python benchmarks/student_speed.py [--configfile config/orb.yaml] [--checkpoint student.pt] \
        [--sizes 64 512 2048] [--repeats 3] [--torch-threads 1] [--compiled] \
        [--out results/benchmarks/student_speed.json]

The teacher is the config's ``teacher:`` (config/config.yaml, with ``--configfile`` merged on top,
as Snakemake does). The student is ``--checkpoint``, or else an untrained `StudentPotential` of
the config's ``student:`` sizes over the species of the seeds: speed does not depend on the
weights. Systems are built from the config's seeds (`mlff_distill.sampling.boxes.build_timing_systems`):
molecules packed into periodic boxes, or each crystal repeated (one table per crystal). Per
call: energy and forces, with stress when both calculators give it; ms are medians over
``--repeats`` after ``--warmup`` calls (with ``--compiled`` the student runs through
``torch.compile``, and its first warm-up call compiles); peak memory in MB (see
`mlff_distill.evaluation.speed.time_calls`).
Results go to ``--out`` (JSON) and to MLflow (experiment "benchmarks", run "student_speed").
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
from pathlib import Path

import torch
import yaml
from ase import Atoms

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MLFLOW_URI = "sqlite:///results/benchmarks/mlflow.db"


def load_config(configfile: Path | None) -> dict:
    """config/config.yaml, ``configfile`` merged on top, every schema default filled in
    (`mlff_distill.settings.complete_config`)."""
    from snakemake.utils import update_config

    from mlff_distill.settings import complete_config

    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text()) or {}
    if configfile is not None:
        update_config(config, yaml.safe_load(configfile.read_text()) or {})
    return complete_config(config)


def seed_groups(config: dict) -> list[tuple[str, list[Atoms]]]:
    """Named groups of seeds, one timing table each: every crystal alone, else all molecules."""
    from mlff_distill.sampling.seeds import seed_structures
    from mlff_distill.settings import SampleSettings, build

    seeds = seed_structures(build(SampleSettings, config["sample"], "sample"))
    crystals = [atoms for atoms in seeds if atoms.pbc.all()]
    if crystals:
        return [(atoms.info.get("seed", atoms.get_chemical_formula()), [atoms]) for atoms in crystals]
    return [("molecules", seeds)]


def student_calculator(checkpoint: Path | None, config: dict, species: list[int], device: str, compiled: bool):
    """The checkpoint's student, or an untrained one of the config's sizes over ``species``."""
    from mlff_distill.settings import StudentSettings, build
    from mlff_distill.student import StudentCalculator, StudentPotential

    if checkpoint is not None:
        return StudentCalculator(checkpoint, device=device, compiled=compiled), str(checkpoint)
    sizes = build(StudentSettings, config["student"], "student")
    model = StudentPotential(species=species, **dataclasses.asdict(sizes))
    return StudentCalculator(model, device=device, compiled=compiled), "untrained StudentPotential"


def machine(device: str) -> dict:
    return {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        "load_average_1_5_15": list(os.getloadavg()),
    }


def print_table(name: str, rows: list[dict]) -> None:
    header = (
        f"{'atoms':>6} {'teacher ms':>11} {'fastest ms':>11} {'student ms':>11} {'speed-up':>9} "
        f"{'teacher atom-steps/s':>21} {'student atom-steps/s':>21} "
        f"{'teacher MB':>11} {'student MB':>11}"
    )
    fastest = sorted({r["teacher_fastest"] for r in rows})
    print(f"{name} (stress in the call: {rows[0]['with_stress']}; speed-up over the fastest teacher: {fastest})")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['n_atoms']:6d} {r['teacher_ms']:11.1f} {r['teacher_fastest_ms']:11.1f} {r['student_ms']:11.1f} "
            f"{r['speedup']:9.1f} "
            f"{r['teacher_atom_steps_per_s']:21.0f} {r['student_atom_steps_per_s']:21.0f} "
            f"{r['teacher_peak_MB']:11.1f} {r['student_peak_MB']:11.1f}"
        )


def log_to_mlflow(uri: str, report: dict) -> None:
    import mlflow

    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("benchmarks")
    with mlflow.start_run(run_name="student_speed"):
        mlflow.log_params(report["settings"])
        for name, rows in report["results"].items():
            for row in rows:
                mlflow.log_metrics(
                    {
                        f"{name}.{key}": float(value)
                        for key, value in row.items()
                        if key != "n_atoms" and isinstance(value, (int, float))
                    },
                    step=row["n_atoms"],
                )
        mlflow.log_dict(report, "student_speed.json")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--configfile",
        type=Path,
        default=None,
        help="run config merged over config/config.yaml (teacher, student, sample)",
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="student checkpoint (default: an untrained student of the config's sizes)",
    )
    parser.add_argument("--sizes", nargs="+", type=int, default=[64, 512, 2048], help="atoms per system")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per system and model")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls first (JIT, caches)")
    parser.add_argument("--device", default="cpu", help="torch device of the student")
    parser.add_argument(
        "--torch-threads", type=int, default=None, help="torch intra-op threads (default: torch's own choice)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the packed boxes")
    parser.add_argument(
        "--compiled",
        action="store_true",
        help="run the student through torch.compile (StudentCalculator(compiled=True))",
    )
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks/student_speed.json"))
    parser.add_argument(
        "--mlflow-uri",
        default=DEFAULT_MLFLOW_URI,
        help=f"MLflow tracking URI (default {DEFAULT_MLFLOW_URI}); 'none' to skip",
    )
    args = parser.parse_args(argv)

    from mlff_distill.evaluation.speed import compare_speed
    from mlff_distill.sampling.boxes import build_timing_systems
    from mlff_distill.settings import TeacherSettings, build
    from mlff_distill.teachers import TeacherCalculator, load_teacher, teacher_implementations

    if args.torch_threads is not None:
        torch.set_num_threads(args.torch_threads)
    config = load_config(args.configfile)
    teacher_settings = build(TeacherSettings, config["teacher"], "teacher")
    teacher = load_teacher(teacher_settings)
    implementations = teacher_implementations(teacher_settings)
    groups = seed_groups(config)
    species = sorted({int(z) for _, seeds in groups for atoms in seeds for z in atoms.numbers})
    student, student_source = student_calculator(args.checkpoint, config, species, args.device, args.compiled)
    report = {
        "benchmark": "student_speed",
        "settings": {
            "teacher": teacher.identity.label,
            "student": student_source,
            "student_sizes": json.dumps(config["student"]),
            "sizes": ",".join(map(str, args.sizes)),
            "repeats": args.repeats,
            "warmup": args.warmup,
            "device": args.device,
            "student_inference_path": student.inference_path,
        },
        "machine_before": machine(args.device),
        "results": {},
    }
    for name, seeds in groups:
        systems = build_timing_systems(seeds, args.sizes, config["student"]["cutoff_A"], args.seed)
        rows = compare_speed(
            TeacherCalculator(teacher),
            student,
            systems,
            args.repeats,
            args.warmup,
            teacher_name=implementations.labeling,
            other_teachers=implementations.others,
        )
        report["results"][name] = rows
        print_table(name, rows)
    report["machine_after"] = machine(args.device)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(
        f"load average before {report['machine_before']['load_average_1_5_15']}, after "
        f"{report['machine_after']['load_average_1_5_15']} on {os.cpu_count()} CPUs; "
        f"written {args.out}"
    )
    if args.mlflow_uri != "none":
        log_to_mlflow(args.mlflow_uri, report)
    return report


if __name__ == "__main__":
    main()
