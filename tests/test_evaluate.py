"""Accuracy metrics against hand-computed values, and the summary."""

import json

import numpy as np
import pytest

from mlff_distill.data import LabeledArrays
from mlff_distill.evaluate import accuracy_metrics, summary_text


def two_structures() -> LabeledArrays:
    return LabeledArrays(
        numbers=np.array([1, 1, 8]),
        positions_A=np.zeros((3, 3)),
        forces_eV_per_A=np.array([[1.0, 0, 0], [0, 2.0, 0], [0, 0, -2.0]]),
        energy_eV=np.array([-1.0, -2.0]),
        atoms_ptr=np.array([0, 1, 3]),
        cell_A=np.zeros((2, 3, 3)),
        pbc=np.zeros((2, 3), dtype=bool),
    )


def test_accuracy_metrics_by_hand():
    reference = two_structures()
    energy = np.array([-0.9, -2.4])  # errors per atom: 0.1/1 and -0.4/2
    forces = reference.forces_eV_per_A + np.array([[0.3, 0, 0], [0, 0, 0], [0, 0, 0]])
    metrics = accuracy_metrics(reference, energy, forces)
    assert metrics["energy_mae_per_atom_eV"] == pytest.approx((0.1 + 0.2) / 2)
    assert metrics["energy_rmse_per_atom_eV"] == pytest.approx(np.sqrt((0.01 + 0.04) / 2))
    assert metrics["force_mae_eV_per_A"] == pytest.approx(0.3 / 9)
    assert metrics["force_rmse_eV_per_A"] == pytest.approx(np.sqrt(0.09 / 9))
    assert metrics["force_rel_rmse"] == pytest.approx(np.sqrt(0.09 / 9) / np.sqrt(9 / 9))


def test_summary_names_teacher_student_error_and_speedup(tmp_path):
    metrics = {"teacher": "fennol-pmc/ani1x", "student": "StudentPotential (100 parameters)",
               "n_test": 7, "force_rel_rmse": 0.0512, "energy_mae_per_atom_eV": 0.0021,
               "speedup": 12.34, "teacher_s_per_structure": 0.01,
               "student_s_per_structure": 0.00081, "inference_path": "eager"}
    (tmp_path / "evaluate").mkdir()
    path = tmp_path / "evaluate" / "metrics.json"
    path.write_text(json.dumps(metrics))
    text = summary_text(path)
    for expected in ("fennol-pmc/ani1x", "StudentPotential", "5.12 %", "12.3x", str(tmp_path)):
        assert expected in text
