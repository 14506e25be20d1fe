"""Sampling: seeds, rattling, teacher MD, targets, filtering and group-wise splits."""

import collections
import logging

import numpy as np
import pytest
from ase import Atoms
from ase.io import read, write

from mlff_distill.sampling import condensed, sampler
from mlff_distill.sampling.sampler import (
    assign_splits,
    min_distance_A,
    rattled,
    sample_structures,
    teacher_md,
    write_structures,
)
from mlff_distill.sampling.seeds import seed_molecules
from mlff_distill.sampling.targets import targets_from
from mlff_distill.settings import SampleSettings, TargetSettings, section_settings
from mlff_distill.teachers import TeacherCalculator
from mlff_distill.teachers.ase_calculator import AseCalculatorTeacher

LOGGER = logging.getLogger("test")


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


def test_groups_kept_in_training_stay_there_and_the_others_fill_validation():
    groups = [0] * 20 + list(range(1, 21))  # one trajectory of 20 frames, then 20 single structures
    draws = [np.random.default_rng(seed) for seed in range(20)]
    assert any(assign_splits(groups, 0.25, 0.0, rng)[0] == "val" for rng in draws)  # a draw can take it
    for seed in range(20):
        splits = assign_splits(groups, 0.25, 0.0, np.random.default_rng(seed), always_train={0})
        assert set(splits[:20]) == {"train"} and splits.count("val") >= 0.25 * len(groups)


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
    frames = teacher_md(seed, TeacherCalculator(ani1x_teacher), 300.0, settings.md, np.random.default_rng(0))
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


# ------------------------------------------------------------------------------------- targets


def cu2_target_settings(tmp_path, **overrides):
    """Target settings for a box of 8 Cu2 'molecules' (EMT is cheap), tiny MD, and its targets."""
    dimer = tmp_path / "cu2.xyz"
    write(dimer, Atoms("Cu2", positions=[[0, 0, 0], [2.3, 0, 0]]))
    system = {"name": "cu", "box": {str(dimer): 8}, "density_g_per_cm3": 4.0, "temperatures_K": [300]}
    system.update(overrides.pop("system", {}))
    settings = section_settings(
        TargetSettings,
        "target",
        {
            "systems": [system],
            "min_distance_A": 2.2,
            "md": {
                "trajectories": 2,
                "relax_steps": 2,
                "equilibration_steps": 2,
                "frames_per_trajectory": 3,
                "steps_between_frames": 2,
            },
            "rattle": {"structures_per_frame": 1},
            "clusters": {"per_frame": 1, "sizes": [2]},
            "test": {"trajectories": 1, "frames_per_trajectory": 2},
            **overrides,
        },
    )
    return settings, targets_from(settings.systems)


def legacy_settings():
    return section_settings(
        SampleSettings,
        "sample",
        {
            "molecules": ["H2O"],
            "rattle": {"structures_per_seed": 4},
            "md": {"frames_per_trajectory": 0},
            "normal_modes": {"structures_per_seed": 0},
            "val_fraction": 0.3,
            "test_fraction": 0.3,
        },
    )


def with_targets(settings, teacher, targets, target_settings, molecule_only=False):
    """What the sample stage does with targets: check each (before any MD), its groups, then gather."""
    sampler.check_targets(targets, teacher, molecule_only, target_settings.min_distance_A, np.random.default_rng(3))
    training, test = [], []
    for target in targets:
        more_training, more_test = sampler.target_groups(target, target_settings, TeacherCalculator(teacher), 0, LOGGER)
        training, test = training + more_training, test + more_test
    return sample_structures(settings, 0, teacher, molecule_only, LOGGER, training, test)


