"""The timing of ASE calculators (latency, throughput, memory), teacher against student with the student's
accuracy on each timed system, and the benchmark script."""

import functools
import time

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from ase.units import GPa
from failing_calculator import SlowEMT

from mlff_distill.data import LabeledArrays
from mlff_distill.evaluation import speed
from mlff_distill.evaluation.speed import compare_speed, time_calls, uses_torch_threads
from mlff_distill.sampling.boxes import build_timing_systems
from mlff_distill.student import StudentCalculator, StudentPotential
from mlff_distill.teachers.ase_calculator import AseCalculatorTeacher
from mlff_distill.teachers.base import TeacherCalculator


@pytest.fixture
def quick_timing(monkeypatch):
    """`compare_speed` with `time_calls` that stop after ``repeats`` calls instead of timing one
    second per model and system (the rows' contents, not their precision, are checked here; the
    one-second floor is `test_time_calls_reports_latency_throughput_and_stress`'s)."""
    monkeypatch.setattr(speed, "time_calls", functools.partial(time_calls, min_seconds=0.0))


class CountingEMT(EMT):
    """EMT that counts its calculations."""

    calls = 0

    def calculate(self, *args, **kwargs):
        self.calls += 1
        super().calculate(*args, **kwargs)


class NappingEMT(EMT):
    """EMT whose calls take at least 5 ms however loaded the machine is (a sleep, not CPU work), so
    that a test can count on three calls taking less than a second."""

    def calculate(self, *args, **kwargs):
        time.sleep(0.005)
        super().calculate(*args, **kwargs)


def test_time_calls_reports_latency_throughput_and_stress():
    copper = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    timing = time_calls(EMT(), copper, repeats=3, warmup=1, min_seconds=0.0)
    assert timing["with_stress"] and timing["median_ms"] > 0 and timing["n_calls"] == 3
    # Fast calls are repeated until min_seconds have been timed: a median over many calls.
    long = time_calls(NappingEMT(), copper, repeats=3, warmup=0, min_seconds=1.0)
    assert long["n_calls"] * long["median_ms"] / 1e3 > 0.5 and long["n_calls"] > 3
    assert timing["atom_steps_per_s"] == pytest.approx(32 / (timing["median_ms"] / 1e3))
    # Slow calls stop once max_seconds have been timed, after one call at least.
    assert time_calls(EMT(), copper, repeats=5, warmup=0, min_seconds=0.0, max_seconds=0.0)["n_calls"] == 1
    # ... and so does the warm-up: one untimed call, not five, then the one timed call.
    counting = CountingEMT()
    time_calls(counting, copper, repeats=5, warmup=5, min_seconds=0.0, max_seconds=0.0)
    assert counting.calls == 2
    counting = CountingEMT()
    time_calls(counting, copper, repeats=1, warmup=3, min_seconds=0.0)
    assert counting.calls == 4
    capped = time_calls(NappingEMT(), copper, repeats=10_000, warmup=0, min_seconds=0.0, max_seconds=1.0)
    assert 1 < capped["n_calls"] < 10_000
    assert not time_calls(EMT(), copper, repeats=1, warmup=0, stress=False, min_seconds=0.0)["with_stress"]
    assert not time_calls(EMT(), molecule("CH4"), repeats=1, warmup=0, min_seconds=0.0)["with_stress"]


PEAK_MEMORY_SCRIPT = """
import json
import numpy as np
from ase.build import bulk
from ase.calculators.emt import EMT
from mlff_distill.evaluation.speed import time_calls

class AllocatingCalculator(EMT):
    def calculate(self, atoms=None, properties=("energy",), system_changes=()):
        scratch = np.ones(25_000_000)  # 200 MB of float64, touched
        super().calculate(atoms, properties, system_changes)
        self.results["energy"] += 0.0 * scratch[-1]

copper = bulk("Cu", "fcc", a=3.6, cubic=True)
big = time_calls(AllocatingCalculator(), copper, repeats=1, warmup=0, min_seconds=0.0)
small = time_calls(EMT(), copper, repeats=1, warmup=0, min_seconds=0.0)
print(json.dumps([big["rss_peak_MB"], small["rss_peak_MB"]]))
"""


def test_peak_memory_sees_an_allocation_inside_the_call():
    # A fresh interpreter: a StudentCalculator made by another test keeps freed memory in this
    # process (keep_freed_memory), and reused memory does not raise the peak.
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", PEAK_MEMORY_SCRIPT], capture_output=True, text=True, check=True).stdout
    big, small = json.loads(out.strip().splitlines()[-1])
    assert big > 150  # measured again after the first call freed its array
    assert small < 50


