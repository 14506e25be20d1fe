"""The student's accuracy against its teacher by hand and per target, and the flat MLflow metrics of a run's results."""

import numpy as np
import pytest

from mlff_distill.data import LabeledArrays
from mlff_distill.evaluation.accuracy import accuracy, accuracy_by_target, errors_by_round, mlflow_metrics


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


def test_mlflow_metrics_are_flat_numbers_without_the_gates():
    numbers = mlflow_metrics(
        {
            "teacher": "ani1x",
            "force_rel_rmse": 0.2,
            "per_species": {"H": {"n_atoms": 3}},
            "md_validation": {"rdf": {"r_A": [1.0, 2.0], "integrated_abs_difference": 0.1}},
            "speed": [{"n_atoms": 64, "teacher_ms": 1.0}],
            "accuracy_by_target": [
                {"target": "water", "temperature_K": 300.0, "n_structures": 2, "force_rel_rmse": 0.1},
                {"target": None, "temperature_K": None, "n_structures": 1},
            ],
            "target_nvt": [{"target": "water", "temperature_K": 350.0, "time_ps": 5.0, "blew_up": False, "r_A": [1.0]}],
            "rounds": [{"round": 0, "force_rel_rmse": 0.3}, {"round": 1, "force_rel_rmse": 0.2}],
            "strict": True,
            "gates": [{"metric": "force_rel_rmse", "bound": "max", "threshold": 0.03, "value": 0.2, "passed": False}],
        }
    )
    assert numbers == {
        "force_rel_rmse": 0.2,
        "per_species.H.n_atoms": 3.0,
        "md_validation.rdf.integrated_abs_difference": 0.1,
        "accuracy_by_target.water.300K.n_structures": 2.0,
        "accuracy_by_target.water.300K.force_rel_rmse": 0.1,
        "accuracy_by_target.none.none.n_structures": 1.0,
        "target_nvt.water.350K.time_ps": 5.0,
        "rounds.0.force_rel_rmse": 0.3,
        "rounds.1.force_rel_rmse": 0.2,
    }  # the gates are the report stage's (`gates.gate_metrics`)


def test_errors_by_round_are_each_rounds_whole_set_errors():
    reference = two_structures()
    exact = {"energy_eV": reference.energy_eV, "forces_eV_per_A": reference.forces_eV_per_A}
    off = {"energy_eV": np.array([-0.9, -2.4]), "forces_eV_per_A": reference.forces_eV_per_A + 0.3}
    rows = errors_by_round(reference, [off, exact])
    assert [row["round"] for row in rows] == [0, 1] and rows[1]["force_rel_rmse"] == 0.0
    whole = accuracy(reference, off)
    assert {k: rows[0][k] for k in ("force_rel_rmse", "energy_mae_per_atom_eV")} == {
        k: whole[k] for k in ("force_rel_rmse", "energy_mae_per_atom_eV")
    }


def five_structures() -> tuple[LabeledArrays, dict, list[dict]]:
    """Three periodic structures (with stress) and two molecules, predictions a little off, and
    the sampled structures' info of each: two targets at two temperatures, and a seed's rattle."""
    rng = np.random.default_rng(3)
    n_atoms = np.array([2, 3, 2, 4, 3])
    periodic = np.array([True, True, True, False, False])
    stress = rng.normal(size=(5, 3, 3)) * 0.01
    stress[~periodic] = np.nan
    reference = LabeledArrays(
        numbers=rng.choice([1, 8], n_atoms.sum()),
        positions_A=rng.uniform(0, 3, (n_atoms.sum(), 3)),
        forces_eV_per_A=rng.normal(size=(n_atoms.sum(), 3)),
        energy_eV=rng.normal(size=5),
        atoms_ptr=np.concatenate([[0], np.cumsum(n_atoms)]),
        cell_A=np.where(periodic[:, None, None], np.eye(3) * 3.0, 0.0),
        pbc=np.repeat(periodic[:, None], 3, axis=1),
        stress_eV_per_A3=stress,
    )
    predictions = {
        "energy_eV": reference.energy_eV + rng.normal(scale=0.1, size=5),
        "forces_eV_per_A": reference.forces_eV_per_A + rng.normal(scale=0.1, size=reference.forces_eV_per_A.shape),
        "stress_eV_per_A3": stress + rng.normal(scale=0.001, size=stress.shape),
    }
    infos = [
        {"target": "water", "temperature_K": 350.0, "strategy": "test-md"},
        {"target": "water", "temperature_K": 300.0, "strategy": "test-md"},
        {"target": "water", "temperature_K": 350.0, "strategy": "test-md"},
        {"strategy": "rattle", "seed": "CH4"},
        {"target": "ethanol", "temperature_K": 300.0, "strategy": "test-md"},
    ]
    return reference, predictions, infos


def test_accuracy_by_target_equals_the_whole_set_metrics_on_each_group():
    reference, predictions, infos = five_structures()
    rows = accuracy_by_target(reference, predictions, infos)
    assert [(row["target"], row["temperature_K"], row["n_structures"]) for row in rows] == [
        ("ethanol", 300.0, 1),
        ("water", 300.0, 1),
        ("water", 350.0, 2),
        (None, None, 1),
    ]
    for row, indices in zip(rows, ([4], [1], [0, 2], [3])):
        subset = reference.subset(indices)
        atoms = np.concatenate([np.arange(reference.atoms_ptr[i], reference.atoms_ptr[i + 1]) for i in indices])
        alone = accuracy(
            subset,
            {
                "energy_eV": predictions["energy_eV"][indices],
                "forces_eV_per_A": predictions["forces_eV_per_A"][atoms],
                "stress_eV_per_A3": predictions["stress_eV_per_A3"][indices],
            },
        )
        for key in ("force_rel_rmse", "force_mae_eV_per_A", "energy_mae_per_atom_eV", "force_cosine"):
            assert row[key] == pytest.approx(alone[key])
        assert ("stress_rel_error" in row) == bool(subset.pbc.all())  # periodic, with stress labels
        if "stress_rel_error" in row:
            assert row["stress_rel_error"] == pytest.approx(alone["stress_rel_error"])
    # one group holding everything is the whole set
    (whole,) = accuracy_by_target(reference, predictions, [{}] * 5)
    assert whole["force_rel_rmse"] == pytest.approx(accuracy(reference, predictions)["force_rel_rmse"])
    with pytest.raises(ValueError, match="infos"):
        accuracy_by_target(reference, predictions, infos[:4])


def test_accuracy_by_target_gives_each_group_the_ensemble_means_uncertainty():
    reference, predictions, infos = five_structures()
    forces_std = np.abs(np.random.default_rng(1).normal(size=reference.forces_eV_per_A.shape))
    rows = accuracy_by_target(reference, predictions, infos, forces_std, n_members=4)
    for row, indices in zip(rows, ([4], [1], [0, 2], [3])):
        atoms = np.concatenate([np.arange(reference.atoms_ptr[i], reference.atoms_ptr[i + 1]) for i in indices])
        expected = np.sqrt((forces_std[atoms] ** 2).mean() / (reference.forces_eV_per_A[atoms] ** 2).mean()) / 2
        assert row["ensemble_force_rel_rmse_of_the_mean"] == pytest.approx(expected)
    without_spread = accuracy_by_target(reference, predictions, infos)
    assert all("ensemble_force_rel_rmse_of_the_mean" not in row for row in without_spread)
