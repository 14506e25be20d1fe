"""The run's report: one self-contained HTML page (figures embedded as base64 PNG).

Sections: summary and gates, accuracy (overall, per target and temperature, per species, ensemble
yardstick), accuracy figures, speed (with the student's accuracy on each timed system), MD validation
(with the student's NVT on each target), teacher, data provenance, config. A section whose inputs
are missing says "not run" instead of disappearing; the target parts say "no targets" in a run
without targets. Everything comes from the run's ``metrics.json`` content (the evaluate stage's
measurements and the report stage's gates) plus the config, the teacher's identity, the provenance
and the figure files.
"""

from __future__ import annotations

import base64
import html
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from mlff_distill.evaluation.gates import TEST_SPLIT, gate_summary
from mlff_distill.evaluation.md_validation import EQUILIBRATION_FRACTION
from mlff_distill.evaluation.summary import NOT_MEASURED, has_accuracy

# (metrics key, label, unit shown, factor from the key's unit to the unit shown)
ACCURACY_ROWS = (
    ("energy_mae_per_atom_eV", "energy MAE per atom", "meV/atom", 1000.0),
    ("energy_rmse_per_atom_eV", "energy RMSE per atom", "meV/atom", 1000.0),
    ("force_mae_eV_per_A", "force MAE (components)", "meV/Å", 1000.0),
    ("force_rmse_eV_per_A", "force RMSE (components)", "meV/Å", 1000.0),
    ("force_rel_rmse", "relative RMS force error", "%", 100.0),
    ("force_cosine", "force cosine (magnitude-weighted)", "", 1.0),
    ("stress_mae_GPa", "stress MAE (periodic structures)", "GPa", 1.0),
    ("stress_rmse_GPa", "stress RMSE (periodic structures)", "GPa", 1.0),
    ("stress_rel_error", "relative RMS stress error", "%", 100.0),
)
NOT_RUN = '<p class="notrun">not run</p>'
NO_TARGETS = '<p class="na">no targets in this run</p>'
# (row key, column shown, factor) of the per-target accuracy table
TARGET_ACCURACY_COLUMNS = (
    ("target", "target", 1.0),
    ("temperature_K", "T (K)", 1.0),
    ("n_structures", "test structures", 1.0),
    ("force_rel_rmse", "relative RMS force error (%)", 100.0),
    ("force_mae_eV_per_A", "force MAE (meV/Å)", 1000.0),
    ("energy_mae_per_atom_eV", "energy MAE (meV/atom)", 1000.0),
    ("energy_mean_error_per_atom_eV", "energy offset, student - teacher (meV/atom)", 1000.0),
    ("stress_rel_error", "relative RMS stress error (%)", 100.0),
    ("ensemble_force_rel_rmse_of_the_mean", "teacher ensemble mean's own force uncertainty (%)", 100.0),
)
SPEED_COLUMNS = (
    ("target", "target", 1.0),
    ("system", "system", 1.0),
    ("n_atoms", "atoms", 1.0),
    ("teacher_ms", "labeling teacher (ms)", 1.0),
    ("teacher_fastest", "fastest teacher implementation", 1.0),
    ("teacher_fastest_ms", "fastest teacher (ms)", 1.0),
    ("student_ms", "student (ms)", 1.0),
    ("exported_student_ms", "exported student, AOTInductor (ms)", 1.0),
    ("exported_over_student", "exported / student time", 1.0),
    ("speedup", "speed-up over the fastest teacher", 1.0),
    ("speedup_over_labeling_teacher", "speed-up over the labeling teacher", 1.0),
    ("force_rel_rmse", "relative RMS force error on it (%)", 100.0),
    ("energy_mae_per_atom_eV", "energy MAE on it (meV/atom)", 1000.0),
    ("stress_rel_error", "relative RMS stress error on it (%)", 100.0),
    ("n_accuracy_frames", "frames of its accuracy", 1.0),
    ("timed_frame_force_rel_rmse", "timed frame: relative RMS force error (%)", 100.0),
    ("timed_frame_energy_mae_per_atom_eV", "timed frame: energy MAE (meV/atom)", 1000.0),
    ("all_cores_threads", "all-cores pass: threads", 1.0),
    ("all_cores_teacher_fastest_ms", "fastest teacher, all cores (ms)", 1.0),
    ("all_cores_student_ms_on_all_threads", "student on all threads (ms)", 1.0),
    ("all_cores_exported_student_ms_on_all_threads", "exported student on all threads (ms)", 1.0),
    ("all_cores_student_ms", "student, all cores: fastest form (ms)", 1.0),
    ("all_cores_student_fastest", "that form", 1.0),
    ("all_cores_speedup", "speed-up over the fastest teacher, all cores", 1.0),
    ("teacher_atom_steps_per_s", "teacher atom-steps/s", 1.0),
    ("student_atom_steps_per_s", "student atom-steps/s", 1.0),
    ("teacher_peak_MB", "teacher peak (MB)", 1.0),
    ("student_peak_MB", "student peak (MB)", 1.0),
    ("with_stress", "with stress", 1.0),
    ("member_ms", "one ensemble member, fastest (ms)", 1.0),
    ("member_fastest", "its fastest implementation", 1.0),
    ("student_speedup_over_member", "student's speed-up over it", 1.0),
    ("member_force_rel_rmse", "its relative RMS force error (%)", 100.0),
    ("member_energy_mae_per_atom_eV", "its energy MAE (meV/atom)", 1000.0),
    ("all_cores_member_ms", "one member, fastest, all cores (ms)", 1.0),
    ("all_cores_student_speedup_over_member", "student's speed-up over it, all cores", 1.0),
)
ROUND_COLUMNS = (
    ("round", "round", 1.0),
    ("force_rel_rmse", "relative RMS force error (%)", 100.0),
    ("force_mae_eV_per_A", "force MAE (eV/Å)", 1.0),
    ("energy_mae_per_atom_eV", "energy MAE (meV/atom)", 1000.0),
    ("energy_mean_error_per_atom_eV", "energy offset, student - teacher (meV/atom)", 1000.0),
    ("stress_rel_error", "relative RMS stress error (%)", 100.0),
)
TARGET_NVT_COLUMNS = (
    ("target", "target", 1.0),
    ("temperature_K", "T (K)", 1.0),
    ("n_atoms", "atoms", 1.0),
    ("time_ps", "time reached (ps)", 1.0),
    ("blew_up", "blew up", 1.0),
    ("reason", "why", 1.0),
    ("conserved_drift_eV_per_atom_per_ps", "drift of the conserved energy (eV/atom/ps)", 1.0),
    ("mean_temperature_K", "mean T (K)", 1.0),
    ("md_steps_per_s", "MD steps/s", 1.0),
    ("closest_contacts", "closest contacts, student / teacher (Å)", 1.0),
    ("rdf_integrated_abs_difference", "∫|g_student - g_teacher| dr (Å)", 1.0),
    ("rdf_teacher_halves_difference", "the same, teacher's halves (noise floor)", 1.0),
    ("rdf_student_halves_difference", "the same, student's halves", 1.0),
    ("n_student_frames", "student frames", 1.0),
    ("n_teacher_frames", "teacher frames", 1.0),
    ("rdf_reference", "teacher's g(r) from", 1.0),
    ("teacher_md_steps_per_s", "teacher MD steps/s", 1.0),
    ("rdf_kind", "g(r)", 1.0),
    ("rdf_not_run", "g(r) not compared", 1.0),
)
STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
h1 { border-bottom: 2px solid #444; } h2 { border-bottom: 1px solid #bbb; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; display: block; max-width: 100%; overflow-x: auto; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f0f0f0; }
.pass { color: #176b2c; font-weight: bold; } .fail { color: #b00020; font-weight: bold; }
.na, .notrun { color: #777; font-style: italic; }
.warning { background: #fff3cd; border: 1px solid #e0b100; padding: 0.5em 1em; font-weight: bold; }
pre { background: #f7f7f7; padding: 1em; overflow-x: auto; font-size: 0.85em; }
img { max-width: 100%; }
"""


def _number(value: Any, factor: float = 1.0) -> str:
    if value is None:
        return '<span class="na">n/a</span>'
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return html.escape(str(value))
    if isinstance(value, int):
        return f"{value:d}"
    if not math.isfinite(value):
        return html.escape(str(value))
    return f"{value * factor:.4g}"


def _cell(value: Any, factor: float = 1.0) -> str:
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    return f'<td class="num">{_number(value, factor)}</td>' if numeric else f"<td>{_number(value)}</td>"


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """An HTML table of ``rows`` (dicts), one column per key (those of the first row by default)."""
    if not rows:
        return '<p class="na">no rows</p>'
    columns = list(columns or rows[0].keys())
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(_cell(row.get(c)) for c in columns) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def labelled_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str, float]]) -> str:
    """An HTML table of ``rows`` with the ``(key, heading, factor)`` columns that any row has,
    values times their factor."""
    present = [column for column in columns if any(column[0] in row for row in rows)]
    head = "".join(f"<th>{html.escape(heading)}</th>" for _, heading, _ in present)
    body = "".join(
        "<tr>" + "".join(_cell(row.get(key), factor) for key, _, factor in present) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _image(path: Path | None, alt: str) -> str:
    if path is None or not Path(path).is_file():
        return NOT_RUN
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _gate_table(gates: Sequence[Mapping[str, Any]]) -> str:
    """Per gate: threshold, where it failed out of where it was checked, the worst value and its
    place, the verdict; then every check, folded."""
    rows = "".join(
        f"<tr><td>{html.escape(g['metric'])}</td>"
        f'<td class="num">{g["bound"]} {_number(g["threshold"])}</td>'
        f'<td class="num">{g["n_failed"]} of {g["n_places"]}</td>'
        f"{_cell(g['worst']['value'] if g['worst'] else None)}"
        f"<td>{html.escape(g['worst'].get('scope', TEST_SPLIT)) if g['worst'] else ''}</td>"
        f"<td>{_verdict(g['passed'])}</td></tr>"
        for g in gate_summary(gates)
    )
    checks = "".join(
        f"<tr><td>{html.escape(g['metric'])}</td><td>{html.escape(g.get('scope', TEST_SPLIT))}</td>"
        f'<td class="num">{g["bound"]} {_number(g["threshold"])}</td>'
        f"{_cell(g['value'])}<td>{_verdict(g['passed'])}</td></tr>"
        for g in gates
    )
    return (
        "<table><tr><th>gate</th><th>threshold</th><th>failed in</th><th>worst value</th><th>where</th>"
        f"<th>verdict</th></tr>{rows}</table>"
        f"<details><summary>every check ({len(gates)})</summary><table><tr><th>gate</th><th>where</th>"
        f"<th>threshold</th><th>value</th><th>verdict</th></tr>{checks}</table></details>"
    )


def _verdict(passed: bool | None) -> str:
    if passed is None:
        return '<span class="na">not evaluated</span>'
    return '<span class="pass">pass</span>' if passed else '<span class="fail">FAIL</span>'


def _speedup_range(rows: Sequence[Mapping[str, Any]]) -> str | None:
    """The speed table's speed-ups over the fastest teacher implementation as ranges (one thread,
    and all cores where timed) with the student's force error on those systems; systems without a
    measured accuracy are counted, not included. None without rows."""
    if not rows:
        return None
    measured = [row for row in rows if has_accuracy(row)]
    parts = []
    if measured:
        one = [row["speedup"] for row in measured]
        parts.append(f"{min(one):.1f}-{max(one):.1f}x on one thread")
        every = [row["all_cores_speedup"] for row in measured if row.get("all_cores_speedup") is not None]
        if len(every) == len(measured):
            parts.append(f"{min(every):.1f}-{max(every):.1f}x on all {measured[0]['all_cores_threads']} cores")
        errors = [100 * row["force_rel_rmse"] for row in measured]
        parts.append(f"force error there {min(errors):.1f}-{max(errors):.1f} % ({len(measured)} systems)")
    if len(measured) < len(rows):
        parts.append(f"{NOT_MEASURED} on {len(rows) - len(measured)} of {len(rows)} systems, not counted")
    return "; ".join(parts)


def _summary(metrics: Mapping[str, Any]) -> str:
    facts = [
        ("teacher", metrics.get("teacher")),
        ("student", metrics.get("student")),
        ("test structures", metrics.get("n_test")),
    ]
    if metrics.get("force_rel_rmse") is not None:
        facts.append(("relative RMS force error", f"{100 * metrics['force_rel_rmse']:.2f} %"))
    if metrics.get("energy_mae_per_atom_eV") is not None:
        facts.append(("energy MAE", f"{1000 * metrics['energy_mae_per_atom_eV']:.2f} meV/atom"))
    over_fastest = _speedup_range(metrics.get("speed") or [])
    if over_fastest:
        facts.append(("speed-up over the teacher at its fastest, timed systems", over_fastest))
    if metrics.get("speedup") is not None:
        facts.append(("speed-up over the labeling teacher, test structures", f"{metrics['speedup']:.1f}x"))
    rows = "".join(f"<tr><td>{html.escape(k)}</td>{_cell(v)}</tr>" for k, v in facts)
    gates = metrics.get("gates")
    if not gates:
        gate_html = '<p class="na">no gates configured</p>'
    else:
        overall = metrics.get("gates_passed")
        strict = " (strict: the run fails)" if metrics.get("strict") and overall is False else ""
        gate_html = (
            "<p>Each gate is checked wherever it applies: errors on the test split, on each target and "
            "temperature and on each timed system; the speed-up on each timed system, on one thread "
            "and on all cores; blow-ups and g(r) in the student's NVT of the targets.</p>"
            f"{_gate_table(gates)}<p>All gates: {_verdict(overall)}{strict}</p>"
        )
    return f"<table>{rows}</table><h3>Acceptance gates</h3>{gate_html}"


def _training_fit(fit: Mapping[str, Any]) -> str:
    """A paragraph on what limits the student (`metrics.training_fit`)."""
    reading = (
        "it fits the frames it learned from hardly better than new ones, so more of the same data would "
        'barely lower its error: a more expressive student (README, "Student size") is what could'
        if fit["limited_by"] == "the student"
        else "it fits the frames it learned from clearly better than new ones, so more teacher MD of the "
        "targets (target.md) or more on-policy rounds should lower its test error"
    )
    return (
        f"<p>What limits the student: on the {fit['n_train']} teacher-MD frames of the targets in the "
        f"training split its relative RMS force error is {100 * fit['train_force_rel_rmse']:.2f} %, on the "
        f"{fit['n_test']} test frames of the same targets {100 * fit['test_force_rel_rmse']:.2f} % "
        f"({fit['test_over_train']:.2f} times as much): {reading}.</p>"
    )


def _accuracy(metrics: Mapping[str, Any]) -> str:
    spread = metrics.get("ensemble_spread") or {}
    body = "".join(
        f"<tr><td>{label}</td><td>{unit}</td>{_cell(metrics.get(key), factor)}{_cell(spread.get(key), factor)}</tr>"
        for key, label, unit, factor in ACCURACY_ROWS
    )
    overall = (
        "<table><tr><th>metric</th><th>unit</th><th>student vs teacher</th>"
        f"<th>teacher ensemble spread</th></tr>{body}</table>"
    )
    of_the_mean = spread.get("force_rel_rmse_of_the_mean")
    note = (
        "<p>The ensemble spread is the standard deviation over the teacher's members, in the "
        "place of an error: how much the teacher's own members disagree, a scale against "
        "which to read the student's error.</p>"
        + (
            f"<p>The labels are the members' mean; its own uncertainty in force, the spread over the "
            f"square root of the number of members, is {100 * of_the_mean:.1f} % (relative RMS) on these "
            "test frames. A student much closer than that to the labels would be fitting what the "
            "members do not agree on.</p>"
            if of_the_mean is not None
            else ""
        )
        if spread
        else '<p class="na">Ensemble yardstick: not available (single-model teacher, or no spread stored).</p>'
    )
    if metrics.get("training_fit"):
        note += _training_fit(metrics["training_fit"])
    if metrics.get("n_stress") is None:
        note += '<p class="na">Stress: no periodic structures in the test split.</p>'
    rotation = metrics.get("teacher_rotation")
    if rotation:
        note += (
            f"<p>Teacher symmetry: turned by a random rotation, {rotation['n_structures']} test "
            f"structures got forces that differ from the turned originals by "
            f"{100 * rotation['force_rel_change']:.3g} % (relative RMS). A rotation-invariant "
            "student, such as this one, cannot get below about half of that against this "
            f"teacher: {100 * rotation['invariant_student_floor']:.3g} %.</p>"
        )
    targets = metrics.get("accuracy_by_target")
    per_target = labelled_table(targets, TARGET_ACCURACY_COLUMNS) if targets else NO_TARGETS
    species = metrics.get("per_species")
    per_species = table([{"element": z, **v} for z, v in species.items()]) if species else NOT_RUN
    kinds = metrics.get("per_kind")
    per_kind = table([{"kind of structure": k, **v} for k, v in kinds.items()]) if kinds else NOT_RUN
    worst = metrics.get("worst_structures")
    worst_part = (
        f"<p>These {len(worst['structures'])} test structures carry "
        f"{100 * worst['share_of_squared_error']:.0f} % of the summed squared force error; the "
        f"relative RMS force error of all the others is {100 * worst['force_rel_rmse_of_the_others']:.2f} %. "
        "The sample index is the frame's position in sample/structures.extxyz.</p>" + table(worst["structures"])
        if worst
        else NOT_RUN
    )
    calibration = metrics.get("reference_calibration")
    if calibration:
        shifts = ", ".join(f"{symbol} {1e3 * value:+.1f}" for symbol, value in calibration["shift_eV"].items())
        note += (
            "<p>Reference energies calibrated on the targets' teacher MD (train.calibrate_on_target_md): "
            f"shifted by {shifts} meV per atom, which took the student's energy MAE on the "
            f"{calibration['n_target_md']} training MD frames of the targets from "
            f"{1e3 * calibration['target_md_energy_mae_per_atom_eV_before']:.2f} to "
            f"{1e3 * calibration['target_md_energy_mae_per_atom_eV_after']:.2f} meV/atom"
            + (
                f" and that of the other {calibration['n_other']} training structures from "
                f"{1e3 * calibration['other_energy_mae_per_atom_eV_before']:.2f} to "
                f"{1e3 * calibration['other_energy_mae_per_atom_eV_after']:.2f} meV/atom"
                if calibration.get("n_other")
                else ""
            )
            + ". Forces, stress and energy differences at fixed composition are unchanged.</p>"
        )
    rounds = metrics.get("rounds") or []
    by_round = (
        "<h3>Each round's student on the same test structures</h3>"
        "<p>Round 0 is trained on the sampled structures; each later round adds the teacher's labels "
        "of frames from the previous student's own MD.</p>" + labelled_table(rounds, ROUND_COLUMNS)
        if len(rounds) > 1
        else ""
    )
    return (
        f"{overall}{note}{by_round}<h3>Per target and temperature</h3>{per_target}"
        f"<h3>Forces per element</h3>{per_species}"
        f"<h3>Forces per kind of structure</h3>{per_kind}"
        f"<h3>Test structures with the largest force errors</h3>{worst_part}"
    )


def _speed(metrics: Mapping[str, Any], figures: Mapping[str, Path]) -> str:
    parts = []
    if metrics.get("teacher_s_per_structure") is not None:
        parts.append(
            "<h3>Test structures, one per call</h3>"
            + table(
                [
                    {
                        "structures timed": metrics.get("n_timed"),
                        "teacher (ms)": 1000 * metrics["teacher_s_per_structure"],
                        "student (ms)": 1000 * metrics["student_s_per_structure"],
                        "speed-up over the labeling teacher": metrics.get("speedup"),
                        "student inference path": metrics.get("inference_path"),
                    }
                ]
            )
        )
    parts.append("<h3>Systems of several sizes</h3>")
    rows = metrics.get("speed")
    if rows:
        others = sorted({name for row in rows for name in row.get("teacher_implementations_force_rel_diff") or {}})
        columns = SPEED_COLUMNS[:4]
        for name in others:
            columns += ((f"ms:{name}", f"{name} (ms)", 1.0), (f"diff:{name}", f"{name}: force difference (%)", 100.0))
        labeling = (metrics.get("teacher_implementations") or {}).get("labeling")
        shown = [
            {
                **(row if has_accuracy(row) else {**row, "speedup": NOT_MEASURED, "all_cores_speedup": NOT_MEASURED}),
                **({"teacher_ms": _implementation_ms(row, labeling)} if labeling else {}),
                **{f"ms:{name}": _implementation_ms(row, name) for name in others},
                **{
                    f"diff:{name}": (row.get("teacher_implementations_force_rel_diff") or {}).get(name)
                    for name in others
                },
            }
            for row in rows
        ]
        missing = (metrics.get("teacher_implementations") or {}).get("missing")
        parts.append(
            "<p>Each row's speed-up is over the fastest implementation of the teacher timed here (every "
            "implementation's time is shown, with its relative RMS force difference from the labeling "
            "one on that system), and comes with the student's error against the teacher on that same "
            "system: for a target, over the frames of the teacher's MD of it counted in &ldquo;frames "
            "of its accuracy&rdquo; (the timed one first; a larger size is the smallest repeated, with "
            "the same errors per atom), the timed frame's own beside them; otherwise on the timed "
            f"structure. A row without it shows &ldquo;{NOT_MEASURED}&rdquo;. "
            "The all-cores columns time every implementation again on all the job's threads and count "
            "each at the faster of its two passes (one thread or all), as a user given all the cores "
            "would run it; the exported student is the AOTInductor package of the tune stage. An "
            "implementation that was several times slower than the fastest on a target's system is "
            "not timed on its larger ones (evaluate.speed.skip_slower_than): its cost grows with size "
            "at least as fast.</p>"
            + (f"<p><b>Not timed</b>: {html.escape(missing)}.</p>" if missing else "")
            + labelled_table(shown, columns + SPEED_COLUMNS[4:])
            + _image(figures.get("speed"), "time per call against atoms")
        )
    else:
        parts.append(NOT_RUN)
    member = metrics.get("ensemble_member")
    if member:
        parts.append(
            "<h3>One member of the ensemble</h3><p>The alternative to a student that an ensemble "
            "teacher offers: one of its members, against the ensemble's labels on the same test "
            "structures (and on each timed system, in the columns above).</p>"
            + table(
                [
                    {
                        "member": member["member"],
                        "its relative RMS force error (%)": 100 * member["force_rel_rmse"],
                        "the student's (%)": 100 * metrics["force_rel_rmse"],
                        "its energy MAE (meV/atom)": 1000 * member["energy_mae_per_atom_eV"],
                        "the student's (meV/atom)": 1000 * metrics["energy_mae_per_atom_eV"],
                        "student more accurate": member["student_more_accurate"],
                        "student faster at every size": member["student_faster_at_every_size"],
                    }
                ]
            )
        )
    return "".join(parts)


def _implementation_ms(row: Mapping[str, Any], name: str) -> float | str | None:
    """A speed row's ms per call of the teacher's implementation ``name``, or why it was not
    timed on that system (`mlff_distill.evaluation.speed.compare_speed`'s ``skip_slower_than``)."""
    ms = (row.get("teacher_implementations_ms") or {}).get(name)
    note = (row.get("teacher_implementations_not_timed") or {}).get(name)
    if ms is None and note:
        return f"not timed: {note['times_fastest']:.2f}x the fastest at {note['at_n_atoms']} atoms"
    return ms


def _md(metrics: Mapping[str, Any], figures: Mapping[str, Path]) -> str:
    md = metrics.get("md_validation")
    rows = metrics.get("target_nvt")
    if not md and not rows:
        return NOT_RUN
    parts = []
    if md:
        parts += [
            "<h3>NVE energy drift</h3>",
            table(md["drift"]) if md.get("drift") else NOT_RUN,
            "<h3>NVT radial distribution function</h3>",
        ]
        rdf = md.get("rdf")
        if rdf:
            scalars = {k: v for k, v in rdf.items() if not isinstance(v, (list, tuple))}
            parts.append(table([scalars]) if scalars else "")
            parts.append(_image(figures.get("rdf"), "radial distribution functions"))
        else:
            parts.append(NOT_RUN)
    parts.append("<h3>The student's NVT on each target</h3>")
    if rows:
        parts.append(
            "<p>Bussi thermostat; the drift is that of its conserved quantity (potential plus "
            "kinetic energy minus the energy the thermostat put in). The g(r) counts pairs of atoms "
            "in different molecules where the structures say which molecule each atom is in, "
            "smoothed by a 0.1 Å Gaussian; the teacher's halves (two halves of its own MD frames "
            "against each other) give the noise floor of that difference, and the student's "
            "halves that of its own side. The teacher's g(r) comes from its own NVT from the same "
            "start where <code>evaluate.md.teacher_nvt_ps</code> is set, else from the sample "
            "stage's teacher-MD frames of that target. Those start a fraction of a picosecond "
            "after a box is packed, before a liquid's structure has settled (water's "
            "hydrogen-bond peak grows over the teacher's first 2 ps), so a difference well above "
            "the halves' can be the reference's: a <code>teacher_nvt_ps</code> of several ps "
            f"(its first {EQUILIBRATION_FRACTION:.0%} left out) gives an equilibrated one.</p>"
            + labelled_table(rows, TARGET_NVT_COLUMNS)
        )
        for key in sorted(k for k in figures if k.startswith("rdf_target_")):
            parts.append(f"<h4>{html.escape(key.removeprefix('rdf_target_'))}</h4>")
            parts.append(_image(figures[key], f"g(r) of {key.removeprefix('rdf_target_')}"))
    else:
        parts.append(NO_TARGETS)
    return "".join(parts)


def _teacher(teacher: Mapping[str, Any] | None) -> str:
    if not teacher:
        return NOT_RUN
    warning = (
        ""
        if teacher.get("trained", True)
        else '<p class="warning">untrained teacher: random weights; its labels mean nothing physically.</p>'
    )
    keys = (
        "label",
        "name",
        "kind",
        "source",
        "weights_sha256",
        "members",
        "cutoff_A",
        "species",
        "conservative",
        "trained",
    )
    rows = "".join(f"<tr><td>{k}</td>{_cell(teacher.get(k))}</tr>" for k in keys if k in teacher)
    return f"{warning}<table>{rows}</table>"


def _provenance(provenance: Mapping[str, Any] | None) -> str:
    if not provenance:
        return NOT_RUN
    parts = [
        "<table>"
        + "".join(
            f"<tr><td>{html.escape(k)}</td>{_cell(v)}</tr>" for k, v in provenance.items() if not isinstance(v, dict)
        )
        + "</table>"
    ]
    for key, counts in provenance.items():
        if isinstance(counts, dict):
            parts.append(f"<h3>{html.escape(key)}</h3>" + table([counts]))
    return "".join(parts)


def build_report(
    path: Path,
    metrics: Mapping[str, Any],
    config: Mapping[str, Any],
    teacher: Mapping[str, Any] | None,
    provenance: Mapping[str, Any] | None,
    figures: Mapping[str, Path],
) -> Path:
    """Write the report to ``path`` and return it.

    ``metrics``: the content of metrics.json (its optional ``gates``, ``per_species``,
    ``ensemble_spread``, ``speed`` rows and ``md_validation`` fill their sections);
    ``teacher``: `TeacherIdentity.as_dict()`; ``provenance``: flat facts plus dicts of counts;
    ``figures``: PNG paths under the keys ``parity``, ``errors``, ``speed``, ``rdf`` and
    ``rdf_target_<target>``. The target parts come from ``accuracy_by_target`` (rows of
    `accuracy_by_target`) and ``target_nvt`` (rows of `target_nvt_rows`).
    """
    run_name = str(config.get("run_name", ""))
    config_yaml = yaml.safe_dump(dict(config), sort_keys=False, default_flow_style=None, width=100)
    sections = [
        ("Summary", _summary(metrics)),
        ("Accuracy on the test split", _accuracy(metrics)),
        (
            "Accuracy figures",
            "<h3>Parity</h3>"
            + _image(figures.get("parity"), "parity")
            + "<h3>Error histograms</h3>"
            + _image(figures.get("errors"), "error histograms"),
        ),
        ("Speed", _speed(metrics, figures)),
        ("MD validation", _md(metrics, figures)),
        ("Teacher", _teacher(teacher)),
        ("Data provenance", _provenance(provenance)),
        ("Config", f"<pre>{html.escape(config_yaml)}</pre>"),
    ]
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = "".join(f'<h2 id="{title.lower().replace(" ", "-")}">{title}</h2>{content}' for title, content in sections)
    page = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>mlff-distill report: {html.escape(run_name)}</title><style>{STYLE}</style></head>"
        f"<body><h1>mlff-distill report: {html.escape(run_name)}</h1>"
        f"<p>Written {stamp}.</p>{body}</body></html>"
    )
    Path(path).write_text(page, encoding="utf-8")
    return Path(path)
