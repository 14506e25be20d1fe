"""The end-of-run summary and the acceptance gates' verdict, from a run's metrics.json."""

from __future__ import annotations

import json
from pathlib import Path

from mlff_distill.evaluation.metrics import failed_gates


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
    worst = metrics.get("worst_structures")
    if worst:
        lines.append(
            f"  worst {len(worst['structures'])} structures:   {100 * worst['share_of_squared_error']:.0f} % of "
            f"the squared force error; the others {100 * worst['force_rel_rmse_of_the_others']:.2f} %"
        )
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
        lines.append(
            f"  teacher symmetry:      its forces change by {100 * rotation['force_rel_change']:.1f} % "
            "when structures are rotated: no rotation-invariant student can get below "
            f"about {100 * rotation['invariant_student_floor']:.1f} %"
        )
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
        raise GatesFailedError(f"{verdict} (evaluate.strict is true); metrics and report: {Path(metrics_file).parent}")
    Path(verdict_file).write_text(
        json.dumps({"strict": strict, "failed": failed, "gates": metrics.get("gates", [])}, indent=2)
    )