def test_compare_speed_rows_for_a_teacher_and_an_untrained_student(single_thread, quick_timing, caplog):
    systems = build_timing_systems([molecule("H2O"), molecule("CH4")], [48, 96], cutoff_A=4.0, seed=1)
    teacher = TeacherCalculator(AseCalculatorTeacher("ase.calculators.emt:EMT", species=(1, 6, 8)))
    student = StudentCalculator(StudentPotential(species=(1, 6, 8), cutoff_A=4.0, n_features=16))
    with caplog.at_level("INFO", logger="mlff_distill.evaluation.speed"):
        rows = compare_speed(teacher, student, systems, repeats=2, warmup=1)
    assert [row["n_atoms"] for row in rows] == [len(s) for s in systems]
    done = [record.getMessage() for record in caplog.records if "x" == record.getMessage()[-1]]
    assert len(done) == len(systems) and f"({len(systems[1])} atoms): student " in done[1]
    for row in rows:
        assert row["speedup"] == pytest.approx(row["teacher_ms"] / row["student_ms"])
        assert row["with_stress"]  # periodic systems: both are timed with stress
        assert row["student_atom_steps_per_s"] == pytest.approx(row["n_atoms"] * 1e3 / row["student_ms"])
        assert row["teacher_peak_MB"] >= 0 and row["student_peak_MB"] >= 0


def test_compare_speed_times_an_ensemble_member_beside_the_teacher(single_thread, quick_timing):
    copper = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    copper.rattle(0.05, seed=2)
    teacher = TeacherCalculator(AseCalculatorTeacher("ase.calculators.emt:EMT", species=(29,)))
    # a stand-in "member": EMT with other parameters, so that its errors are not zero
    member = EMT()
    member.parameters["asap_cutoff"] = True
    student = StudentCalculator(StudentPotential(species=(29,), cutoff_A=4.0, n_features=8))
    (row,) = compare_speed(teacher, student, [copper], repeats=1, warmup=0, members={"member": member})
    assert row["student_speedup_over_member"] == pytest.approx(row["member_ms"] / row["student_ms"])
    assert row["member_force_rel_rmse"] > 0 and row["member_energy_mae_per_atom_eV"] > 0
    assert "member_stress_rel_error" in row
    (plain,) = compare_speed(teacher, student, [copper], repeats=1, warmup=0)
    assert not any(key.startswith("member") for key in plain)


def test_compare_speed_counts_the_speedup_over_the_fastest_implementation(single_thread, quick_timing):
    copper = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    copper.rattle(0.05, seed=2)
    teacher = TeacherCalculator(AseCalculatorTeacher("ase.calculators.emt:EMT", species=(29,)))
    same = EMT()  # the same model in other code: no force difference
    fast = EMT()  # a "faster implementation" whose forces differ from the labels
    fast.parameters["asap_cutoff"] = True
    student = StudentCalculator(StudentPotential(species=(29,), cutoff_A=4.0, n_features=8))
    (row,) = compare_speed(
        teacher,
        student,
        [copper],
        repeats=1,
        warmup=0,
        members={"member": EMT(), "member-again": EMT()},
        teacher_name="ase",
        other_teachers={"emt-again": same, "emt-asap": fast},
    )
    timed = row["teacher_implementations_ms"]
    assert set(timed) == {"ase", "emt-again", "emt-asap"} and timed["ase"] == row["teacher_ms"]
    assert row["teacher_fastest"] == min(timed, key=timed.get)
    assert row["teacher_fastest_ms"] == min(timed.values()) <= row["teacher_ms"]
    assert row["speedup"] == pytest.approx(row["teacher_fastest_ms"] / row["student_ms"])
    assert row["speedup_over_labeling_teacher"] == pytest.approx(row["teacher_ms"] / row["student_ms"])
    # the student is timed before the teachers and again after them; the faster pass counts
    assert len(row["student_passes_ms"]) == 2 and row["student_ms"] == min(row["student_passes_ms"])
    assert row["student_atom_steps_per_s"] == pytest.approx(1e3 * len(copper) / row["student_ms"])
    differences = row["teacher_implementations_force_rel_diff"]
    assert differences["emt-again"] < 1e-12 < differences["emt-asap"]
    assert set(row["member_implementations_ms"]) == {"member", "member-again"}
    assert row["member_ms"] == min(row["member_implementations_ms"].values())
    assert row["student_speedup_over_member"] == pytest.approx(row["member_ms"] / row["student_ms"])


