"""Training from a label store: killed after some epochs and resumed it ends with the uninterrupted
run's weights; in two processes it is reproducible; warm-started from a previous student's weights."""

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from ase.calculators.emt import EMT

from mlff_distill.data import concatenate_structures
from mlff_distill.settings import StudentSettings, TrainSettings, section_settings
from mlff_distill.store import ARRAYS, combine_shards, store_checksum, write_shard
from mlff_distill.student.model import StudentPotential
from mlff_distill.student.training import fit, state_path_for, training_fingerprint, weights_sha256

pytestmark = pytest.mark.usefixtures("single_thread")


def write_emt_store(path, n_crystals: int, seed: int) -> None:
    """A label store of rattled, strained Cu/Al cells and two Cu-free molecules, labelled with EMT."""
    rng = np.random.default_rng(seed)
    structures = []
    for _ in range(n_crystals):
        atoms = bulk("Cu", "fcc", a=3.7, cubic=True)
        atoms.numbers[rng.random(len(atoms)) < 0.4] = 13
        atoms.set_cell(atoms.cell.array @ (np.eye(3) + rng.normal(scale=0.02, size=(3, 3))), scale_atoms=True)
        atoms.positions += rng.normal(scale=0.1, size=atoms.positions.shape)
        structures.append(atoms)
    structures += [molecule("CH4"), molecule("H2O")]
    energy, forces, stress = [], [], []
    for atoms in structures:
        atoms.calc = EMT()
        energy.append(atoms.get_potential_energy())
        forces.append(atoms.get_forces())
        stress.append(atoms.get_stress(voigt=False) if atoms.pbc.all() else np.full((3, 3), np.nan))
    n = len(structures)
    split = np.zeros(n, dtype=np.int8)
    split[[1, 5, n - 1]] = 1  # validation: two crystals and a molecule
    arrays = {
        **concatenate_structures(structures),
        "forces_eV_per_A": np.concatenate(forces),
        "energy_eV": np.array(energy),
        "energy_std_eV": np.zeros(n),
        "stress_eV_per_A3": np.array(stress),
        "split": split,
        "group": np.arange(n),
        "sample_index": np.arange(n),
    }
    assert set(arrays) == set(ARRAYS)
    write_shard(path.parent / "shard", arrays)
    combine_shards([path.parent / "shard"], path, {"teacher": "emt"})


SEED = 3
# The tiny student of test_fitting.py's compiled tests: the compiled loss is shared (see there).
STUDENT = section_settings(StudentSettings, "student", {"cutoff_A": 4.0, "n_features": 8, "n_interactions": 1})
# 14 training structures: batches of 4 end with one of 2 (one of 1 would compile the loss again).
N_CRYSTALS, N_TRAIN = 15, 14


def train_settings(**overrides) -> TrainSettings:
    """A short compiled training run in one process (the default training's loss weights)."""
    values = {
        "epochs": 5,
        "batch_size": 4,
        "learning_rate": 5e-3,
        "warmup_epochs": 1,
        "ema_decay": 0.9,
        "patience": 100,
        "max_minutes": 10,
        "processes": 1,
        "compile": True,
    }
    return section_settings(TrainSettings, "train", {**values, **overrides})


