"""The end-of-run summary and the acceptance gates' verdict, from a run's metrics.json."""

from __future__ import annotations

import json
from pathlib import Path

from mlff_distill.evaluation.gates import failed_gates, gate_verdict

NOT_MEASURED = "accuracy not measured"  # shown in place of a speed-up without the accuracy beside it


class GatesFailedError(RuntimeError):
    """Raised by `check_acceptance` in strict mode when an acceptance gate fails."""


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
    of_the_mean = (metrics.get("ensemble_spread") or {}).get("force_rel_rmse_of_the_mean")
    if of_the_mean is not None:
        lines.append(
            f"  teacher's own force uncertainty: {100 * of_the_mean:.2f} % (its members' spread over "
            "the square root of their number)"
        )
    worst = metrics.get("worst_structures")
    if worst:
        lines.append(
            f"  worst {len(worst['structures'])} structures:   {100 * worst['share_of_squared_error']:.0f} % of "
            f"the squared force error; the others {100 * worst['force_rel_rmse_of_the_others']:.2f} %"
        )
    lines.append(f"  energy MAE:            {1000 * metrics['energy_mae_per_atom_eV']:.2f} meV/atom")
    lines += _target_accuracy_lines(metrics.get("accuracy_by_target") or [])
    lines += round_lines(metrics.get("rounds") or [])
    lines += fit_lines(metrics.get("training_fit"))
    lines += [
        f"  speed-up, test set:    {metrics['speedup']:.1f}x over the labeling teacher "
        f"({1000 * metrics['teacher_s_per_structure']:.2f} ms -> "
        f"{1000 * metrics['student_s_per_structure']:.2f} ms, one structure per call, "
        f"{metrics['inference_path']})",
    ]
    lines += speed_lines(metrics.get("speed") or [])
    lines += member_lines(metrics.get("ensemble_member"), metrics)
    lines += _target_nvt_lines(metrics.get("target_nvt") or [])
    rotation = metrics.get("teacher_rotation")
    if rotation and rotation["invariant_student_floor"] > 0.1 * metrics["force_rel_rmse"]:
        lines.append(
            f"  teacher symmetry:      its forces change by {100 * rotation['force_rel_change']:.1f} % "
            "when structures are rotated: no rotation-invariant student can get below "
            f"about {100 * rotation['invariant_student_floor']:.1f} %"
        )
    if metrics.get("gates"):
        lines.append(f"  acceptance gates:      {gate_verdict(metrics['gates'])}")
    report = Path(metrics_file).with_name("report.html")
    if report.is_file():
        lines.append(f"  report:                {report.resolve()}")
    lines.append(f"  results:               {Path(metrics_file).resolve().parent.parent}")
    return "\n".join(lines)


def has_accuracy(row: dict) -> bool:
    """Whether a speed row carries the student's measured accuracy on its system: a speed-up
    without it is not shown as one."""
    return row.get("force_rel_rmse") is not None


def speed_lines(rows: list[dict]) -> list[str]:
    """A line per target (or one for systems without a target): the speed-up at each size beside
    the relative RMS force error on that system; "accuracy not measured" in place of the speed-up
    of a row without that error."""
    groups: dict = {}
    for row in rows:
        groups.setdefault(row.get("target"), []).append(row)
    lines = []
    for target, group in groups.items():
        cells = " / ".join(
            f"{row['speedup']:.1f}x ({100 * row['force_rel_rmse']:.1f} %)" if has_accuracy(row) else NOT_MEASURED
            for row in group
        )
        sizes = " / ".join(str(row["n_atoms"]) for row in group)
        name = f"speed-up, {target}:" if target is not None else "speed-up by size:"
        fastest = sorted({row["teacher_fastest"] for row in group if row.get("teacher_fastest")})
        over = f" over the fastest teacher ({', '.join(fastest)})" if fastest else ""
        lines.append(f"  {name:<22} {cells} at {sizes} atoms{over} (force error in brackets)")
        if all(row.get("exported_over_student") is not None for row in group):
            ratios = " / ".join(f"{row['exported_over_student']:.2f}" for row in group)
            lines.append(f"  {'':<22} exported package (AOTInductor): {ratios} of the student's time")
        if all(row.get("all_cores_speedup") is not None and has_accuracy(row) for row in group):
            speedups = " / ".join(f"{row['all_cores_speedup']:.1f}x" for row in group)
            forms = " / ".join(
                dict.fromkeys(row["all_cores_student_fastest"] for row in group if "all_cores_student_fastest" in row)
            )
            student = f" (the student as: {forms})" if forms else ""
            lines.append(f"  {'':<22} {speedups} on all {group[0]['all_cores_threads']} cores{student}")
    return lines


