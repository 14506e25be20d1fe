"""Student training core: reference energies, a short real training run, determinism."""

import dataclasses

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from ase.calculators.emt import EMT

from mlff_distill.data import LabeledArrays, concatenate_structures
from mlff_distill.settings import TrainSettings, section_settings
from mlff_distill.store import read_labels
from mlff_distill.student import StudentPotential, fit_reference_energies, predict, train_student
from mlff_distill.student.dataset import StructureBlocks, batches_in_epoch, concatenate, shuffled_batches
from mlff_distill.student.fitting import capped_horizon, reference_energy_fit, stress_rms, structure_tensors
from mlff_distill.student.loss import BatchLoss
from mlff_distill.student.model import energy_forces_stress

SPECIES = [13, 29]
STORE_SPECIES = [1, 6, 8, 13, 29]
# The student of the compiled tests here and in test_training.py (and their batches: 2 to 4
# structures, under 29 atoms): torch.compile then compiles the training loss once per test session,
# as TorchDynamo reuses the compiled graph for a new model and loss of the same shapes, and worker
# processes find it in TorchInductor's on-disk cache.
TINY_STUDENT = {"cutoff_A": 4.0, "n_features": 8, "n_interactions": 1}
# The emt_store's crystals: 14 training structures, so that batches of 4 end with one of 2 (a batch
# of 1 structure would compile the loss once more).
STORE_CRYSTALS = 15


pytestmark = pytest.mark.usefixtures("single_thread")


def train_settings(**overrides) -> TrainSettings:
    """The ``train:`` section with the values these tests were written for (eager, no time limit,
    no early stopping) under ``overrides``."""
    values = {
        "epochs": 100,
        "batch_size": 16,
        "learning_rate": 1e-3,
        "weight_decay": 1e-5,
        "energy_weight": 1.0,
        "force_weight": 10.0,
        "stress_weight": 1.0,
        "warmup_epochs": 2,
        "ema_decay": 0.99,
        "max_minutes": None,
        "patience": None,
        "processes": 1,
        "compile": False,
    }
    return section_settings(TrainSettings, "train", {**values, **overrides})


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


def test_compositions_that_fix_only_some_combinations_of_reference_energies_are_named() -> None:
    per_atom = {1: -13.6, 6: -1030.0, 8: -2040.0}

    def labeled(structures: list) -> LabeledArrays:
        arrays = concatenate_structures(structures)
        energies = np.array([sum(per_atom[z] for z in a.numbers) for a in structures])
        return LabeledArrays(forces_eV_per_A=np.zeros_like(arrays["positions_A"]), energy_eV=energies, **arrays)

    structures = [molecule("H2O")] * 3 + [molecule("CH3OH")] * 2 + [molecule("H2O") + molecule("CH3OH")]
    fitted, undetermined = reference_energy_fit(labeled(structures), [1, 6, 7, 8])
    assert undetermined == ["-0.5 H +1 C +1 O"]  # N is absent, not undetermined
    assert fitted[7] == 0.0
    for atoms in structures:  # every training composition is still fitted exactly
        assert sum(fitted[z] for z in atoms.numbers) == pytest.approx(sum(per_atom[z] for z in atoms.numbers))
    fitted, undetermined = reference_energy_fit(labeled(structures + [molecule("CH4")]), [1, 6, 8])
    assert undetermined == []
    assert fitted == pytest.approx(per_atom)


def train_once(train: LabeledArrays, val: LabeledArrays, epochs: int) -> tuple[StudentPotential, dict, list]:
    torch.manual_seed(0)
    model = StudentPotential(
        species=SPECIES, cutoff_A=4.5, n_features=32, reference_energies_eV=fit_reference_energies(train, SPECIES)
    )
    settings = train_settings(epochs=epochs, batch_size=8, learning_rate=5e-3, warmup_epochs=1, ema_decay=0.9)
    calls = []
    history = train_student(model, train, val, settings, seed=7, on_epoch=lambda epoch, metrics: calls.append(epoch))
    return model, history, calls