def test_targets_give_training_groups_and_the_test_split(tmp_path, monkeypatch):
    starts = {"md": [], "test-md": []}
    original = condensed.target_start

    def recorded(target, rng, min_distance_A):
        atoms = original(target, rng, min_distance_A)
        starts["test-md" if rng is test_rng[0] else "md"].append(atoms.positions.copy())
        return atoms

    test_rng = [None]
    original_trajectories = condensed.target_trajectories

    def trajectories(target, settings, md_calculator, rng, logger, test):
        if test:
            test_rng[0] = rng
        return original_trajectories(target, settings, md_calculator, rng, logger, test)

    monkeypatch.setattr(condensed, "target_start", recorded)
    monkeypatch.setattr(sampler, "target_trajectories", trajectories)
    emt = AseCalculatorTeacher("ase.calculators.emt:EMT")
    target_settings, targets = cu2_target_settings(tmp_path)
    structures = with_targets(legacy_settings(), emt, targets, target_settings)

    by_strategy = collections.Counter(a.info["strategy"] for a in structures)
    assert by_strategy == {"rattle": 4, "md": 6, "rattle-strain": 6, "cluster": 6, "test-md": 2}
    assert [a.info["sample_index"] for a in structures] == list(range(24))
    tests = [a for a in structures if a.info["split"] == "test"]
    assert {a.info["strategy"] for a in tests} == {"test-md"} and len(tests) == 2  # test_fraction is ignored
    splits_of_group = collections.defaultdict(set)
    strategies_of_group = collections.defaultdict(set)
    for atoms in structures:
        splits_of_group[atoms.info["group"]].add(atoms.info["split"])
        strategies_of_group[atoms.info["group"]].add(atoms.info["strategy"])
    assert all(len(splits) == 1 for splits in splits_of_group.values())
    first_trajectory = min(a.info["group"] for a in structures if a.info["strategy"] == "md")
    assert splits_of_group[first_trajectory] == {"train"}  # the target at 300 K is in training
    # a trajectory's rattled copies and clusters share its group (and so its split)
    assert sum(s == {"cluster", "md", "rattle-strain"} for s in strategies_of_group.values()) == 2
    assert len(starts["md"]) == 2 and len(starts["test-md"]) == 1
    assert not any(np.allclose(test, train) for test in starts["test-md"] for train in starts["md"])
    write_structures(structures, tmp_path / "s.extxyz")
    back = read(tmp_path / "s.extxyz", ":")
    assert sum("molecule_index" in atoms.arrays for atoms in back) == 6 + 6 + 6 + 2  # all but the water rattles
    for atoms, written in zip(back, structures):
        assert atoms.info["strategy"] == written.info["strategy"]
        assert atoms.info.get("target") == written.info.get("target")
        if "molecule_index" in written.arrays:
            assert atoms.arrays["molecule_index"].tolist() == written.arrays["molecule_index"].tolist()

    # more test trajectories leave the training data as it was
    more_tests, _ = cu2_target_settings(tmp_path, test={"trajectories": 2, "frames_per_trajectory": 2})
    again = with_targets(legacy_settings(), emt, targets, more_tests)
    assert sum(a.info["split"] == "test" for a in again) == 4
    trained = [a for a in structures if a.info["split"] != "test"]
    trained_again = [a for a in again if a.info["split"] != "test"]
    assert len(trained) == len(trained_again) == 22
    for first, second in zip(trained, trained_again):
        assert np.array_equal(first.positions, second.positions) and first.info["split"] == second.info["split"]


def test_targets_are_checked_before_any_teacher_md(tmp_path, monkeypatch):
    def no_md(*args, **kwargs):
        raise AssertionError("teacher MD ran before the targets were checked")

    monkeypatch.setattr(sampler, "teacher_md", no_md)
    monkeypatch.setattr(condensed, "teacher_md", no_md)
    settings = legacy_settings()
    target_settings, targets = cu2_target_settings(tmp_path)
    oxygen_hydrogen = AseCalculatorTeacher("ase.calculators.emt:EMT", species=[1, 8])
    with pytest.raises(ValueError, match=r"target cu: .*holds Cu, which .* does not cover"):
        with_targets(settings, oxygen_hydrogen, targets, target_settings)
    emt = AseCalculatorTeacher("ase.calculators.emt:EMT")
    with pytest.raises(ValueError, match=r"target cu: .*molecules only"):
        with_targets(settings, emt, targets, target_settings, molecule_only=True)
    dense_settings, dense = cu2_target_settings(tmp_path, system={"density_g_per_cm3": 12.0})
    with pytest.raises(ValueError, match=r"target cu: density_g_per_cm3=12.0"):
        with_targets(settings, emt, dense, dense_settings)