# Runs in a fresh interpreter and kills itself (SIGKILL) during epoch 3's logging, before that
# epoch's state is saved: the state on disk is the one after epoch 2.
KILLED_RUN = """
import logging, os, pickle, signal, sys
import torch
torch.set_num_threads(1)
from mlff_distill.student.training import fit
student, train, seed, store, state = pickle.load(open(sys.argv[1], "rb"))
def on_epoch(epoch, metrics):
    if epoch == 3:
        os.kill(os.getpid(), signal.SIGKILL)
fit(student, train, seed, store, state, logging.getLogger("killed"), on_epoch)
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("labels") / "labels.zarr"
    write_emt_store(path, n_crystals=N_CRYSTALS, seed=0)
    return path


def test_killed_training_resumes_to_the_uninterrupted_result(store, tmp_path, caplog) -> None:
    import pickle

    train = train_settings()
    reference, reference_history, info = fit(
        STUDENT, train, SEED, store, tmp_path / "full" / "state.pt", logging.getLogger("full")
    )
    assert info["train_stress_rms_eV_per_A3"] > 0 and info["n_train"] == N_TRAIN
    assert "val_stress_rel_rmse" in reference_history["epochs"][-1]  # stress is trained and validated

    state = state_path_for(tmp_path / "run" / "train" / "student.pt")
    (tmp_path / "args.pkl").write_bytes(pickle.dumps((STUDENT, train, SEED, store, state)))
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_RUN, str(tmp_path / "args.pkl")], capture_output=True, text=True, timeout=300
    )
    assert killed.returncode == -9, killed.stderr
    assert torch.load(state, weights_only=True)["state"]["epoch"] == 2

    logged = []
    with caplog.at_level(logging.INFO, logger="resumed"):
        resumed, history, _ = fit(
            STUDENT,
            train,
            SEED,
            store,
            state,
            logging.getLogger("resumed"),
            on_epoch=lambda epoch, metrics: logged.append(epoch),
        )
    assert "resuming from" in caplog.text and "after epoch 2" in caplog.text
    assert logged == [1, 2, 3, 4, 5]  # the saved epochs are replayed to the new tracker run
    assert history == reference_history
    for (name, a), b in zip(resumed.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), name

    # A finished state returns at once with the same result.
    again, history_again, _ = fit(STUDENT, train, SEED, store, state, logging.getLogger("resumed"))
    assert history_again == reference_history
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), reference.state_dict().values()))


def test_state_of_another_config_or_store_is_not_resumed(store, tmp_path, caplog) -> None:
    state = tmp_path / "state.pt"
    fit(STUDENT, train_settings(epochs=1), SEED, store, state, logging.getLogger("first"))
    with caplog.at_level(logging.INFO, logger="second"):
        _, history, _ = fit(STUDENT, train_settings(epochs=2), SEED, store, state, logging.getLogger("second"))
    assert "different config_hash: starting fresh" in caplog.text
    assert [row["epoch"] for row in history["epochs"]] == [1, 2]

    other = tmp_path / "other" / "labels.zarr"
    write_emt_store(other, n_crystals=N_CRYSTALS, seed=1)
    assert store_checksum(other) != store_checksum(store)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="third"):
        fit(STUDENT, train_settings(epochs=2), SEED, other, state, logging.getLogger("third"))
    assert "different store_sha256: starting fresh" in caplog.text

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="fourth"):
        _, history, _ = fit(
            STUDENT, train_settings(epochs=2, resume=False), SEED, other, state, logging.getLogger("fourth")
        )
    assert "resuming" not in caplog.text and len(history["epochs"]) == 2


@pytest.mark.slow  # four fresh interpreters, each importing torch and loading the compiled loss from the cache
def test_training_in_two_processes_is_reproducible(store, tmp_path, monkeypatch, caplog) -> None:
    """Two data-parallel worker processes (gloo): every epoch reported here, the same weights in
    both workers (checked by train_in_processes) and twice the same result; the state is saved.
    The workers' warning about reference energies (CH4 the only training structure with H and C)
    reaches the caller's logger. Paths relative to the working directory, as in a Snakemake job."""
    train = train_settings(epochs=3, processes=2)
    monkeypatch.chdir(tmp_path)
    results = []
    for run in ("first", "second"):
        logged = []
        model, history, info = fit(
            STUDENT,
            train,
            SEED,
            store,
            Path(run) / "state.pt",
            logging.getLogger(run),
            on_epoch=lambda epoch, metrics: logged.append(epoch),
        )
        assert logged == [1, 2, 3] and info["n_train"] == N_TRAIN
        assert info["undetermined_reference_combinations"] == ["-0.25 H +1 C"]
        assert "1 combination(s) of the reference energies undetermined (-0.25 H +1 C)" in caplog.text
        caplog.clear()
        assert (tmp_path / run / "rank-1.log").exists()
        assert torch.load(tmp_path / run / "state.pt", weights_only=True)["state"]["epoch"] == 3
        results.append((model, history))
    (first, history), (second, again) = results
    assert history == again and history["epochs"][-1]["val_loss"] < history["epochs"][0]["val_loss"]
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))


