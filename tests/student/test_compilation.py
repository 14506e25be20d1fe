"""The precompile stage's batch, record and logging (the cache reuse itself: test_pipeline)."""

import json
import logging

import numpy as np
from ase.build import bulk, molecule

from conftest import full_config
from mlff_distill.logs import stage_logger
from mlff_distill.precompile import attempt, run, unlabeled_batch


def test_batch_of_molecules_has_no_stress_labels():
    seeds = [molecule("H2O"), molecule("CH4")]
    batch = unlabeled_batch(seeds, 5, with_hessian=False)
    assert batch.n_structures == 5
    assert list(batch.n_atoms) == [3, 5, 3, 5, 3]
    assert batch.stress_eV_per_A3 is None and not batch.has_hessian
    assert not batch.forces_eV_per_A.any() and not batch.energy_eV.any()


def test_batch_with_crystals_has_stress_labels_for_them_only():
    seeds = [bulk("Si", cubic=True), molecule("H2O")]
    batch = unlabeled_batch(seeds, 4, with_hessian=True)
    periodic = batch.pbc.all(axis=1)
    assert list(periodic) == [True, False, True, False]
    assert (batch.stress_eV_per_A3[periodic] == 0).all()
    assert np.isnan(batch.stress_eV_per_A3[~periodic]).all()
    assert batch.has_hessian and batch.hessian_direction.shape == batch.positions_A.shape


def test_nothing_to_compile_is_recorded(tmp_path):
    config = full_config({"train": {"compile": False}})
    record_file = tmp_path / "precompile" / "compiled.json"
    run(config, record_file, tmp_path / "cache", tmp_path / "precompile.log", threads=1)
    assert json.loads(record_file.read_text()) == {"training_loss": {"skipped": "train.compile is false"}}
    assert not (tmp_path / "cache").exists()


def test_stage_log_holds_the_messages_of_the_modules_it_calls(tmp_path):
    log_file = tmp_path / "train.log"
    stage_logger("train", log_file).info("from the stage")
    logging.getLogger("mlff_distill.student.loss").info("from the loss module")
    text = log_file.read_text()
    assert "mlff_distill.train INFO from the stage" in text
    assert "mlff_distill.student.loss INFO from the loss module" in text


def test_a_failed_attempt_is_recorded_and_warned_about(caplog):
    def fails() -> dict:
        raise ValueError("box smaller than the cutoff")

    with caplog.at_level(logging.WARNING):
        assert attempt(fails, "inference path", logging.getLogger("mlff_distill.precompile")) == {
            "error": "ValueError: box smaller than the cutoff"
        }
        assert attempt(lambda: {"seconds": 1.0}, "training loss", logging.getLogger("x")) == {"seconds": 1.0}
    assert "precompiling the inference path failed" in caplog.text
