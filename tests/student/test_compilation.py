"""Ahead-of-use compilation: the batch the training loss is compiled on, and failed attempts (the
precompile stage's record: tests/stages/test_precompile_stage.py; the cache reuse itself:
tests/workflow/test_pipeline.py)."""

import logging

import numpy as np
from ase.build import bulk, molecule
from torch._inductor.runtime.cache_dir_utils import default_cache_dir

from mlff_distill.student.compilation import attempt, species_of, unlabeled_batch, use_compile_cache


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
    assert species_of(seeds) == [1, 8, 14]


def test_a_failed_attempt_is_recorded_and_warned_about(caplog):
    def fails() -> dict:
        raise ValueError("box smaller than the cutoff")

    with caplog.at_level(logging.WARNING):
        assert attempt(fails, "inference path", logging.getLogger("mlff_distill.precompile")) == {
            "error": "ValueError: box smaller than the cutoff"
        }
        assert attempt(lambda: {"seconds": 1.0}, "training loss", logging.getLogger("x")) == {"seconds": 1.0}
    assert "precompiling the inference path failed" in caplog.text


def test_the_run_cache_replaces_pytorchs_default_but_not_the_users_choice(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())  # as any process that imported torch has
    assert use_compile_cache(tmp_path / "run") == str(tmp_path / "run")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert use_compile_cache(tmp_path / "run") == str(tmp_path / "mine")
    assert use_compile_cache(None) is None
