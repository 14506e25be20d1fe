"""Sampling: seeds, rattling, teacher MD, filtering and group-wise splits."""

import logging

import numpy as np
import pytest
from ase.io import read

from mlff_distill.sampling.sampler import (
    assign_splits,
    min_distance_A,
    rattled,
    sample_structures,
    teacher_md,
    write_structures,
)
from mlff_distill.sampling.seeds import seed_molecules
from mlff_distill.settings import SampleSettings, section_settings
from mlff_distill.teachers.ase_calculator import AseCalculatorTeacher


def test_unknown_molecule_is_named():
    with pytest.raises(ValueError, match="XeF9"):
        seed_molecules(["H2O", "XeF9"])


def test_rattle_displaces_within_sigma_range():
    seed = seed_molecules(["CH3CH2OH"])[0]
    structures = rattled(seed, 50, (0.05, 0.1), np.random.default_rng(0))
    for atoms in structures:
        displacement = atoms.positions - seed.positions
        assert 0.0 < displacement.std() < 0.2
        assert 0.05 <= atoms.info["sigma_A"] <= 0.1
        assert atoms.info == {**atoms.info, "seed": "CH3CH2OH", "strategy": "rattle"}


def test_splits_never_share_a_group():
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(30), rng.integers(1, 12, size=30))
    splits = assign_splits(groups, 0.15, 0.15, rng)
    for group in np.unique(groups):
        assert len({splits[i] for i in np.flatnonzero(groups == group)}) == 1
    fractions = {s: splits.count(s) / len(splits) for s in ("train", "val", "test")}
    assert fractions["val"] >= 0.15 and fractions["test"] >= 0.15 and fractions["train"] > 0.4


def test_min_distance():
    water = seed_molecules(["H2O"])[0]
    assert min_distance_A(water) == pytest.approx(np.linalg.norm(water.positions[0] - water.positions[1]))


def test_teacher_md_and_full_sampling(ani1x_teacher, tmp_path):
    md = {
        "timestep_fs": 0.5,
        "friction_per_fs": 0.02,
        "equilibration_steps": 5,
        "frames_per_trajectory": 3,
        "steps_between_frames": 4,
    }
    settings = section_settings(
        SampleSettings,
        "sample",
        {
            "molecules": ["H2O", "NH3"],
            "rattle": {"structures_per_seed": 4, "sigma_A": [0.02, 0.1]},
            "md": {**md, "temperatures_K": [300.0]},
            "normal_modes": {"structures_per_seed": 0},
            "min_distance_A": 0.6,
            "val_fraction": 0.2,
            "test_fraction": 0.2,
        },
    )
    seed = seed_molecules(["H2O"])[0]
    frames = teacher_md(seed, ani1x_teacher, 300.0, settings.md, np.random.default_rng(0))
    assert len(frames) == 3
    assert not np.allclose(frames[0].positions, frames[1].positions)
    # bonds stay bonds at 300 K over a few fs
    assert all(0.8 < min_distance_A(f) < 1.2 for f in frames)

    structures = sample_structures(settings, 0, ani1x_teacher, False, logging.getLogger("test"))
    assert len(structures) == 2 * 4 + 2 * 3
    path = tmp_path / "s.extxyz"
    write_structures(structures, path)
    back = read(path, ":")
    assert [a.info["sample_index"] for a in back] == list(range(len(structures)))
    md_groups = {a.info["group"]: a.info["split"] for a in back if a.info["strategy"] == "md"}
    for atoms in back:
        if atoms.info["strategy"] == "md":
            assert atoms.info["split"] == md_groups[atoms.info["group"]]


def test_test_files_are_the_test_split(tmp_path):
    """Frames of ``test_files`` form the test split as given; nothing sampled is held out."""
    from ase.build import molecule
    from ase.io import write

    test_file = tmp_path / "held_out.extxyz"
    write(test_file, [molecule("CH3CH2OH"), molecule("C6H6")])
    settings = section_settings(
        SampleSettings,
        "sample",
        {
            "molecules": ["H2O"],
            "rattle": {"structures_per_seed": 5},
            "md": {"frames_per_trajectory": 0},
            "normal_modes": {"structures_per_seed": 0},
            "test_files": [str(test_file)],
        },
    )
    emt = AseCalculatorTeacher("ase.calculators.emt:EMT")
    structures = sample_structures(settings, 0, emt, False, logging.getLogger("test"))
    tests = [a for a in structures if a.info["split"] == "test"]
    assert [a.get_chemical_formula() for a in tests] == ["C2H6O", "C6H6"]
    assert all(a.info["strategy"] == "test-file" for a in tests)
    assert len(structures) == 7 and [a.info["sample_index"] for a in structures] == list(range(7))
    assert len({a.info["group"] for a in structures}) == 7