def test_training_reduces_validation_force_error(dataset) -> None:
    train, val = dataset
    torch.manual_seed(0)
    untrained = StudentPotential(species=SPECIES, cutoff_A=4.5, n_features=32)
    initial_mae = np.abs(predict(untrained, val)["forces_eV_per_A"] - val.forces_eV_per_A).mean()

    model, history, calls = train_once(train, val, epochs=25)
    epochs = history["epochs"]
    assert calls == list(range(1, 26)) and history["stop_reason"] == "epochs"
    names = {
        "train_loss",
        "lr",
        "val_loss",
        "val_energy_mae_per_atom_eV",
        "val_force_mae_eV_per_A",
        "val_force_rel_rmse",
    }
    assert names <= set(epochs[0])
    best = epochs[history["best_epoch"] - 1]
    assert best["val_loss"] == min(e["val_loss"] for e in epochs)
    assert best["val_force_mae_eV_per_A"] < 0.3 * initial_mae
    assert best["val_force_rel_rmse"] < 0.5

    prediction = predict(model, val, batch_size=3)  # the best weights are loaded
    mae = np.abs(prediction["forces_eV_per_A"] - val.forces_eV_per_A).mean()
    assert mae == pytest.approx(best["val_force_mae_eV_per_A"], rel=1e-5)
    assert prediction["energy_eV"].shape == (8,) and model.training


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_training_is_deterministic(emt_store, compile: bool, caplog) -> None:
    """Twice the same history and weights, eager and with the compiled loss (the tiny student on
    the store's crystals and molecules, stress included)."""
    train, val = read_labels(emt_store, "train"), read_labels(emt_store, "val")

    def train_tiny() -> tuple[StudentPotential, dict]:
        torch.manual_seed(0)
        references = fit_reference_energies(train, STORE_SPECIES)
        model = StudentPotential(species=STORE_SPECIES, reference_energies_eV=references, **TINY_STUDENT)
        settings = train_settings(
            epochs=3, batch_size=4, learning_rate=5e-3, warmup_epochs=1, ema_decay=0.9, compile=compile
        )
        return model, train_student(model, train, val, settings, seed=7)

    (first_model, first), (second_model, second) = train_tiny(), train_tiny()
    assert "training eager" not in caplog.text  # the compiled run did not fall back
    assert first == second and first["epochs"][-1]["val_loss"] < first["epochs"][0]["val_loss"]
    for a, b in zip(first_model.parameters(), second_model.parameters()):
        assert torch.equal(a, b)


def test_predict_stress_and_time_limit(dataset) -> None:
    train, val = dataset
    torch.manual_seed(0)
    model = StudentPotential(species=SPECIES, cutoff_A=4.5, n_features=16)
    stress = predict(model, val, compute_stress=True)["stress_eV_per_A3"]
    assert stress.shape == (8, 3, 3) and np.isfinite(stress).all()
    # The schema's smallest time limits are positive; 0 (as any limit shorter than one step) stops
    # training after its first step.
    settings = dataclasses.replace(train_settings(epochs=50, batch_size=8), max_minutes=0.0)
    history = train_student(model, train, val, settings, seed=0)
    assert history["stop_reason"] == "max_minutes" and len(history["epochs"]) == 1
    with pytest.raises(ValueError, match="0 validation structures"):
        train_student(model, train, val.subset([]), train_settings(epochs=1), seed=0)


@pytest.fixture(scope="module")
def emt_store(tmp_path_factory):
    from test_training import write_emt_store

    path = tmp_path_factory.mktemp("store") / "labels.zarr"
    write_emt_store(path, n_crystals=STORE_CRYSTALS, seed=0)
    return path