def test_compare_speed_stops_timing_an_implementation_far_slower_at_a_smaller_size(single_thread, quick_timing):
    small = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    small.rattle(0.05, seed=3)
    large = small.repeat((3, 1, 1))
    systems = [small, large, large.copy()]
    for atoms, target in zip(systems, ("copper", "copper", "other copper")):
        atoms.info["target"] = target
    student = StudentCalculator(StudentPotential(species=(29,), cutoff_A=4.0, n_features=8))
    rows = compare_speed(
        SlowEMT(delay_s=0.4),  # many times an EMT call on 32 or 96 atoms, even a first one on a loaded machine
        student,
        systems,
        repeats=1,
        warmup=0,
        teacher_name="slow",
        other_teachers={"fast": EMT()},
        skip_slower_than=3.0,
    )
    first, larger, other_target = rows
    assert set(first["teacher_implementations_ms"]) == {"slow", "fast"}
    assert not first["teacher_implementations_not_timed"]
    # the labeling implementation, over 3x the fastest on the small system, is not timed on the larger one
    assert set(larger["teacher_implementations_ms"]) == {"fast"}
    note = larger["teacher_implementations_not_timed"]["slow"]
    assert note["at_n_atoms"] == len(small) and note["fastest"] == "fast" and note["times_fastest"] > 3.0
    assert larger["teacher_ms"] is None and larger["speedup_over_labeling_teacher"] is None
    assert larger["teacher_fastest"] == "fast" and larger["speedup"] > 0
    # the student's errors are then against the implementation timed (the same model)
    assert larger["force_rel_rmse"] == pytest.approx(first["force_rel_rmse"], rel=0.2)
    assert not larger["teacher_implementations_force_rel_diff"]
    # another target is timed in every implementation
    assert set(other_target["teacher_implementations_ms"]) == {"slow", "fast"}
    assert other_target["teacher_ms"] > 0


class ThreadRecordingEMT(EMT):
    """EMT that records the torch intra-op thread count each call ran under."""

    def __init__(self) -> None:
        super().__init__()
        self.threads_seen: list[int] = []

    def calculate(self, *args, **kwargs) -> None:
        self.threads_seen.append(torch.get_num_threads())
        super().calculate(*args, **kwargs)


def test_compare_speed_times_every_implementation_again_on_all_cores(single_thread, quick_timing):
    copper = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    teacher = TeacherCalculator(AseCalculatorTeacher("ase.calculators.emt:EMT", species=(29,)))
    other, member = ThreadRecordingEMT(), ThreadRecordingEMT()
    model = StudentPotential(species=(29,), cutoff_A=4.0, n_features=8)
    student, student_on_two = StudentCalculator(model, threads=1), StudentCalculator(model, threads=2)
    # the student's other form (the AOTInductor package in the evaluate stage), here EMT
    exported, exported_on_two = EMT(), EMT()
    (row,) = compare_speed(
        teacher,
        student,
        [copper],
        repeats=1,
        warmup=0,
        members={"member": member},
        other_teachers={"emt-again": other},
        all_cores_student=student_on_two,
        all_cores_threads=2,
        exported_student=exported,
        all_cores_exported_student=exported_on_two,
    )
    # First pass on the process's one thread, second on two; the setting is restored after it.
    assert other.threads_seen == [1, 2] and member.threads_seen == [1, 2] and torch.get_num_threads() == 1
    assert row["all_cores_threads"] == 2
    # the exported package too is timed in both passes of the student, the faster counting
    passes = row["exported_student_passes_ms"]
    assert len(passes) == 2 and row["exported_student_ms"] == min(passes)
    assert set(row["all_cores_teacher_implementations_ms"]) == {"teacher", "emt-again"}
    fastest = row["all_cores_teacher_fastest"]
    assert row["all_cores_teacher_fastest_ms"] == min(row["all_cores_teacher_implementations_ms"].values())
    # each counted at the faster of its passes, the student at its fastest form: what a user given
    # both cores would run
    student_forms = {
        "student, 1 thread": row["student_ms"],
        "exported package, 1 thread": row["exported_student_ms"],
        "student, 2 threads": row["all_cores_student_ms_on_all_threads"],
        "exported package, 2 threads": row["all_cores_exported_student_ms_on_all_threads"],
    }
    assert row["all_cores_student_ms"] == min(student_forms.values())
    assert student_forms[row["all_cores_student_fastest"]] == row["all_cores_student_ms"]
    for name, ms in row["all_cores_teacher_implementations_ms"].items():
        assert ms <= row["teacher_implementations_ms"][name]
    assert row["all_cores_member_ms"] <= row["member_ms"]
    assert row["all_cores_speedup"] == pytest.approx(
        row["all_cores_teacher_implementations_ms"][fastest] / row["all_cores_student_ms"]
    )
    assert row["all_cores_student_speedup_over_member"] == pytest.approx(
        row["all_cores_member_ms"] / row["all_cores_student_ms"]
    )
    (one_pass,) = compare_speed(teacher, student, [copper], repeats=1, warmup=0)
    assert not any(key.startswith("all_cores") for key in one_pass)
    (without_package,) = compare_speed(
        teacher, student, [copper], repeats=1, warmup=0, all_cores_student=student_on_two, all_cores_threads=2
    )
    assert "all_cores_exported_student_ms_on_all_threads" not in without_package
    assert without_package["all_cores_student_fastest"] in ("student, 1 thread", "student, 2 threads")


