"""Figures as PNG files (matplotlib, Agg backend): parity, error histograms, speed against system
size (with the student's error on each system), radial distribution functions (and one figure per
target: teacher MD against the student's NVT) of the evaluate stage, and the learning curve (the
train stage).

A *quantity* is ``(label, teacher_values, student_values)`` with the unit in the label, e.g.
``("energy per atom (eV/atom)", teacher, student)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402
from ase.units import GPa  # noqa: E402

from mlff_distill.data import LabeledArrays  # noqa: E402

Quantity = tuple[str, np.ndarray, np.ndarray]


def quantities(
    reference: LabeledArrays,
    energy_eV: np.ndarray,
    forces_eV_per_A: np.ndarray,
    stress_eV_per_A3: np.ndarray | None = None,
) -> list[Quantity]:
    """Energy per atom, force components and (where both are finite) stress components in GPa."""
    n_atoms = reference.n_atoms
    found = [
        ("energy per atom (eV/atom)", reference.energy_eV / n_atoms, np.asarray(energy_eV) / n_atoms),
        ("force component (eV/Å)", reference.forces_eV_per_A.ravel(), np.asarray(forces_eV_per_A).ravel()),
    ]
    if reference.stress_eV_per_A3 is not None and stress_eV_per_A3 is not None:
        teacher = reference.stress_eV_per_A3.reshape(-1, 9)
        student = np.asarray(stress_eV_per_A3).reshape(-1, 9)
        keep = np.isfinite(teacher).all(axis=1) & np.isfinite(student).all(axis=1)
        if keep.any():
            found.append(("stress component (GPa)", teacher[keep].ravel() / GPa, student[keep].ravel() / GPa))
    return found


def _save(figure: plt.Figure, path: Path) -> Path:
    path = Path(path)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def parity_plot(items: Sequence[Quantity], path: Path) -> Path:
    """Student against teacher, one panel per quantity, with the diagonal."""
    figure, axes = plt.subplots(1, len(items), figsize=(4.2 * len(items), 4), squeeze=False)
    for axis, (label, teacher, student) in zip(axes[0], items):
        axis.scatter(teacher, student, s=3, alpha=0.5)
        low = float(min(np.min(teacher), np.min(student)))
        high = float(max(np.max(teacher), np.max(student)))
        axis.plot([low, high], [low, high], "k--", lw=0.8)
        axis.set(xlabel=f"teacher {label}", ylabel=f"student {label}")
    return _save(figure, path)


def error_histograms(items: Sequence[Quantity], path: Path) -> Path:
    """Histogram of student minus teacher, one panel per quantity, log counts.

    Errors that are all equal up to rounding (a constant offset) are binned over +-5 % around it.
    """
    figure, axes = plt.subplots(1, len(items), figsize=(4.2 * len(items), 3.6), squeeze=False)
    for axis, (label, teacher, student) in zip(axes[0], items):
        errors = np.asarray(student) - np.asarray(teacher)
        low, high = float(np.min(errors)), float(np.max(errors))
        size = max(abs(low), abs(high))
        pad = 0.05 * max(size, 1e-12) if high - low <= 1e-9 * max(size, 1.0) else 0.0
        axis.hist(errors, bins=60, range=(low - pad, high + pad), log=True, histtype="stepfilled")
        axis.axvline(0.0, color="k", lw=0.8)
        axis.set(xlabel=f"student - teacher, {label}", ylabel="count")
    return _save(figure, path)


def speed_plot(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Milliseconds per call against atom count, log-log, for teacher and student, a colour per
    target (rows without one together); each student point is labelled with the student's
    relative RMS force error on that system.

    Where another implementation of the teacher was faster than the labeling one
    (``teacher_fastest_ms``), it is drawn too (triangles, dotted).

    ``rows``: ``{"n_atoms", "teacher_ms", "student_ms"}`` each, with ``target`` and
    ``force_rel_rmse`` where known; a missing or None time is skipped. A student point without a
    measured accuracy is drawn hollow and labelled "accuracy not measured": its time is no
    speed-up to claim.
    """
    rows = sorted(rows, key=lambda row: row["n_atoms"])
    groups: dict[Any, list] = {}
    for row in rows:
        groups.setdefault(row.get("target"), []).append(row)
    figure, axis = plt.subplots(figsize=(6.5, 4.5))
    for colour, (target, group) in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"] * 10, groups.items()):
        name = "" if target is None else f"{target}, "
        teacher = [(row["n_atoms"], row["teacher_ms"]) for row in group if row.get("teacher_ms") is not None]
        if teacher:
            axis.plot(*zip(*teacher), marker="o", color=colour, label=f"{name}labeling teacher")
        fastest = [row for row in group if row.get("teacher_fastest_ms") not in (None, row.get("teacher_ms"))]
        if fastest:
            axis.plot(
                [row["n_atoms"] for row in fastest],
                [row["teacher_fastest_ms"] for row in fastest],
                ":",
                marker="^",
                color=colour,
                label=f"{name}fastest teacher ({', '.join(dict.fromkeys(row['teacher_fastest'] for row in fastest))})",
            )
        student = [row for row in group if row.get("student_ms") is not None]
        if student:
            axis.plot(
                [row["n_atoms"] for row in student],
                [row["student_ms"] for row in student],
                "--",
                color=colour,
                label=f"{name}student",
            )
        for row in student:
            measured = row.get("force_rel_rmse") is not None
            axis.plot(row["n_atoms"], row["student_ms"], "s", color=colour, fillstyle="full" if measured else "none")
            axis.annotate(
                f"{100 * row['force_rel_rmse']:.1f} %" if measured else "accuracy not measured",
                (row["n_atoms"], row["student_ms"]),
                textcoords="offset points",
                xytext=(4, -10),
                fontsize=7,
                color=colour,
            )
    axis.set(
        xscale="log",
        yscale="log",
        xlabel="atoms",
        ylabel="time per call (ms)",
        title="student points: relative RMS force error there",
    )
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=8)
    return _save(figure, path)


