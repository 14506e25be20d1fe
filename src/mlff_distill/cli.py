"""The ``mlff-distill`` command: run the pipeline, evaluate a student on your structures, run MD.

    mlff-distill run [--configfile F] [--cores N] [--dry-run]
    mlff-distill evaluate STUDENT --structures FILE [--teacher-config F]
    mlff-distill md STUDENT --structure FILE --temperature K --steps N

Units: Angstrom, eV, eV/Angstrom, fs, K.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import yaml
from ase.io import read, write
from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, DAGSettings, OutputSettings, ResourceSettings
from tqdm import tqdm

from mlff_distill.evaluation.accuracy import accuracy
from mlff_distill.evaluation.references import file_labels, teacher_labels
from mlff_distill.evaluation.speed import compare_speed
from mlff_distill.sampling.dynamics import blow_up_reason, langevin_frames, too_close
from mlff_distill.settings import TeacherSettings, build, complete_config
from mlff_distill.student import StudentCalculator, load_student, predict
from mlff_distill.teachers import TeacherCalculator, check_structures_for, load_teacher, teacher_implementations


def run_pipeline(args: argparse.Namespace) -> int:
    """The workflow's DAG through Snakemake's API, from the folder holding the Snakefile."""
    snakefile = Path(args.snakefile).resolve()
    if not snakefile.is_file():
        raise SystemExit(f"{snakefile}: no Snakefile; run from the mlff-distill repository or pass --snakefile")
    with SnakemakeApi(OutputSettings(dryrun=args.dry_run, printshellcmds=True)) as api:
        workflow = api.workflow(
            resource_settings=ResourceSettings(cores=args.cores),
            config_settings=ConfigSettings(configfiles=[Path(f).resolve() for f in args.configfile]),
            snakefile=snakefile,
            workdir=snakefile.parent,
        )
        dag = workflow.dag(DAGSettings(targets=frozenset(args.targets)))
        dag.execute_workflow(executor="local", pseudo_executor="dryrun" if args.dry_run else None)
    return 0


def _student_covers(species: Sequence[int], structures: Sequence[Any], path: Path) -> None:
    """Raise naming the first structure with an element the student was not trained on."""
    for index, atoms in enumerate(structures):
        missing = sorted(set(int(z) for z in atoms.numbers) - set(species))
        if missing:
            raise SystemExit(
                f"{path}: structure {index} ({atoms.get_chemical_formula()}) holds atomic numbers "
                f"{missing}, which the student (species {list(species)}) was not trained on"
            )


def _teacher_from(config_file: Path) -> Any:
    """The teacher of a config file's ``teacher:`` section (schema defaults filled in)."""
    config = complete_config({"teacher": (yaml.safe_load(Path(config_file).read_text()) or {}).get("teacher", {})})
    return load_teacher(build(TeacherSettings, config["teacher"], "teacher")), config["teacher"]


def evaluate_student(args: argparse.Namespace) -> int:
    """Accuracy of the student on the user's structures against the teacher (or the file's own
    labels) and, with the teacher, the speed of both on the first structures."""
    structures = read(args.structures, ":")
    model, metadata = load_student(args.student)
    _student_covers(model.species, structures, args.structures)
    teacher = None
    if args.teacher_config:
        teacher, teacher_config = _teacher_from(args.teacher_config)
        check_structures_for(teacher, structures, teacher_config["molecule_only"])
        reference = teacher_labels(teacher, structures)
    else:
        reference = file_labels(structures, args.structures)
    periodic = bool(reference.pbc.all(axis=1).any())
    metrics = accuracy(reference, predict(model, reference, compute_stress=periodic))
    result: dict[str, Any] = {
        "student": str(Path(args.student).resolve()),
        "structures": str(Path(args.structures).resolve()),
        "n_structures": len(structures),
        "reference": teacher.identity.label if teacher else f"labels stored in {args.structures}",
        "trained_against": (metadata.get("teacher") or {}).get("name"),
        **metrics,
    }
    if teacher is not None:
        timed = structures[: args.timing_structures]
        implementations = teacher_implementations(build(TeacherSettings, teacher_config, "teacher"))
        result["speed"] = compare_speed(
            TeacherCalculator(teacher),
            StudentCalculator(model, threads=args.threads),
            timed,
            args.repeats,
            teacher_name=implementations.labeling,
            other_teachers=implementations.others,
        )
    print(_accuracy_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=float))
        print(f"metrics: {Path(args.json).resolve()}")
    return 0


