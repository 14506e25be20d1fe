"""Metrics against values computed by hand on tiny arrays."""

import numpy as np
import pytest
from ase.units import GPa

from mlff_distill.data import LabeledArrays
from mlff_distill.evaluation.metrics import (
    energy_force_errors,
    ensemble_spread,
    force_cosine,
    per_kind_force_errors,
    per_species_force_errors,
    stress_errors,
    training_fit,
    worst_force_errors,
)


def h_and_h2o() -> LabeledArrays:
    """Structure 0: one H; structure 1: H, H, O. Forces are unit-free numbers easy to add up."""
    return LabeledArrays(
        numbers=np.array([1, 1, 1, 8]),
        positions_A=np.zeros((4, 3)),
        forces_eV_per_A=np.array([[3.0, 0, 0], [0, 4.0, 0], [0, 0, -2.0], [1.0, 0, 0]]),
        energy_eV=np.array([-1.0, -3.0]),
        atoms_ptr=np.array([0, 1, 4]),
        cell_A=np.zeros((2, 3, 3)),
        pbc=np.zeros((2, 3), dtype=bool),
    )


def test_energy_and_force_errors_by_hand():
    reference = h_and_h2o()
    energy = np.array([-0.8, -3.6])  # errors per atom: +0.2 / 1 and -0.6 / 3
    forces = reference.forces_eV_per_A.copy()
    forces[0] = [0.0, 3.0, 0.0]  # atom 0: error (-3, 3, 0), at right angles to the reference
    metrics = energy_force_errors(reference, energy, forces)
    assert metrics["energy_mae_per_atom_eV"] == pytest.approx(0.2)
    assert metrics["energy_rmse_per_atom_eV"] == pytest.approx(0.2)
    assert metrics["energy_mean_error_per_atom_eV"] == pytest.approx(0.0)  # +0.2 and -0.2 per atom
    assert metrics["force_mae_eV_per_A"] == pytest.approx(6 / 12)
    assert metrics["force_rmse_eV_per_A"] == pytest.approx(np.sqrt(18 / 12))
    assert metrics["force_rel_rmse"] == pytest.approx(np.sqrt(18 / 12) / np.sqrt(30 / 12))
    # magnitudes 3, 4, 2, 1; cosines 0, 1, 1, 1
    assert metrics["force_cosine"] == pytest.approx((4 + 2 + 1) / 10)


def test_force_cosine_of_reversed_and_zero_predictions():
    reference = np.array([[1.0, 0, 0], [0, 3.0, 0]])
    assert force_cosine(reference, -reference) == pytest.approx(-1.0)
    assert force_cosine(reference, np.array([[2.0, 0, 0], [0, 0, 0]])) == pytest.approx(0.25)


def test_shape_mismatch_is_named():
    with pytest.raises(ValueError, match="forces_eV_per_A"):
        energy_force_errors(h_and_h2o(), np.zeros(2), np.zeros((3, 3)))


def test_per_species_force_errors_by_hand():
    reference = h_and_h2o()
    forces = reference.forces_eV_per_A + np.array([[0.3, 0, 0], [0, 0, 0], [0, 0, 0], [0, -0.6, 0]])
    errors = per_species_force_errors(reference, forces)
    assert set(errors) == {"H", "O"}
    assert errors["H"]["n_atoms"] == 3 and errors["O"]["n_atoms"] == 1
    assert errors["H"]["force_mae_eV_per_A"] == pytest.approx(0.3 / 9)
    assert errors["O"]["force_rmse_eV_per_A"] == pytest.approx(np.sqrt(0.36 / 3))
    assert errors["O"]["force_rel_rmse"] == pytest.approx(np.sqrt(0.36 / 3) / np.sqrt(1 / 3))


def test_stress_errors_skip_molecules_and_convert_to_gpa():
    reference = np.full((3, 3, 3), np.nan)  # structure 0: a molecule
    reference[1] = np.diag([1.0, 1.0, 1.0]) * GPa  # 1 GPa on the diagonal
    reference[2] = np.diag([3.0, 3.0, 3.0]) * GPa
    predicted = np.full((3, 3, 3), np.nan)
    predicted[1] = reference[1] + np.diag([0.5, 0, 0]) * GPa
    predicted[2] = reference[2]
    errors = stress_errors(reference, predicted)
    assert errors["n_stress"] == 2
    assert errors["stress_mae_GPa"] == pytest.approx(0.5 / 18)
    assert errors["stress_rmse_GPa"] == pytest.approx(np.sqrt(0.25 / 18))
    assert errors["stress_rel_error"] == pytest.approx(np.sqrt(0.25 / 18) / np.sqrt(30 / 18))
    assert stress_errors(reference[:1], predicted[:1]) == {}
    assert stress_errors(None, predicted) == {}