def test_failing_training_process_is_reported(tmp_path) -> None:
    with pytest.raises(RuntimeError, match=r"training process [01] exited with 1"):  # whichever fails first
        fit(
            STUDENT,
            train_settings(processes=2),
            SEED,
            tmp_path / "missing.zarr",
            tmp_path / "state.pt",
            logging.getLogger("failing"),
        )


def test_warm_start_begins_at_the_initial_weights_validation_error(store, tmp_path, caplog) -> None:
    """A fit from a trained student's weights, at a negligible learning rate, validates as that
    student did, not as a fresh model; its resume state is not taken by a fresh fit."""
    training = train_settings(epochs=15, learning_rate=2e-2, ema_decay=0.0, compile=False)
    trained, history, _ = fit(STUDENT, training, SEED, store, tmp_path / "a.pt", logging.getLogger("a"))
    trained_error = history["epochs"][history["best_epoch"] - 1]["val_force_rmse_eV_per_A"]
    still = train_settings(epochs=1, learning_rate=1e-12, warmup_epochs=0, compile=False)
    weights = {name: value.clone() for name, value in trained.state_dict().items()}
    _, warm, info = fit(STUDENT, still, SEED + 1, store, tmp_path / "b.pt", logging.getLogger("b"), None, weights)
    with caplog.at_level(logging.INFO, logger="c"):
        _, fresh, _ = fit(STUDENT, still, SEED + 1, store, tmp_path / "b.pt", logging.getLogger("c"))
    assert "different initial_weights_sha256: starting fresh" in caplog.text
    assert "contact wall of 50 eV/A^3 below (A) " in caplog.text  # the schema's default stiffness

    warm_error = warm["epochs"][0]["val_force_rmse_eV_per_A"]
    fresh_error = fresh["epochs"][0]["val_force_rmse_eV_per_A"]
    assert warm_error == pytest.approx(trained_error, rel=1e-4)
    assert fresh_error > 1.1 * trained_error  # about 2.2 against 1.9 eV/A
    assert info["reference_energies_eV"] == pytest.approx(
        dict(zip(trained.species, trained.reference_energies_eV.tolist()))
    )

    plain = training_fingerprint(STUDENT, still, SEED, store)
    warm_fingerprint = training_fingerprint(STUDENT, still, SEED, store, weights)
    weights["readout.0.weight"] = weights["readout.0.weight"] + 1e-6
    assert "initial_weights_sha256" not in plain and info["initial_weights_sha256"] != weights_sha256(weights)
    assert (
        warm_fingerprint["initial_weights_sha256"]
        != training_fingerprint(STUDENT, still, SEED, store, weights)["initial_weights_sha256"]
    )


@pytest.mark.slow  # two fresh interpreters
def test_warm_start_in_two_processes(store, tmp_path) -> None:
    """The workers load the initial weights from a file: they validate as the given student did."""
    training = train_settings(epochs=3, learning_rate=2e-2, ema_decay=0.0, compile=False)
    trained, history, _ = fit(STUDENT, training, SEED, store, tmp_path / "a.pt", logging.getLogger("a"))
    trained_error = history["epochs"][history["best_epoch"] - 1]["val_force_rmse_eV_per_A"]
    still = train_settings(epochs=1, learning_rate=1e-12, warmup_epochs=0, compile=False, processes=2)
    _, warm, info = fit(
        STUDENT, still, SEED, store, tmp_path / "b.pt", logging.getLogger("b"), None, trained.state_dict()
    )
    assert warm["epochs"][0]["val_force_rmse_eV_per_A"] == pytest.approx(trained_error, rel=1e-4)
    assert info["initial_weights_sha256"] == weights_sha256(trained.state_dict())


def test_initial_weights_of_another_size_are_refused(store, tmp_path) -> None:
    other = StudentPotential(species=[1, 6, 8, 13, 29], cutoff_A=4.0, n_features=16, n_interactions=1)
    with pytest.raises(ValueError, match=r"not those of a student like this one .* other shapes \['embedding.weight"):
        fit(
            STUDENT,
            train_settings(epochs=1, compile=False),
            SEED,
            store,
            tmp_path / "state.pt",
            logging.getLogger("other"),
            initial_weights=other.state_dict(),
        )