def test_benchmark_script_writes_the_table_and_logs_it(tmp_path, single_thread, quick_timing):
    import importlib.util
    import json
    from pathlib import Path

    import mlflow
    import yaml

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "student_speed.py"
    spec = importlib.util.spec_from_file_location("student_speed", script)
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    config = tmp_path / "emt.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "teacher": {"kind": "ase", "name": "emt", "factory": "ase.calculators.emt:EMT"},
                "sample": {"molecules": ["H2O", "CH4"]},
                "student": {"cutoff_A": 4.0, "n_features": 8},
            }
        )
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "speed.json"
    previous_uri = mlflow.get_tracking_uri()
    try:
        report = benchmark.main(
            [
                "--configfile",
                str(config),
                "--sizes",
                "48",
                "96",
                "--repeats",
                "1",
                "--warmup",
                "0",
                "--out",
                str(out),
                "--mlflow-uri",
                uri,
            ]
        )
    finally:
        mlflow.set_tracking_uri(previous_uri)  # the script sets it for the whole process
    rows = report["results"]["molecules"]
    assert len(rows) == 2 and all(abs(row["n_atoms"] - size) <= 3 for row, size in zip(rows, [48, 96]))
    assert json.loads(out.read_text())["results"]["molecules"] == rows
    assert report["settings"]["student"] == "untrained StudentPotential"
    client = mlflow.MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("benchmarks").experiment_id])
    history = client.get_metric_history(run.info.run_id, "molecules.speedup")
    assert [m.step for m in history] == [row["n_atoms"] for row in rows]


def test_speed_rows_on_systems_built_from_the_runs_seeds(single_thread, quick_timing):
    from mlff_distill.evaluation.speed import speed_rows
    from mlff_distill.sampling.seeds import seed_structures
    from mlff_distill.settings import EvaluateSettings, SampleSettings, section_settings

    sample = section_settings(
        SampleSettings,
        "sample",
        {"molecules": [], "crystals": [{"formula": "Cu", "structure": "fcc", "a_A": 3.6, "cubic": True}]},
    )
    settings = section_settings(EvaluateSettings, "evaluate", {"timing_repeats": 1, "speed": {"sizes": [32, 108]}})
    teacher = AseCalculatorTeacher("ase.calculators.emt:EMT", species=(29,))
    student = StudentPotential(species=(29,), cutoff_A=4.0, n_features=8)
    systems = build_timing_systems(seed_structures(sample), settings.speed.sizes, 4.0, 0)
    rows = speed_rows(systems, settings, teacher, StudentCalculator(student))
    assert [row["n_atoms"] for row in rows] == [32, 108]
    assert {row["system"] for row in rows} == {"Cu-fcc"}
    assert all(row["teacher_ms"] > 0 and row["student_ms"] > 0 for row in rows)


def test_speed_rows_time_the_member_in_its_other_implementations_only_where_it_has_them(single_thread, quick_timing):
    from mlff_distill.evaluation.speed import speed_rows
    from mlff_distill.settings import EvaluateSettings, section_settings
    from mlff_distill.teachers import TeacherImplementations

    copper = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    copper.rattle(0.05, seed=3)
    settings = section_settings(EvaluateSettings, "evaluate", {"timing_repeats": 1, "speed": {"warmup": 0}})
    teacher = AseCalculatorTeacher("ase.calculators.emt:EMT", species=(29,))
    student = StudentCalculator(StudentPotential(species=(29,), cutoff_A=4.0, n_features=8))
    member, other = CountingEMT(), CountingEMT()
    member_teacher = AseCalculatorTeacher("ase.calculators.emt:EMT", species=(29,))
    member_teacher.calculator = member
    with_other = TeacherImplementations(labeling="emt", other_members={"emt-member-again": other})
    (row,) = speed_rows([copper], settings, teacher, student, member=member_teacher, implementations=with_other)
    assert row["member_implementations_ms"].keys() == {"emt-member-again"}
    assert row["member_fastest"] == "emt-member-again"
    assert other.calls > 0 and member.calls == 0  # the member's labeling path is not timed
    assert row["member_force_rel_rmse"] == pytest.approx(0.0, abs=1e-12)  # EMT against EMT
    (row,) = speed_rows([copper], settings, teacher, student, member=member_teacher)
    assert row["member_implementations_ms"].keys() == {"teacher"} and member.calls > 0