def _accuracy_table(result: dict[str, Any]) -> str:
    lines = [
        f"student {result['student']} against {result['reference']}, {result['n_structures']} structures",
        f"  force error (relative RMS): {100 * result['force_rel_rmse']:.2f} %",
        f"  force MAE:                  {1000 * result['force_mae_eV_per_A']:.1f} meV/A",
        f"  energy MAE:                 {1000 * result['energy_mae_per_atom_eV']:.2f} meV/atom",
    ]
    if result.get("stress_rel_error") is not None:
        lines.append(f"  stress error (relative):    {100 * result['stress_rel_error']:.2f} %")
    for row in result.get("speed", []):
        lines.append(
            f"  {row['system']} ({row['n_atoms']} atoms): teacher {row['teacher_ms']:.2f} ms "
            f"(fastest: {row['teacher_fastest']}, {row['teacher_fastest_ms']:.2f} ms), "
            f"student {row['student_ms']:.2f} ms, speed-up over the fastest {row['speedup']:.1f}x"
        )
    return "\n".join(lines)


def run_md(args: argparse.Namespace) -> int:
    """Langevin MD with the student from the first structure of a file; frames to extxyz."""
    atoms = read(args.structure, 0)
    model, _ = load_student(args.student)
    _student_covers(model.species, [atoms], args.structure)
    if args.temperature <= 0 or args.steps < 1:
        raise SystemExit(f"--temperature must be > 0 K and --steps >= 1, got {args.temperature} and {args.steps}")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.unlink(missing_ok=True)
    frames = langevin_frames(
        StudentCalculator(model, threads=args.threads),
        atoms,
        args.temperature,
        args.timestep_fs,
        args.steps,
        args.interval,
        args.seed,
        args.friction_per_fs,
    )
    written = 0
    with tqdm(total=args.steps, unit="step", desc="student MD") as progress:
        for frame in frames:
            reason = blow_up_reason(frame, 0.0, 0.0, frame.positions) or too_close(frame, args.min_distance_A)
            frame.info.update(
                step=(written + 1) * args.interval, time_fs=(written + 1) * args.interval * args.timestep_fs
            )
            write(output, frame, format="extxyz", append=True)
            written += 1
            progress.update(args.interval)
            if reason is not None:
                print(f"blew up at step {frame.info['step']}: {reason}; {written} frames in {output}", file=sys.stderr)
                return 1
    print(f"{written} frames ({args.steps} steps of {args.timestep_fs:g} fs at {args.temperature:g} K) in {output}")
    return 0


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="mlff-distill", description=__doc__.split("\n")[0])
    commands = main.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the pipeline (Snakemake) on the default config or yours")
    run.add_argument("--configfile", action="append", default=[], help="config file laid over config/config.yaml")
    run.add_argument("--cores", type=int, default=2, help="CPU cores for Snakemake's jobs (default 2)")
    run.add_argument("--dry-run", "-n", action="store_true", help="say what would run, run nothing")
    run.add_argument("--snakefile", default="Snakefile", help="the workflow (default ./Snakefile)")
    run.add_argument("targets", nargs="*", help="files or rules to make (default: the whole pipeline)")
    run.set_defaults(handler=run_pipeline)

    evaluate = commands.add_parser("evaluate", help="a trained student against its teacher on your structures")
    evaluate.add_argument("student", help="the student checkpoint (results/<run>/train/student.pt)")
    evaluate.add_argument("--structures", required=True, help="any file ASE reads; every frame is used")
    evaluate.add_argument(
        "--teacher-config",
        help="a config file whose teacher: section labels the structures "
        "and is timed; without it the file's own energies and forces are the reference",
    )
    evaluate.add_argument("--timing-structures", type=int, default=3, help="structures timed (default 3)")
    evaluate.add_argument("--repeats", type=int, default=3, help="timed calls per structure, at least (default 3)")
    evaluate.add_argument("--threads", type=int, default=1, help="torch threads of the student (default 1)")
    evaluate.add_argument("--json", help="also write the metrics to this JSON file")
    evaluate.set_defaults(handler=evaluate_student)

    md = commands.add_parser("md", help="Langevin MD with a trained student, frames to an extxyz file")
    md.add_argument("student", help="the student checkpoint (results/<run>/train/student.pt)")
    md.add_argument("--structure", required=True, help="start structure, any file ASE reads (its first frame)")
    md.add_argument("--temperature", type=float, required=True, help="thermostat temperature, K")
    md.add_argument("--steps", type=int, required=True, help="MD steps")
    md.add_argument("--timestep-fs", type=float, default=0.5, help="time step, fs (default 0.5)")
    md.add_argument("--friction-per-fs", type=float, default=0.01, help="Langevin friction, 1/fs (default 0.01)")
    md.add_argument("--interval", type=int, default=10, help="steps between written frames (default 10)")
    md.add_argument("--seed", type=int, default=0, help="seed of the velocities and the thermostat")
    md.add_argument("--threads", type=int, default=None, help="torch threads (default: by system size)")
    md.add_argument("--min-distance-A", type=float, default=0.5, help="closer atoms count as a blow-up, Angstrom")
    md.add_argument("--output", default="md.extxyz", help="trajectory file (extxyz; default md.extxyz)")
    md.set_defaults(handler=run_md)
    return main


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
