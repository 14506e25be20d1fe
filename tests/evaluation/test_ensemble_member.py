"""One member of an ensemble teacher, the alternative a student must beat: its errors against the
ensemble on the test structures, and the verdict."""

import pytest
from ase.build import molecule

from mlff_distill.data import LabeledArrays, concatenate_structures
from mlff_distill.evaluation.ensemble_member import member_of, member_test_accuracy, member_verdict
from mlff_distill.evaluation.metrics import energy_force_errors
from mlff_distill.teachers.ase_calculator import AseCalculatorTeacher


def test_member_errors_against_the_ensembles_labels(ani1x_teacher):
    structures = [molecule(name) for name in ("H2O", "CH4", "NH3", "CH3OH")]
    for index, atoms in enumerate(structures):
        atoms.rattle(0.05, seed=index)
    labels = ani1x_teacher.compute(structures)
    test = LabeledArrays(
        **concatenate_structures(structures), energy_eV=labels.energy_eV, forces_eV_per_A=labels.forces_eV_per_A
    )
    member = member_of(ani1x_teacher)
    found = member_test_accuracy(member, test, compute_stress=False)
    assert found["member"].endswith("member 1 of 8")
    direct = member.compute(structures)
    expected = energy_force_errors(test, direct.energy_eV, direct.forces_eV_per_A)
    assert found["force_rel_rmse"] == pytest.approx(expected["force_rel_rmse"])
    assert 0 < found["force_rel_rmse"] < 0.5 and found["energy_mae_per_atom_eV"] > 0  # close, not equal


def test_no_member_for_a_single_model():
    assert member_of(AseCalculatorTeacher("ase.calculators.emt:EMT", species=(29,))) is None


@pytest.mark.parametrize(
    ("student_error", "student_ms", "expected"),
    [(0.02, [1.0, 2.0], (True, True)), (0.05, [1.0, 2.0], (False, True)), (0.02, [1.0, 9.0], (True, False))],
)
def test_verdict(student_error, student_ms, expected):
    rows = [{"student_ms": ms, "member_ms": 5.0} for ms in student_ms] + [{"student_ms": 1.0}]  # untimed row
    verdict = member_verdict(student_error, rows, {"force_rel_rmse": 0.04})
    assert (verdict["student_more_accurate"], verdict["student_faster_at_every_size"]) == expected
    assert member_verdict(0.02, [{"student_ms": 1.0}], {"force_rel_rmse": 0.04})["student_faster_at_every_size"] is None