def test_speed_rows_carry_the_students_accuracy_on_the_same_system(single_thread, quick_timing):
    from ase.calculators.emt import EMT

    from mlff_distill.evaluation.metrics import energy_force_errors
    from mlff_distill.evaluation.speed import speed_rows
    from mlff_distill.settings import EvaluateSettings, section_settings

    small = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    small.rattle(0.05, seed=1)
    small.info["target"] = "copper"
    large = small.repeat((2, 1, 1))
    large.info = {"system": "copper x2", "target": "copper"}
    plain = bulk("Cu", "fcc", a=3.7, cubic=True).repeat(2)  # no target
    student = StudentPotential(species=(29,), cutoff_A=4.0, n_features=8)
    settings = section_settings(EvaluateSettings, "evaluate", {"timing_repeats": 1, "speed": {"warmup": 0}})
    teacher = AseCalculatorTeacher("ase.calculators.emt:EMT", species=(29,))
    rows = speed_rows([small, large, plain], settings, teacher, StudentCalculator(student))
    assert [row.get("target") for row in rows] == ["copper", "copper", None] and "target" not in rows[2]
    assert rows[1]["system"] == "copper x2" and [row["n_atoms"] for row in rows] == [32, 64, 32]
    for atoms, row in zip([small, large, plain], rows):
        direct_student, direct_teacher = StudentCalculator(student), EMT()
        direct_student.calculate(atoms.copy(), ["energy", "forces", "stress"])
        direct_teacher.calculate(atoms.copy(), ["energy", "forces", "stress"])
        reference = LabeledArrays(
            numbers=atoms.numbers,
            positions_A=atoms.positions,
            forces_eV_per_A=direct_teacher.results["forces"],
            energy_eV=np.array([direct_teacher.results["energy"]]),
            atoms_ptr=np.array([0, len(atoms)]),
            cell_A=atoms.cell.array[None],
            pbc=atoms.pbc[None],
        )
        direct = energy_force_errors(
            reference, np.array([direct_student.results["energy"]]), direct_student.results["forces"]
        )
        for key in ("force_rel_rmse", "force_mae_eV_per_A", "energy_mae_per_atom_eV"):
            assert row[key] == pytest.approx(direct[key], rel=1e-6)
        teacher_GPa = direct_teacher.results["stress"] / GPa
        error_GPa = direct_student.results["stress"] / GPa - teacher_GPa
        # stress over the 9 components of the full tensor: the off-diagonal Voigt ones count twice
        weights = np.array([1, 1, 1, 2, 2, 2])
        expected = np.sqrt(np.sum(weights * error_GPa**2) / np.sum(weights * teacher_GPa**2))
        assert row["stress_rel_error"] == pytest.approx(expected, rel=1e-6)
    # a rattled copper box and its double: the same error per atom, within rounding
    assert rows[0]["force_rel_rmse"] == pytest.approx(rows[1]["force_rel_rmse"], rel=1e-4)


class JaxLikeEMT(ThreadRecordingEMT):
    """Stands for a calculator whose cores torch's thread setting does not set (JAX)."""

    uses_torch_threads = False


def test_all_cores_pass_keeps_the_first_time_of_what_torch_threads_do_not_set(single_thread, quick_timing):
    copper = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    teacher = TeacherCalculator(AseCalculatorTeacher("ase.calculators.emt:EMT", species=(29,)))
    jax_like = JaxLikeEMT()
    model = StudentPotential(species=(29,), cutoff_A=4.0, n_features=8)
    (row,) = compare_speed(
        teacher,
        StudentCalculator(model, threads=1),
        [copper],
        repeats=1,
        warmup=0,
        other_teachers={"jax-like": jax_like},
        all_cores_student=StudentCalculator(model, threads=2),
        all_cores_threads=2,
    )
    assert jax_like.threads_seen == [1]  # timed once: the second pass would run on the same cores
    assert row["all_cores_teacher_implementations_ms"]["jax-like"] == row["teacher_implementations_ms"]["jax-like"]
    assert uses_torch_threads(teacher) and not uses_torch_threads(jax_like)