def round_lines(rows: list[dict]) -> list[str]:
    """With on-policy rounds, one line: each round's student's force error and energy MAE on the
    test split, round 0 first."""
    if len(rows) < 2:
        return []
    cells = "; ".join(
        f"{row['round']}: {100 * row['force_rel_rmse']:.2f} %, {1000 * row['energy_mae_per_atom_eV']:.2f} meV/atom"
        for row in rows
    )
    return [f"  test error by round:   {cells}"]


def fit_lines(fit: dict | None) -> list[str]:
    """One line on what limits the student (`metrics.training_fit`): its force error on the targets'
    teacher MD that it was trained on beside that on the test MD."""
    if not fit:
        return []
    return [
        f"  limited by:            {fit['limited_by']} (force error {100 * fit['train_force_rel_rmse']:.2f} % on "
        f"the targets' teacher MD it was trained on, {100 * fit['test_force_rel_rmse']:.2f} % on the test MD)"
    ]


def member_lines(member: dict | None, metrics: dict) -> list[str]:
    """One line on the alternative to the student that an ensemble teacher offers, one of its
    members: its force error on the test split beside the student's, and the student's speed-up
    over it at each timed size."""
    if not member:
        return []
    rows = [row for row in metrics.get("speed") or [] if row.get("member_ms") is not None]
    speedups = " / ".join(f"{row['student_speedup_over_member']:.1f}x" for row in rows)
    accurate = "more" if member["student_more_accurate"] else "less"
    faster = {True: "faster everywhere", False: "not faster everywhere", None: "speed not compared"}
    return [
        f"  one ensemble member:   force error {100 * member['force_rel_rmse']:.2f} % (the student's "
        f"{100 * metrics['force_rel_rmse']:.2f} %); student {speedups or '-'} faster at the timed sizes: "
        f"the student is {accurate} accurate and {faster[member['student_faster_at_every_size']]}"
    ]


def _temperature(row: dict) -> str:
    return f" {row['temperature_K']:g} K" if row.get("temperature_K") is not None else ""


def _target_accuracy_lines(rows: list[dict]) -> list[str]:
    lines = []
    for row in rows:
        if row.get("target") is None:
            continue
        name = f"{row['target']}{_temperature(row)}:"
        lines.append(
            f"  {name:<22} force error {100 * row['force_rel_rmse']:.2f} %, energy MAE "
            f"{1000 * row['energy_mae_per_atom_eV']:.2f} meV/atom ({row['n_structures']} test structures)"
        )
    return lines


def _target_nvt_lines(rows: list[dict]) -> list[str]:
    lines = []
    for row in rows:
        name = f"NVT {row['target']}{_temperature(row)}:"
        state = f"blew up at {row['time_ps']:.2f} ps ({row['reason']})" if row["blew_up"] else f"{row['time_ps']:g} ps"
        drift = row.get("conserved_drift_eV_per_atom_per_ps")
        parts = [state] + ([f"drift {drift:.1e} eV/atom/ps"] if drift is not None else [])
        if row.get("md_steps_per_s") is not None:
            parts.append(f"{row['md_steps_per_s']:.0f} MD steps/s ({row['n_atoms']} atoms)")
        if row.get("rdf_integrated_abs_difference") is not None:
            floor = row.get("rdf_teacher_halves_difference")
            parts.append(
                f"g(r) difference {row['rdf_integrated_abs_difference']:.3f}"
                + (f" (teacher's halves {floor:.3f})" if floor is not None else "")
            )
        if row.get("closest_contacts"):
            parts.append(f"closest contacts (A, student / teacher) {row['closest_contacts']}")
        lines.append(f"  {name:<22} " + ", ".join(parts))
    return lines


def check_acceptance(metrics_file: Path, strict: bool, verdict_file: Path, log_file: Path) -> None:
    """Write the gates' verdict to ``log_file`` and ``verdict_file``; in strict mode raise
    `GatesFailedError` naming the failed gates instead of writing ``verdict_file``."""
    metrics = json.loads(Path(metrics_file).read_text())
    failed = failed_gates(metrics.get("gates", []))
    verdict = f"acceptance gates {gate_verdict(metrics.get('gates', []))}"
    Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    Path(log_file).write_text(f"{verdict} (strict: {strict})\n")
    if strict and failed:
        raise GatesFailedError(f"{verdict} (evaluate.strict is true); metrics and report: {Path(metrics_file).parent}")
    Path(verdict_file).write_text(
        json.dumps({"strict": strict, "failed": failed, "gates": metrics.get("gates", [])}, indent=2)
    )
