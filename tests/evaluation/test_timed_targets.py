"""The speed table's systems of the targets and the student's accuracy on them over several frames."""

import functools

import numpy as np
import pytest
from ase.build import bulk

from mlff_distill.evaluation.speed import ACCURACY_COLUMNS, speed_rows
from mlff_distill.evaluation.targets import frames_accuracy, timing_systems, with_frames_accuracy
from mlff_distill.settings import EvaluateSettings, section_settings
from mlff_distill.student import StudentCalculator, StudentPotential
from mlff_distill.teachers.ase_calculator import AseCalculatorTeacher


def copper_frames(count: int) -> list:
    """Rattled 32-atom copper cells, as frames of one target's MD."""
    frames = []
    for seed in range(count):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
        atoms.rattle(0.05, seed=seed)
        frames.append(atoms)
    return frames


def test_timing_systems_repeat_each_targets_first_frame_smallest_first():
    frames = {"copper": copper_frames(2), "loose copper": [bulk("Cu", "fcc", a=3.7, cubic=True)]}
    systems = timing_systems(frames, [100, 30])
    assert [len(s) for s in systems] == [4, 32, 108, 128]
    assert [s.info["target"] for s in systems] == ["loose copper", "copper", "loose copper", "copper"]
    assert all(s.info["system"] == s.info["target"] for s in systems)
    np.testing.assert_allclose(systems[1].positions, frames["copper"][0].positions)
    # the larger copper system is its first frame repeated, not its second
    np.testing.assert_allclose(systems[3].positions[:32], frames["copper"][0].positions)
    assert "system" not in frames["copper"][0].info  # the frames are left as they were


def test_rows_take_the_accuracy_over_the_frames_and_keep_the_timed_frames_own(single_thread, monkeypatch):
    from mlff_distill.evaluation import speed

    monkeypatch.setattr(speed, "time_calls", functools.partial(speed.time_calls, min_seconds=0.0))
    teacher = AseCalculatorTeacher("ase.calculators.emt:EMT", species=(29,))
    member = AseCalculatorTeacher("ase.calculators.emt:EMT", species=(29,))  # a "member" equal to the teacher
    student = StudentPotential(species=(29,), cutoff_A=4.0, n_features=8)
    frames = copper_frames(4)
    systems = timing_systems({"copper": frames}, [32, 64]) + [bulk("Cu", "fcc", a=3.7, cubic=True).repeat(2)]
    settings = section_settings(EvaluateSettings, "evaluate", {"timing_repeats": 1, "speed": {"warmup": 0}})
    rows = speed_rows(systems, settings, teacher, StudentCalculator(student), member=member)

    # on the timed frame alone, the frames' accuracy is the row's own, from the timed calls
    alone = frames_accuracy(frames[:1], teacher, student, member)
    for key in ACCURACY_COLUMNS:
        assert alone[key] == pytest.approx(rows[0][key], rel=1e-5)
    assert alone["member_force_rel_rmse"] == pytest.approx(0.0, abs=1e-12)

    over_frames = frames_accuracy(frames, teacher, student, member)
    assert over_frames["energy_mae_per_atom_eV"] != pytest.approx(alone["energy_mae_per_atom_eV"])
    updated = with_frames_accuracy(rows, {"copper": over_frames}, len(frames))
    for row, before in zip(updated[:2], rows):
        assert row["n_accuracy_frames"] == 4
        for key in ACCURACY_COLUMNS:
            assert row[key] == over_frames[key] and row[f"timed_frame_{key}"] == before[key]
        assert row["timed_frame_member_force_rel_rmse"] == before["member_force_rel_rmse"]
        assert row["student_ms"] == before["student_ms"]
    assert updated[2] == rows[2] and "n_accuracy_frames" not in updated[2]  # no target: as timed
    assert "timed_frame_force_rel_rmse" not in rows[0]  # the rows given are left as they were