def rdf_plot(r_A: np.ndarray, g_teacher: np.ndarray, g_student: np.ndarray, path: Path) -> Path:
    """Radial distribution functions of teacher and student MD, and their difference."""
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(6, 5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot(r_A, g_teacher, label="teacher")
    top.plot(r_A, g_student, "--", label="student")
    top.set(ylabel="g(r)")
    top.legend()
    bottom.plot(r_A, np.asarray(g_student) - np.asarray(g_teacher), color="k", lw=0.8)
    bottom.axhline(0.0, color="grey", lw=0.5)
    bottom.set(xlabel="r (Å)", ylabel="student - teacher")
    return _save(figure, path)


def target_rdf_plot(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """One target's g(r), teacher MD against the student's NVT, a panel per temperature with the
    integrated absolute difference and the teacher's own noise floor in its title. ``rows``: that
    target's `target_nvt_rows` rows with curves (``r_A``, ``g_teacher``, ``g_student``)."""
    rows = [row for row in rows if row.get("r_A")]
    if not rows:
        raise ValueError("target_rdf_plot: no row with g(r) curves")
    figure, axes = plt.subplots(
        2,
        len(rows),
        figsize=(5 * len(rows), 5),
        sharex=True,
        squeeze=False,
        gridspec_kw={"height_ratios": [3, 1]},
    )
    for column, row in enumerate(rows):
        top, bottom = axes[0, column], axes[1, column]
        r, teacher, student = (np.asarray(row[key]) for key in ("r_A", "g_teacher", "g_student"))
        source = row.get("rdf_reference") or "teacher MD"
        top.plot(r, teacher, label=f"teacher: {source} ({row.get('n_teacher_frames')} frames)")
        top.plot(r, student, "--", label=f"student NVT ({row.get('n_student_frames')} frames)")
        floor = row.get("rdf_teacher_halves_difference")
        top.set(
            ylabel=str(row.get("rdf_kind") or "g(r)"),
            title=f"{row['target']} {row['temperature_K']:g} K: ∫|Δg| dr = {row['rdf_integrated_abs_difference']:.3f}"
            + (f" (teacher's halves {floor:.3f})" if floor is not None else ""),
        )
        top.title.set_fontsize(9)
        top.legend(fontsize=8)
        bottom.plot(r, student - teacher, color="k", lw=0.8)
        bottom.axhline(0.0, color="grey", lw=0.5)
        bottom.set(xlabel="r (Å)", ylabel="student - teacher")
    return _save(figure, path)


def write_figures(
    out_dir: Path, test: LabeledArrays, predictions: dict[str, np.ndarray], metrics: dict[str, Any]
) -> dict[str, Path]:
    """The PNG files of the evaluate stage in ``out_dir``, by report key."""
    items = quantities(
        test, predictions["energy_eV"], predictions["forces_eV_per_A"], predictions.get("stress_eV_per_A3")
    )
    figures = {
        "parity": parity_plot(items, out_dir / "parity.png"),
        "errors": error_histograms(items, out_dir / "errors.png"),
    }
    if metrics.get("speed"):
        figures["speed"] = speed_plot(metrics["speed"], out_dir / "speed.png")
    rdf = (metrics.get("md_validation") or {}).get("rdf")
    if rdf:
        figures["rdf"] = rdf_plot(
            np.asarray(rdf["r_A"]), np.asarray(rdf["g_teacher"]), np.asarray(rdf["g_student"]), out_dir / "rdf.png"
        )
    by_target: dict[str, list] = {}
    for row in metrics.get("target_nvt") or []:
        if row.get("r_A"):
            by_target.setdefault(row["target"], []).append(row)
    for target, rows in by_target.items():
        figures[f"rdf_target_{target}"] = target_rdf_plot(rows, out_dir / f"rdf_target_{target}.png")
    return figures


def learning_curve_plot(history: dict, path: Path) -> None:
    """Validation force MAE (eV/Angstrom) and training loss against epoch, log scale."""
    epochs = [row["epoch"] for row in history["epochs"]]
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    axes[0].semilogy(epochs, [row["train_loss"] for row in history["epochs"]])
    axes[0].set(xlabel="epoch", ylabel="training loss")
    axes[1].semilogy(epochs, [row["val_force_mae_eV_per_A"] for row in history["epochs"]])
    axes[1].set(xlabel="epoch", ylabel="validation force MAE (eV/Å)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
