"""Teacher against student speed on systems of several sizes built from the run's own seeds.

`mlff_distill.sampling.boxes.build_timing_systems` makes periodic systems of about the requested
numbers of atoms, `time_calls` times one ASE calculator on one system (median latency in ms per energy + forces
(+ stress for periodic cells) call, neighbour list included; throughput in atom-steps per second;
peak memory in MB), and `compare_speed` gives one row per system for a teacher and a student, with the student's error
against the teacher on that system; the teacher's other implementations (the same model run by
other code, `mlff_distill.teachers.teacher_implementations`) are timed beside it and the
student's speed-up is counted over the fastest. `speed_rows` is the evaluate stage's step: `compare_speed`
with the stage's settings, on the targets at several sizes or on systems built from the run's seeds.
"""

from __future__ import annotations

import contextlib
import logging
import math
import resource
import statistics
import time
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import voigt_6_to_full_3x3_stress

from mlff_distill.data import LabeledArrays
from mlff_distill.evaluation.metrics import energy_force_errors, stress_errors
from mlff_distill.settings import MeasurementSettings
from mlff_distill.teachers import Teacher, TeacherCalculator, TeacherImplementations

logger = logging.getLogger(__name__)

# The student's forms in the all-cores pass: the model as the first pass runs it (`StudentCalculator`,
# on the tune stage's inference path) and its AOTInductor package (`mlff_distill.student.aoti`).
STUDENT, EXPORTED = "student", "exported package"
# A row's accuracy columns, the student's on the system against the teacher (`student_accuracy`).
ACCURACY_COLUMNS = ("force_rel_rmse", "force_mae_eV_per_A", "energy_mae_per_atom_eV", "stress_rel_error")


def time_calls(
    calculator: Calculator,
    atoms: Atoms,
    repeats: int,
    warmup: int = 2,
    stress: bool = True,
    min_seconds: float = 1.0,
    max_seconds: float = 3.0,
) -> dict:
    """Time ``calculator`` on ``atoms``: ``warmup`` untimed calls, then timed ones, at least
    ``repeats`` and until they took ``min_seconds`` (s) in all, so that fast calls (a few ms) get
    a median over hundreds of calls; but no more once ``max_seconds`` (s) have been timed, so that
    a teacher taking ``max_seconds`` or more per call on thousands of atoms is timed once, not ``repeats`` times
    (a call that long varies by a few percent, and the evaluate stage times several
    implementations of it at each size: at 2,268 atoms FeNNol's all-pairs path took 7.7 s a
    call). The warm-up likewise ends early, after one call at least, once it has taken
    ``max_seconds``: a call that long is warm after one.

    Each call computes energy and forces, and stress when ``stress`` is asked, ``atoms`` is
    periodic in all three directions and the calculator implements it, from scratch (neighbour
    list included).

    Returns ``median_ms`` (ms per call), ``n_calls`` (timed), ``atom_steps_per_s`` (atoms / median seconds),
    ``with_stress``, ``peak_MB`` (the CUDA peak allocated by torch during the calls when they
    allocated on the GPU, else the rise of this process's peak resident memory over its resident
    memory before the calls) and
    both of those under ``rss_peak_MB`` and ``cuda_peak_MB`` (None without CUDA). The warm-up
    calls count (compilation, caches); memory the process already holds and reuses does not,
    so a model run after a bigger one may show less than it would alone. JAX teachers on a GPU
    allocate outside torch: their ``cuda_peak_MB`` is not measured here.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    atoms = atoms.copy()
    with_stress = stress and bool(atoms.pbc.all()) and "stress" in calculator.implemented_properties
    properties = ["energy", "forces"] + (["stress"] if with_stress else [])
    cuda = torch.cuda.is_available()
    rss_before_kB = _reset_peak_rss_kB()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        cuda_before = torch.cuda.memory_allocated()
    warmup_start = time.perf_counter()
    for _ in range(warmup):
        calculator.calculate(atoms, properties, all_changes)
        if time.perf_counter() - warmup_start >= max_seconds:
            break
    seconds: list[float] = []
    while not seconds or ((len(seconds) < repeats or sum(seconds) < min_seconds) and sum(seconds) < max_seconds):
        start = time.perf_counter()
        calculator.calculate(atoms, properties, all_changes)
        if cuda:
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    rss_peak_MB = max(_peak_rss_kB() - rss_before_kB, 0) / 1024
    cuda_peak_MB = (torch.cuda.max_memory_allocated() - cuda_before) / 2**20 if cuda else None
    median_s = statistics.median(seconds)
    return {
        "n_atoms": len(atoms),
        "median_ms": 1e3 * median_s,
        "n_calls": len(seconds),
        "atom_steps_per_s": len(atoms) / median_s,
        "with_stress": with_stress,
        "peak_MB": cuda_peak_MB if cuda_peak_MB else rss_peak_MB,
        "rss_peak_MB": rss_peak_MB,
        "cuda_peak_MB": cuda_peak_MB,
    }


def _reset_peak_rss_kB() -> int:
    """Reset this process's peak resident memory to its current value (Linux ``clear_refs``)
    and return it in kB. Where that cannot be done, the peak so far is returned, and a later
    rise measures only what goes above the earlier peak."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass
    return _peak_rss_kB()


