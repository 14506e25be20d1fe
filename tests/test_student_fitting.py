"""Student training core: reference energies, a short real training run, determinism."""

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.emt import EMT

from mlff_distill.data import LabeledArrays, concatenate_structures
from mlff_distill.student import StudentPotential, TrainSettings, fit_reference_energies, predict, train_student

SPECIES = [13, 29]


pytestmark = pytest.mark.usefixtures("single_thread")


def emt_dataset(n_structures: int, seed: int) -> LabeledArrays:
    """Rattled, strained 8-atom fcc Cu/Al cells labelled with ASE's EMT."""
    rng = np.random.default_rng(seed)
    structures, energies, forces = [], [], []
    for _ in range(n_structures):
        atoms = bulk("Cu", "fcc", a=3.7, cubic=True) * (2, 1, 1)
        atoms.numbers[rng.random(len(atoms)) < 0.4] = 13
        atoms.set_cell(atoms.cell.array @ (np.eye(3) + rng.normal(scale=0.02, size=(3, 3))), scale_atoms=True)
        atoms.positions += rng.normal(scale=0.12, size=atoms.positions.shape)
        atoms.calc = EMT()
        energies.append(atoms.get_potential_energy())
        forces.append(atoms.get_forces())
        structures.append(atoms)
    arrays = concatenate_structures(structures)
    return LabeledArrays(forces_eV_per_A=np.concatenate(forces), energy_eV=np.array(energies), **arrays)


@pytest.fixture(scope="module")
def dataset() -> tuple[LabeledArrays, LabeledArrays]:
    data = emt_dataset(40, seed=0)
    return data.subset(range(32)), data.subset(range(32, 40))


def test_fit_reference_energies_recovers_linear_energies() -> None:
    data = emt_dataset(12, seed=1)
    data.numbers[data.atoms_ptr[3] : data.atoms_ptr[4]] = 8  # a third species in one structure
    truth = {13: -3.25, 29: -1.5, 8: -432.1}
    data.energy_eV = np.array([sum(truth[z] for z in data.atoms(i).numbers) for i in range(data.n_structures)])
    fitted = fit_reference_energies(data, [29, 8, 13])
    assert fitted.keys() == {8, 13, 29}
    for z, energy in truth.items():
        assert fitted[z] == pytest.approx(energy, abs=1e-9)
    with pytest.raises(ValueError, match="8"):
        fit_reference_energies(data, [13, 29])


def train_once(train: LabeledArrays, val: LabeledArrays, epochs: int) -> tuple[StudentPotential, dict, list]:
    torch.manual_seed(0)
    model = StudentPotential(
        species=SPECIES, cutoff_A=4.5, n_features=32, reference_energies_eV=fit_reference_energies(train, SPECIES)
    )
    settings = TrainSettings(epochs=epochs, batch_size=8, learning_rate=5e-3, warmup_epochs=1, ema_decay=0.9, seed=7)
    calls = []
    history = train_student(model, train, val, settings, on_epoch=lambda epoch, metrics: calls.append(epoch))
    return model, history, calls


def test_training_reduces_validation_force_error(dataset) -> None:
    train, val = dataset
    torch.manual_seed(0)
    untrained = StudentPotential(species=SPECIES, cutoff_A=4.5, n_features=32)
    initial_mae = np.abs(predict(untrained, val)["forces_eV_per_A"] - val.forces_eV_per_A).mean()

    model, history, calls = train_once(train, val, epochs=25)
    epochs = history["epochs"]
    assert calls == list(range(1, 26)) and history["stop_reason"] == "epochs"
    names = {"train_loss", "lr", "val_loss", "val_energy_mae_per_atom_eV", "val_force_mae_eV_per_A", "val_force_rel_rmse"}
    assert names <= set(epochs[0])
    best = epochs[history["best_epoch"] - 1]
    assert best["val_loss"] == min(e["val_loss"] for e in epochs)
    assert best["val_force_mae_eV_per_A"] < 0.3 * initial_mae
    assert best["val_force_rel_rmse"] < 0.5

    prediction = predict(model, val, batch_size=3)  # the best weights are loaded
    mae = np.abs(prediction["forces_eV_per_A"] - val.forces_eV_per_A).mean()
    assert mae == pytest.approx(best["val_force_mae_eV_per_A"], rel=1e-5)
    assert prediction["energy_eV"].shape == (8,) and model.training


def test_training_is_deterministic(dataset) -> None:
    train, val = dataset
    first_model, first, _ = train_once(train, val, epochs=3)
    second_model, second, _ = train_once(train, val, epochs=3)
    assert first == second
    for a, b in zip(first_model.parameters(), second_model.parameters()):
        assert torch.equal(a, b)


def test_predict_stress_and_time_limit(dataset) -> None:
    train, val = dataset
    torch.manual_seed(0)
    model = StudentPotential(species=SPECIES, cutoff_A=4.5, n_features=16)
    stress = predict(model, val, compute_stress=True)["stress_eV_per_A3"]
    assert stress.shape == (8, 3, 3) and np.isfinite(stress).all()
    history = train_student(model, train, val, TrainSettings(epochs=50, batch_size=8, max_minutes=0.0))
    assert history["stop_reason"] == "max_minutes" and len(history["epochs"]) == 1