def test_block_reading_covers_the_split_once_per_epoch(emt_store) -> None:
    whole = read_labels(emt_store, "train")
    blocks = StructureBlocks.from_store(emt_store, "train", max_in_memory_bytes=0, block_atoms=10)
    assert blocks.in_memory_data is None and len(blocks) > 3 and blocks.n_structures == whole.n_structures
    assert StructureBlocks.from_store(emt_store, "train", max_in_memory_bytes=1e9).in_memory_data is not None
    np.testing.assert_array_equal(concatenate(list(blocks.blocks())).positions_A, whole.positions_A)

    generator = torch.Generator().manual_seed(0)
    epochs = [list(shuffled_batches(blocks, 4, generator, buffer_blocks=2)) for _ in range(2)]
    for batches in epochs:
        assert len(batches) == batches_in_epoch(whole.n_structures, 4) == whole.n_structures // 4
        assert all(b.n_structures == 4 for b in batches[:-1]) and 4 <= batches[-1].n_structures < 8
        np.testing.assert_array_equal(np.sort(np.concatenate([b.energy_eV for b in batches])), np.sort(whole.energy_eV))
    assert not np.array_equal(epochs[0][0].energy_eV, epochs[1][0].energy_eV)  # reshuffled each epoch

    references = fit_reference_energies(blocks, SPECIES + [1, 6, 8])
    expected = fit_reference_energies(whole, SPECIES + [1, 6, 8])
    assert references == pytest.approx(expected, abs=1e-9)
    with pytest.raises(ValueError, match="split 'training'"):
        StructureBlocks.from_store(emt_store, "training", max_in_memory_bytes=0)


def test_training_from_store_blocks_is_deterministic(emt_store) -> None:
    def train_from_blocks():
        train = StructureBlocks.from_store(emt_store, "train", max_in_memory_bytes=0, block_atoms=10)
        val = StructureBlocks.from_store(emt_store, "val", max_in_memory_bytes=0, block_atoms=10)
        torch.manual_seed(0)
        model = StudentPotential(species=STORE_SPECIES, **TINY_STUDENT)
        settings = train_settings(epochs=2, batch_size=4, warmup_epochs=1, shuffle_buffer_blocks=2)
        return model, train_student(model, train, val, settings, seed=1)

    (first, history), (second, again) = train_from_blocks(), train_from_blocks()
    assert history == again and "val_stress_rmse_eV_per_A3" in history["epochs"][0]
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), second.parameters()))


def reference_loss(model: StudentPotential, batch: LabeledArrays, stress_weight: float, scale: float) -> torch.Tensor:
    """The loss written out with the autograd engine (create_graph=True), as `BatchLoss` defines it."""
    inputs = structure_tensors(batch, torch.device("cpu"))
    energy, forces, stress = energy_forces_stress(model, **inputs, compute_stress=True, create_graph=True)
    n_atoms = torch.as_tensor(np.diff(batch.atoms_ptr), dtype=torch.float64)
    loss = (
        3.0 * (((energy - torch.as_tensor(batch.energy_eV)) / n_atoms) ** 2).mean()
        + 7.0 * ((forces - torch.as_tensor(batch.forces_eV_per_A, dtype=forces.dtype)) ** 2).mean()
    )
    periodic = torch.as_tensor(batch.pbc.all(axis=1))
    stress_target = torch.as_tensor(batch.stress_eV_per_A3, dtype=stress.dtype)[periodic]
    return loss + stress_weight * (((stress[periodic] - stress_target) / scale) ** 2).mean()