def _peak_rss_kB() -> int:
    """This process's peak resident memory in kB: ``VmHWM`` of ``/proc/self/status`` (the value
    ``clear_refs`` resets), else ``getrusage``'s ``ru_maxrss``, which also keeps the peaks of exited
    threads and so cannot be reset."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def compare_speed(
    teacher_calc: Calculator,
    student_calc: Calculator,
    systems: Sequence[Atoms],
    repeats: int,
    warmup: int = 2,
    members: Mapping[str, Calculator] | None = None,
    teacher_name: str = "teacher",
    other_teachers: Mapping[str, Calculator] | None = None,
    all_cores_student: Calculator | None = None,
    all_cores_threads: int = 1,
    exported_student: Calculator | None = None,
    all_cores_exported_student: Calculator | None = None,
    skip_slower_than: float | None = None,
) -> list[dict]:
    """One row per system: ``system`` (its ``info["system"]``, else its formula), ``target`` (its
    ``info["target"]``, where it has one), ``n_atoms``, ``teacher_ms``/``student_ms`` (median ms
    per call; ``teacher_ms`` is ``teacher_calc``'s, the implementation that labels),
    ``*_atom_steps_per_s``, ``*_peak_MB``, ``with_stress``, and the student's accuracy on that same
    system against the teacher: ``force_rel_rmse``, ``force_mae_eV_per_A``,
    ``energy_mae_per_atom_eV`` (and ``stress_rel_error`` when timed with stress), from the results
    of each one's last timed call (no extra call: a teacher call on thousands of atoms takes
    seconds). A speed-up means something only beside that accuracy. (The evaluate stage measures a
    target's over several frames of it and puts those in these columns:
    `mlff_distill.evaluation.targets.with_frames_accuracy`.)

    ``other_teachers``: other implementations of the same teacher by name (the ANI-1x ensemble in
    torchani's cell list, `mlff_distill.teachers.torchani_runtime`), timed after it on each system.
    ``teacher_implementations_ms`` gives every timed implementation's time (``teacher_calc`` under
    ``teacher_name``), ``teacher_fastest`` and ``teacher_fastest_ms`` the fastest, ``speedup`` the
    student's speed-up over the fastest (``teacher_fastest_ms / student_ms``) and
    ``speedup_over_labeling_teacher`` over ``teacher_calc``; ``teacher_implementations_force_rel_diff``
    the relative RMS difference of each other implementation's forces from ``teacher_calc``'s on
    that system (the same model, so rounding: what shows that it is the same).

    With ``skip_slower_than`` (a factor, at least 1), an implementation that took more than that
    many times the fastest one's time on a system is not timed on the larger systems of the same
    target (``info["target"]``, else the same system name): the implementations timed here grow
    in cost with the size at least as fast as the fastest one (FeNNol's all-pairs path as the
    square of it; docs/measurements.md), so it would not be the fastest there, and on thousands of
    atoms its calls take seconds each. Such a row lists it under ``teacher_implementations_not_timed``
    (``times_fastest``, the factor, ``fastest`` and ``at_n_atoms``, where it was measured); where
    that is ``teacher_calc``, its columns (``teacher_ms``, ``speedup_over_labeling_teacher``,
    ``teacher_atom_steps_per_s``, ``teacher_peak_MB``) are None and the student's errors are taken
    against the first implementation timed (the same model). None: every one on every system.

    With ``members`` (one member of an ensemble teacher in the implementations to time it in, by
    name: `speed_rows` gives it in its fastest one), each is timed after the teacher
    on each system: ``member_ms`` (the fastest of them, named by ``member_fastest``; all in
    ``member_implementations_ms``), ``student_speedup_over_member`` (member_ms / student_ms) and
    the first one's errors against the teacher there (``member_force_rel_rmse``,
    ``member_energy_mae_per_atom_eV``, ...).

    With ``exported_student`` (the student's AOTInductor package, `mlff_distill.student.aoti`), it
    is timed right after the student on each system, and again after the student's second pass:
    ``exported_student_ms`` (the faster of the two, as for the student; both in
    ``exported_student_passes_ms``), ``exported_over_student`` (its time over the student's) and
    ``exported_force_rel_diff`` (the relative RMS difference of its forces from the student's: the
    same model, so rounding).

    With ``all_cores_student`` (the same student on ``all_cores_threads`` torch threads), every
    system is timed a second time on all cores: that student (and ``all_cores_exported_student``,
    the exported package on as many threads), then every teacher (and member) implementation under
    ``torch.set_num_threads(all_cores_threads)``, each counted at the faster of its two passes, the
    student at the fastest of its forms: the ``all_cores_*`` columns of `_all_cores_columns`. JAX
    teachers run on XLA's own thread pool, sized to the machine, in both passes: they are not timed again
    (`uses_torch_threads`), their first pass counts. The columns above are the first
    pass, on the threads the process has (one in the evaluate stage).

    All compute the same properties: stress (periodic systems) only when teacher and student
    implement it. The student is timed on every system first, then the teachers: so the
    student's peak memory is not hidden under the teacher's where the peak cannot be reset (see
    `time_calls`), and its millisecond calls are not timed only right after the teacher's, which
    leave the caches and the CPU's frequency disturbed (README, "Measured"). It is timed again on
    each system after the teachers, and ``student_ms`` is the faster of the two passes
    (``student_passes_ms``, first pass first): each pass times it for about a second, which a slow
    spell of a shared machine can fill, where a teacher's calls are timed for up to ten."""
    stress = all("stress" in calc.implemented_properties for calc in (teacher_calc, student_calc))
    names = [atoms.info.get("system", atoms.get_chemical_formula()) for atoms in systems]
    students, student_results, exported = [], [], []
    for atoms, system in zip(systems, names):
        logger.info("speed: the student on %s (%d atoms)", system, len(atoms))
        students.append(time_calls(student_calc, atoms, repeats, warmup, stress))
        student_results.append(dict(student_calc.results))
        if exported_student is not None:
            timing = time_calls(exported_student, atoms, repeats, warmup, stress)
            exported.append(
                {
                    "exported_student_passes_ms": [timing["median_ms"]],
                    "exported_force_rel_diff": student_accuracy(
                        atoms, student_results[-1], dict(exported_student.results)
                    )["force_rel_rmse"],
                }
            )
    implementations = {teacher_name: teacher_calc, **(other_teachers or {})}
    too_slow: dict[str, dict[str, dict]] = {}  # by target: the implementations not timed at larger sizes
    rows = []
    for index, (atoms, system, student, student_result) in enumerate(zip(systems, names, students, student_results)):
        logger.info("speed: the teacher on %s (%d atoms), system %d of %d", system, len(atoms), index + 1, len(systems))
        group = atoms.info.get("target", system)
        not_timed = {name: note for name, note in too_slow.get(group, {}).items() if note["at_n_atoms"] < len(atoms)}
        timings, results = {}, {}
        for name, calc in implementations.items():
            if name not in not_timed:
                timings[name] = time_calls(calc, atoms, repeats, warmup, stress)
                results[name] = dict(calc.results)
        teacher = timings.get(teacher_name)
        teacher_results = next(iter(results.values()))
        timed = {name: timing["median_ms"] for name, timing in timings.items()}
        labeling = results.get(teacher_name)
        differences = {
            name: student_accuracy(atoms, labeling, found)["force_rel_rmse"]
            for name, found in results.items()
            if labeling is not None and name != teacher_name
        }
        # the student again, after the teachers: its short window of the first pass may have met a slow spell
        student_passes_ms = [
            student["median_ms"],
            time_calls(student_calc, atoms, repeats, warmup, stress)["median_ms"],
        ]
        student_ms = min(student_passes_ms)
        if exported:
            passes = exported[index]["exported_student_passes_ms"]
            passes.append(time_calls(exported_student, atoms, repeats, warmup, stress)["median_ms"])
            exported[index]["exported_student_ms"] = min(passes)
        fastest = min(timed, key=timed.get)
        if skip_slower_than is not None:
            for name, ms in timed.items():
                if ms > skip_slower_than * timed[fastest]:
                    too_slow.setdefault(group, {}).setdefault(
                        name, {"times_fastest": ms / timed[fastest], "fastest": fastest, "at_n_atoms": len(atoms)}
                    )
        target = {"target": atoms.info["target"]} if "target" in atoms.info else {}
        rows.append(
            {
                "system": system,
                **target,
                "n_atoms": len(atoms),
                "teacher_ms": teacher["median_ms"] if teacher else None,
                "student_ms": student_ms,
                "student_passes_ms": student_passes_ms,
                "teacher_implementations_ms": timed,
                "teacher_fastest": fastest,
                "teacher_fastest_ms": timed[fastest],
                "speedup": timed[fastest] / student_ms,
                "speedup_over_labeling_teacher": teacher["median_ms"] / student_ms if teacher else None,
                "teacher_implementations_force_rel_diff": differences,
                "teacher_implementations_not_timed": not_timed,
                "teacher_atom_steps_per_s": teacher["atom_steps_per_s"] if teacher else None,
                "student_atom_steps_per_s": 1e3 * len(atoms) / student_ms,
                "teacher_peak_MB": teacher["peak_MB"] if teacher else None,
                "student_peak_MB": student["peak_MB"],
                "with_stress": timings[fastest]["with_stress"],
                **student_accuracy(atoms, teacher_results, student_result),
                **(
                    {**exported[index], "exported_over_student": exported[index]["exported_student_ms"] / student_ms}
                    if exported
                    else {}
                ),
            }
        )
        if members:
            member = _member_columns(atoms, teacher_results, members, repeats, warmup, stress)
            rows[-1].update(member, student_speedup_over_member=member["member_ms"] / student_ms)
        if all_cores_student is not None:
            teachers = {name: calc for name, calc in implementations.items() if name in timed}
            forms = {STUDENT: all_cores_student}
            if all_cores_exported_student is not None:
                forms[EXPORTED] = all_cores_exported_student
            timing = (all_cores_threads, repeats, warmup, stress)
            rows[-1].update(_all_cores_columns(atoms, forms, teachers, members or {}, rows[-1], *timing))
        logger.info(
            "speed: %s (%d atoms): student %.2f ms, teacher at its fastest (%s) %.1f ms, %.1fx",
            system,
            len(atoms),
            student_ms,
            fastest,
            timed[fastest],
            rows[-1]["speedup"],
        )
    return rows


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with ``threads`` torch intra-op threads, restoring the setting after it."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _all_cores_columns(
    atoms: Atoms,
    students: Mapping[str, Calculator],
    teachers: Mapping[str, Calculator],
    members: Mapping[str, Calculator],
    first_pass: dict,
    threads: int,
    repeats: int,
    warmup: int,
    stress: bool,
) -> dict:
    """`compare_speed`'s second pass on one system, every calculator on ``threads`` threads, each
    implementation then counted at the faster of its two passes (one thread or all: what a user
    given all the cores would run). ``students``: the student's forms on ``threads`` threads,
    ``STUDENT`` (the student as the first pass runs it) and, where there is one, ``EXPORTED`` (its
    AOTInductor package). ``first_pass``: the row of the first pass.

    Columns: ``all_cores_threads``; ``all_cores_student_ms_on_all_threads`` (the student on
    ``threads`` threads), ``all_cores_exported_student_ms_on_all_threads`` (the package, where
    timed), ``all_cores_student_ms`` (the fastest of those and of the two forms' one-thread times),
    ``all_cores_student_fastest`` (which of them, e.g. ``"exported package, 2 threads"``);
    ``all_cores_teacher_implementations_ms`` (each at its faster pass),
    ``all_cores_teacher_fastest(_ms)``, ``all_cores_speedup`` (over that fastest) and, with
    ``members``, ``all_cores_member_ms`` (their fastest) and ``all_cores_student_speedup_over_member``."""
    on_all_threads = {
        name: time_calls(calc, atoms, repeats, warmup, stress)["median_ms"] for name, calc in students.items()
    }
    student_forms = {f"{STUDENT}, 1 thread": first_pass["student_ms"]}
    if first_pass.get("exported_student_ms") is not None:
        student_forms[f"{EXPORTED}, 1 thread"] = first_pass["exported_student_ms"]
    student_forms.update({f"{name}, {threads} threads": ms for name, ms in on_all_threads.items()})
    student_fastest = min(student_forms, key=student_forms.get)
    with torch_threads(threads):
        timed = {name: _timed_again(calc, atoms, repeats, warmup, stress) for name, calc in teachers.items()}
        member_timed = {name: _timed_again(calc, atoms, repeats, warmup, stress) for name, calc in members.items()}
    timed = {name: min(ms, first_pass["teacher_implementations_ms"][name]) for name, ms in timed.items()}
    member_timed = {name: min(ms, first_pass["member_implementations_ms"][name]) for name, ms in member_timed.items()}
    student_ms = student_forms[student_fastest]
    fastest = min(timed, key=timed.get)
    columns = {
        "all_cores_threads": threads,
        "all_cores_student_ms_on_all_threads": on_all_threads[STUDENT],
        **(
            {"all_cores_exported_student_ms_on_all_threads": on_all_threads[EXPORTED]}
            if EXPORTED in on_all_threads
            else {}
        ),
        "all_cores_student_ms": student_ms,
        "all_cores_student_fastest": student_fastest,
        "all_cores_teacher_implementations_ms": timed,
        "all_cores_teacher_fastest": fastest,
        "all_cores_teacher_fastest_ms": timed[fastest],
        "all_cores_speedup": timed[fastest] / student_ms,
    }
    if member_timed:
        member_ms = min(member_timed.values())
        columns.update(all_cores_member_ms=member_ms, all_cores_student_speedup_over_member=member_ms / student_ms)
    return columns


def _timed_again(calc: Calculator, atoms: Atoms, repeats: int, warmup: int, stress: bool) -> float:
    """The all-cores pass's median ms of ``calc``; infinity (its first pass counts) for a calculator
    whose ``uses_torch_threads`` is False (JAX runs on XLA's own thread pool in both passes)."""
    if not uses_torch_threads(calc):
        return math.inf
    return time_calls(calc, atoms, repeats, warmup, stress)["median_ms"]


def uses_torch_threads(calc: Calculator) -> bool:
    """Whether torch's intra-op thread count sets how many cores ``calc`` computes on: its
    ``uses_torch_threads``, or its teacher's (`TeacherCalculator`); True when neither says."""
    if hasattr(calc, "uses_torch_threads"):
        return bool(calc.uses_torch_threads)
    return bool(getattr(getattr(calc, "teacher", None), "uses_torch_threads", True))


def _member_columns(
    atoms: Atoms,
    teacher_results: dict,
    members: Mapping[str, Calculator],
    repeats: int,
    warmup: int,
    stress: bool,
) -> dict:
    """`compare_speed`'s ``member_*`` columns on one system, the errors those of the first of ``members``."""
    timed = {name: time_calls(calc, atoms, repeats, warmup, stress)["median_ms"] for name, calc in members.items()}
    errors = student_accuracy(atoms, teacher_results, dict(next(iter(members.values())).results))
    fastest = min(timed, key=timed.get)
    return {
        "member_ms": timed[fastest],
        "member_fastest": fastest,
        "member_implementations_ms": timed,
        **{f"member_{key}": value for key, value in errors.items()},
    }


def student_accuracy(atoms: Atoms, teacher_results: dict, student_results: dict) -> dict[str, float]:
    """``force_rel_rmse``, ``force_mae_eV_per_A`` (eV/Angstrom), ``energy_mae_per_atom_eV`` and,
    when both have a stress, ``stress_rel_error``: the student's ASE ``results`` on ``atoms``
    against the teacher's (`energy_force_errors`, `stress_errors`)."""
    reference = LabeledArrays(
        numbers=atoms.numbers,
        positions_A=atoms.positions,
        forces_eV_per_A=np.asarray(teacher_results["forces"], dtype=np.float64),
        energy_eV=np.array([teacher_results["energy"]], dtype=np.float64),
        atoms_ptr=np.array([0, len(atoms)]),
        cell_A=atoms.cell.array[None],
        pbc=atoms.pbc[None],
        stress_eV_per_A3=(
            voigt_6_to_full_3x3_stress(np.asarray(teacher_results["stress"]))[None]
            if "stress" in teacher_results
            else None
        ),
    )
    errors = energy_force_errors(reference, np.array([student_results["energy"]]), student_results["forces"])
    found = {key: errors[key] for key in ACCURACY_COLUMNS if key in errors}
    if "stress" in teacher_results and "stress" in student_results:
        predicted = voigt_6_to_full_3x3_stress(np.asarray(student_results["stress"]))[None]
        stress = stress_errors(reference.stress_eV_per_A3, predicted)
        if "stress_rel_error" in stress:
            found["stress_rel_error"] = stress["stress_rel_error"]
    return found


def speed_rows(
    systems: Sequence[Atoms],
    settings: MeasurementSettings,
    teacher: Teacher,
    student_calculator: Calculator,
    member: Teacher | None = None,
    implementations: TeacherImplementations | None = None,
    all_cores_student: Calculator | None = None,
    all_cores_threads: int = 1,
    exported_student: Calculator | None = None,
    all_cores_exported_student: Calculator | None = None,
) -> list[dict]:
    """`compare_speed` rows for ``systems`` as given (the targets at several sizes, each with its
    ``info["target"]``, or systems built from the run's seeds by
    `mlff_distill.sampling.boxes.build_timing_systems`), ``timing_repeats`` calls and
    ``speed.warmup`` warm-up calls each;
    ``member`` (one member of an ensemble teacher), ``implementations`` (the teacher's other
    implementations; the member is timed in their ``other_members`` where there are any, which
    is torchani's cell list, its fastest at every size measured: in FeNNol's all-pairs path one
    member takes seconds a call on thousands of atoms, docs/measurements.md; else in its
    labeling path), ``all_cores_student`` (the second pass), ``exported_student`` (the student's
    AOTInductor package) and ``all_cores_exported_student`` (the package in the second pass)
    where given; ``speed.skip_slower_than`` stops timing an implementation of the teacher at a
    target's larger sizes once it was that many times slower than the fastest."""
    implementations = implementations or TeacherImplementations(labeling="teacher")
    members = None
    if member is not None:
        members = implementations.other_members or {implementations.labeling: TeacherCalculator(member)}
    return compare_speed(
        TeacherCalculator(teacher),
        student_calculator,
        systems,
        settings.timing_repeats,
        settings.speed.warmup,
        members,
        implementations.labeling,
        implementations.others,
        all_cores_student,
        all_cores_threads,
        exported_student,
        all_cores_exported_student,
        settings.speed.skip_slower_than,
    )