def test_ensemble_spread_uses_the_error_names():
    reference = h_and_h2o()
    spread = ensemble_spread(reference, np.array([0.1, 0.3]), np.full((4, 3), 0.5))
    assert spread["energy_mae_per_atom_eV"] == pytest.approx(0.1)
    assert spread["energy_rmse_per_atom_eV"] == pytest.approx(0.1)
    assert spread["force_rmse_eV_per_A"] == pytest.approx(0.5)
    assert spread["force_rel_rmse"] == pytest.approx(0.5 / np.sqrt(30 / 12))
    assert "force_rel_rmse_of_the_mean" not in spread  # the number of members not given
    of_eight = ensemble_spread(reference, None, np.full((4, 3), 0.5), n_members=8)
    assert of_eight["force_rel_rmse_of_the_mean"] == pytest.approx(spread["force_rel_rmse"] / np.sqrt(8))
    assert ensemble_spread(reference, np.zeros(2)) == {}


def test_per_kind_force_errors_by_hand():
    reference = h_and_h2o()
    forces = reference.forces_eV_per_A.copy()
    forces[0] = [0.0, 3.0, 0.0]  # only the lone H (kind "a") is wrong: squared error 18
    rows = per_kind_force_errors(reference, forces, ["a", "b"])
    assert rows["a"] == pytest.approx(
        {
            "n_structures": 1,
            "force_rmse_eV_per_A": np.sqrt(18 / 3),
            "force_rel_rmse": np.sqrt(18 / 9),
            "share_of_squared_error": 1.0,
        }
    )
    assert rows["b"]["force_rel_rmse"] == 0.0 and rows["b"]["share_of_squared_error"] == 0.0
    with pytest.raises(ValueError, match="1 labels for 2 structures"):
        per_kind_force_errors(reference, forces, ["a"])


def test_worst_force_errors_by_hand():
    reference = h_and_h2o()
    forces = reference.forces_eV_per_A.copy()
    forces[0] = [0.0, 3.0, 0.0]  # the lone H: squared error 18
    forces[3] = [0.0, 0.0, 0.0]  # the O of H2O: squared error 1
    worst = worst_force_errors(reference, forces, [{"sample_index": 7}, {"sample_index": 9}], count=1)
    assert worst["structures"] == [
        pytest.approx(
            {
                "sample_index": 7,
                "n_atoms": 1,
                "force_rmse_eV_per_A": np.sqrt(18 / 3),
                "force_rel_rmse": np.sqrt(18 / 9),
                "share_of_squared_error": 18 / 19,
            }
        )
    ]
    assert worst["share_of_squared_error"] == pytest.approx(18 / 19)
    assert worst["force_rel_rmse_of_the_others"] == pytest.approx(np.sqrt(1 / 21))
    both = worst_force_errors(reference, forces, [{}, {}], count=5)
    assert [row["n_atoms"] for row in both["structures"]] == [1, 3]
    assert both["share_of_squared_error"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="1 entries for 2 structures"):
        worst_force_errors(reference, forces, [{}])


def test_training_fit_compares_training_and_test_frames_and_names_what_limits_the_student():
    frames = h_and_h2o()  # summed squared force 30 over 12 components
    forces = frames.forces_eV_per_A.copy()
    forces[0] = [3.0, 0.3, 0.0]  # squared error 0.09 over 12 components
    worse = frames.forces_eV_per_A.copy()
    worse[0] = [3.0, 0.36, 0.0]  # 1.2 times the error
    fit = training_fit(frames, forces, frames, worse)
    assert fit["train_force_rel_rmse"] == pytest.approx(np.sqrt(0.09 / 30))
    assert fit["test_over_train"] == pytest.approx(1.2) and fit["limited_by"] == "the student"
    assert (fit["n_train"], fit["n_test"]) == (2, 2)
    worse[0] = [3.0, 0.6, 0.0]  # twice the error: the data limit it
    assert training_fit(frames, forces, frames, worse)["limited_by"] == "the data"
