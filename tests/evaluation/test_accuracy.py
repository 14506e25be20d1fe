"""The student's accuracy against its teacher by hand, and the flat MLflow metrics of a run's results."""

import numpy as np
import pytest

from mlff_distill.data import LabeledArrays
from mlff_distill.evaluation.accuracy import accuracy, mlflow_metrics


def two_structures() -> LabeledArrays:
    return LabeledArrays(
        numbers=np.array([1, 1, 8]),
        positions_A=np.zeros((3, 3)),
        forces_eV_per_A=np.array([[1.0, 0, 0], [0, 2.0, 0], [0, 0, -2.0]]),
        energy_eV=np.array([-1.0, -2.0]),
        atoms_ptr=np.array([0, 1, 3]),
        cell_A=np.zeros((2, 3, 3)),
        pbc=np.zeros((2, 3), dtype=bool),
        stress_eV_per_A3=np.full((2, 3, 3), np.nan),
    )


def test_accuracy_by_hand():
    reference = two_structures()
    energy = np.array([-0.9, -2.4])  # errors per atom: 0.1/1 and -0.4/2
    forces = reference.forces_eV_per_A + np.array([[0.3, 0, 0], [0, 0, 0], [0, 0, 0]])
    metrics = accuracy(
        reference, {"energy_eV": energy, "forces_eV_per_A": forces}, energy_std_eV=np.array([0.01, 0.04])
    )
    assert metrics["energy_mae_per_atom_eV"] == pytest.approx((0.1 + 0.2) / 2)
    assert metrics["energy_rmse_per_atom_eV"] == pytest.approx(np.sqrt((0.01 + 0.04) / 2))
    assert metrics["force_mae_eV_per_A"] == pytest.approx(0.3 / 9)
    assert metrics["force_rmse_eV_per_A"] == pytest.approx(np.sqrt(0.09 / 9))
    assert metrics["force_rel_rmse"] == pytest.approx(np.sqrt(0.09 / 9) / np.sqrt(9 / 9))
    assert metrics["per_species"]["O"]["force_mae_eV_per_A"] == 0.0
    assert metrics["ensemble_spread"]["energy_mae_per_atom_eV"] == pytest.approx((0.01 + 0.02) / 2)
    assert "stress_mae_GPa" not in metrics  # molecules: no stress


def test_mlflow_metrics_are_flat_numbers_with_gate_verdicts():
    numbers = mlflow_metrics(
        {
            "teacher": "ani1x",
            "force_rel_rmse": 0.2,
            "per_species": {"H": {"n_atoms": 3}},
            "md_validation": {"rdf": {"r_A": [1.0, 2.0], "integrated_abs_difference": 0.1}},
            "speed": [{"n_atoms": 64, "teacher_ms": 1.0}],
            "strict": True,
            "gates": [{"metric": "force_rel_rmse", "passed": False}, {"metric": "stress_rel_error", "passed": None}],
        }
    )
    assert numbers == {
        "force_rel_rmse": 0.2,
        "per_species.H.n_atoms": 3.0,
        "md_validation.rdf.integrated_abs_difference": 0.1,
        "gate.force_rel_rmse": 0.0,
    }