def test_on_policy_frames_energy_errors_count_their_weight(emt_store) -> None:
    """The store's sample indices travel with the batch; those given as on-policy count the
    energy error ``reduced_energy_weight`` times, their forces in full."""
    data = read_labels(emt_store)
    batch = data.subset([0, 1, 2, data.n_structures - 1])
    assert batch.sample_index.tolist() == data.sample_index[[0, 1, 2, -1]].tolist()
    torch.manual_seed(0)
    model = StudentPotential(species=STORE_SPECIES, cutoff_A=4.0, n_features=8).double()
    energy, _, _ = energy_forces_stress(model, **structure_tensors(batch, torch.device("cpu")), compute_stress=False)
    squared = ((energy.detach().numpy() - batch.energy_eV) / batch.n_atoms) ** 2
    on_policy = batch.sample_index[[1, 3]]
    full = BatchLoss(3.0, 7.0, 0.0, 0.0, compile=False)(model, batch)
    weighted = BatchLoss(
        3.0, 7.0, 0.0, 0.0, compile=False, reduced_energy_samples=on_policy, reduced_energy_weight=0.1
    )(model, batch)
    expected = 3.0 * np.mean(squared * np.array([1.0, 0.1, 1.0, 0.1])) - 3.0 * np.mean(squared)
    assert abs(expected) > 1e-9
    assert (weighted - full).item() == pytest.approx(expected, rel=1e-9)


def test_stress_term_counts_periodic_structures_only(emt_store) -> None:
    data = read_labels(emt_store)
    batch = data.subset([0, 1, data.n_structures - 1])  # two crystals and a molecule (NaN stress)
    torch.manual_seed(0)
    model = StudentPotential(species=STORE_SPECIES, cutoff_A=4.0, n_features=8).double()
    scale = stress_rms(data)
    assert scale == pytest.approx(np.sqrt(np.nanmean(data.stress_eV_per_A3[:-2] ** 2)))
    without = BatchLoss(3.0, 7.0, 0.0, scale, compile=False)(model, batch)
    with_stress = BatchLoss(3.0, 7.0, 2.5, scale, compile=False)(model, batch)
    _, _, stress = energy_forces_stress(model, **structure_tensors(batch, torch.device("cpu")), compute_stress=True)
    expected = 2.5 * np.mean(((stress[:2].numpy() - batch.stress_eV_per_A3[:2]) / scale) ** 2)
    assert torch.isfinite(with_stress) and expected > 1e-6
    assert (with_stress - without).item() == pytest.approx(expected, rel=1e-9)
    assert with_stress.item() == pytest.approx(reference_loss(model, batch, 2.5, scale).item(), rel=1e-9)


def test_compiled_loss_gives_the_weights_the_same_gradient(emt_store) -> None:
    """torch.compile of the loss (forces and stress by torch.func.grad inside one graph) against
    the autograd engine's double backward, on a batch of crystals and a molecule."""
    data = read_labels(emt_store)
    batch = data.subset([0, 1, 2, data.n_structures - 1])
    torch.manual_seed(0)
    model = StudentPotential(species=STORE_SPECIES, **TINY_STUDENT)
    scale = stress_rms(data)
    compiled = BatchLoss(3.0, 7.0, 2.5, scale, compile=True)
    gradients = []
    for loss in (reference_loss(model, batch, 2.5, scale), compiled(model, batch)):
        gradients.append(torch.autograd.grad(loss, list(model.parameters())))
    assert compiled.compiled, "torch.compile fell back to eager"
    for expected, got in zip(*gradients):
        scale_of = expected.abs().max().item()
        assert scale_of > 0 and (got - expected).abs().max().item() <= 1e-4 * scale_of


def test_capped_horizon_follows_recent_epochs() -> None:
    # 10 epochs done, 100 s left: at 10 s an epoch 10 more fit; at 1 s all 150 do.
    assert capped_horizon(10, 150, [10.0] * 10, 100.0) == 20
    assert capped_horizon(10, 150, [1.0] * 10, 100.0) == 110
    assert capped_horizon(10, 50, [1.0] * 10, 100.0) == 50
    # A slow start (another job on the machine) is forgotten once epochs get faster again.
    assert capped_horizon(20, 150, [40.0] * 15 + [10.0] * 5, 300.0) == 50
    assert capped_horizon(5, 150, [10.0] * 5, -3.0) == 6  # out of time: end after the next epoch
