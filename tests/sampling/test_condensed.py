"""The targets' data: molecular clusters cut from boxes, teacher MD of targets, derived structures."""

import dataclasses
import logging

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from ase.geometry import find_mic
from ase.io import write

from mlff_distill.sampling.boxes import pack_box
from mlff_distill.sampling.condensed import (
    derived_structures,
    equilibrated_frames,
    md_of_test_runs,
    molecular_clusters,
    target_trajectories,
    training_teacher_md_samples,
)
from mlff_distill.sampling.strategies import teacher_md, teacher_relax
from mlff_distill.sampling.targets import target_of_size, targets_from
from mlff_distill.settings import TargetSettings, section_settings
from mlff_distill.teachers import TeacherCalculator
from mlff_distill.teachers.ase_calculator import AseCalculatorTeacher

LOGGER = logging.getLogger("test")


@pytest.fixture(scope="module")
def emt():
    return AseCalculatorTeacher("ase.calculators.emt:EMT")


@pytest.fixture
def cu2_box_settings(tmp_path):
    """Target settings for a box of 8 Cu2 'molecules' (EMT is cheap) and a molecule, tiny MD."""
    dimer = tmp_path / "cu2.xyz"
    write(dimer, Atoms("Cu2", positions=[[0, 0, 0], [2.3, 0, 0]]))
    return section_settings(
        TargetSettings,
        "target",
        {
            "systems": [
                {"name": "cu", "box": {str(dimer): 8}, "density_g_per_cm3": 4.0, "temperatures_K": [300, 600]},
                {"name": "dimer", "molecule": str(dimer), "temperatures_K": [300]},
            ],
            "min_distance_A": 2.2,
            "md": {
                "trajectories": 2,
                "relax_steps": 3,
                "equilibration_steps": 4,
                "frames_per_trajectory": 3,
                "steps_between_frames": 2,
            },
            "rattle": {"structures_per_frame": 2, "max_strain": 0.03},
            "clusters": {"per_frame": 2, "sizes": [2, 3]},
            "test": {"trajectories": 1, "frames_per_trajectory": 2},
        },
    )


def water_frame(seed: int = 0, count: int = 16):
    """A wrapped water box (molecules cut by the boundary), its unwrapped copy and the side."""
    whole = pack_box([(molecule("H2O"), count)], 1.0, np.random.default_rng(seed), 1.6)
    frame = whole.copy()
    frame.wrap()
    frame.info = {"seed": "water", "target": "water", "temperature_K": 300.0}
    return frame, whole, whole.cell[0, 0]


def source_molecule(cluster_positions, whole, side_A):
    """The molecule of ``whole`` that these cluster positions are a lattice translation of."""
    index = whole.arrays["molecule_index"]
    for m in range(index.max() + 1):
        shift = (cluster_positions - whole.positions[index == m]) / side_A
        if np.allclose(shift, np.round(shift[0]), atol=1e-6):
            return m
    raise AssertionError("no molecule of the frame matches")


def test_clusters_are_whole_nearest_molecules_at_their_frame_separation():
    frame, whole, side = water_frame()
    index = whole.arrays["molecule_index"]
    # the test means something only if wrapping cut some molecules
    assert not all(np.allclose(frame.positions[index == m], whole.positions[index == m]) for m in range(16))
    centres = np.array([whole[whole.arrays["molecule_index"] == m].get_center_of_mass() for m in range(16)])
    clusters = molecular_clusters(frame, [2, 3, 4], 5, np.random.default_rng(1))
    assert [c.info["cluster_size"] for c in clusters] == [2] * 5 + [3] * 5 + [4] * 5
    water = molecule("H2O")
    pair_separations = []
    for cluster in clusters:
        size = cluster.info["cluster_size"]
        assert cluster.info == {**frame.info, "strategy": "cluster", "cluster_size": size}
        assert not cluster.pbc.any() and np.allclose(cluster.cell.array, 0)
        assert cluster.arrays["molecule_index"].tolist() == np.repeat(np.arange(size), 3).tolist()
        sources = []
        for m in range(size):
            part = cluster[cluster.arrays["molecule_index"] == m]
            assert np.allclose(part.get_all_distances(), water.get_all_distances(), atol=1e-8)  # whole
            sources.append(source_molecule(part.positions, whole, side))
        assert len(set(sources)) == size
        # separations in the cluster are the minimum-image ones of the frame
        in_frame = find_mic(centres[sources] - centres[sources[0]], frame.cell, frame.pbc)[1]
        in_cluster = [
            np.linalg.norm(
                cluster[cluster.arrays["molecule_index"] == m].get_center_of_mass()
                - cluster[cluster.arrays["molecule_index"] == 0].get_center_of_mass()
            )
            for m in range(size)
        ]
        assert np.allclose(in_cluster, in_frame, atol=1e-8)
        if size == 2:
            pair_separations.append(in_frame[1])
        else:  # the central molecule's nearest ones
            everyone = find_mic(centres - centres[sources[0]], frame.cell, frame.pbc)[1]
            assert max(in_frame) <= np.sort(everyone)[size - 1] + 1e-9
    assert max(pair_separations) > 1.3 * min(pair_separations)  # pairs at short and long range
    with pytest.raises(ValueError, match="molecule_index"):
        molecular_clusters(bulk_like(), [2], 1, np.random.default_rng(0))


def bulk_like():
    atoms = Atoms("Cu4", positions=np.eye(4, 3) * 2.0, cell=np.eye(3) * 6.0, pbc=True)
    return atoms


def test_derived_structures_are_rattled_strained_copies_and_clusters(cu2_box_settings):
    frame, _, _ = water_frame(count=8)
    derived = derived_structures([frame, frame.copy()], cu2_box_settings, np.random.default_rng(0))
    strained = [a for a in derived if a.info["strategy"] == "rattle-strain"]
    clusters = [a for a in derived if a.info["strategy"] == "cluster"]
    assert len(strained) == 2 * 2 and len(clusters) == 2 * 2 * 2 and len(derived) == 12
    for atoms in strained:
        assert atoms.pbc.all() and not np.allclose(atoms.cell, frame.cell)
        assert np.abs(atoms.info["strain"]).max() <= 0.03
        assert atoms.info["target"] == "water" and atoms.info["temperature_K"] == 300.0
        assert "molecule_index" in atoms.arrays
    assert {a.info["cluster_size"] for a in clusters} == {2, 3}
    # a molecule frame: nothing to rattle-strain nor cut
    assert derived_structures([molecule("H2O")], cu2_box_settings, np.random.default_rng(0)) == []


def test_target_trajectories_run_the_teacher_from_fresh_starts(cu2_box_settings, emt):
    box, dimer = targets_from(cu2_box_settings.systems)
    trajectories = target_trajectories(
        box, cu2_box_settings, TeacherCalculator(emt), np.random.default_rng(0), LOGGER, test=False
    )
    assert len(trajectories) == 2 * 2 and all(len(t) == 3 for t in trajectories)
    assert [t[0].info["temperature_K"] for t in trajectories] == [300.0, 300.0, 600.0, 600.0]
    for trajectory in trajectories:
        for frame in trajectory:
            assert frame.info == {**frame.info, "seed": "cu", "target": "cu", "strategy": "md"}
            assert frame.pbc.all() and frame.arrays["molecule_index"].tolist() == np.repeat(np.arange(8), 2).tolist()
        assert not np.allclose(trajectory[0].positions, trajectory[1].positions)
    # every run starts from a box of its own
    assert len({tuple(np.round(t[0].cell.lengths(), 9)) for t in trajectories}) == 1
    assert not np.allclose(trajectories[0][0].positions, trajectories[1][0].positions, atol=0.5)

    tests = target_trajectories(
        box, cu2_box_settings, TeacherCalculator(emt), np.random.default_rng(1), LOGGER, test=True
    )
    assert len(tests) == 2 and [len(t) for t in tests] == [2, 2]
    assert {f.info["strategy"] for t in tests for f in t} == {"test-md"}

    molecule_runs = target_trajectories(
        dimer, cu2_box_settings, TeacherCalculator(emt), np.random.default_rng(0), LOGGER, test=False
    )
    assert len(molecule_runs) == 2 and not molecule_runs[0][0].pbc.any()
    assert all(np.isfinite(f.positions).all() for t in molecule_runs for f in t)  # a linear molecule too
    assert "molecule_index" not in molecule_runs[0][0].arrays


def test_equilibrated_frames_run_a_system_of_the_size_asked_as_the_test_trajectories_run(cu2_box_settings, emt):
    box, _ = targets_from(cu2_box_settings.systems)
    settings = dataclasses.replace(
        cu2_box_settings, test=dataclasses.replace(cu2_box_settings.test, equilibration_steps=6, steps_between_frames=3)
    )
    calculator = TeacherCalculator(emt)
    frames = equilibrated_frames(box, 32, settings, calculator, 300.0, np.random.default_rng(0), frames=3)
    assert len(frames) == 3 and all(len(f) == 32 and f.pbc.all() for f in frames)  # 16 Cu2, not the target's 8
    expected_info = {"system": "cu", "target": "cu", "strategy": "timing", "temperature_K": 300.0}
    assert all(frame.info == {**frame.info, **expected_info} for frame in frames)
    assert not np.allclose(frames[0].positions, frames[1].positions)
    # the test trajectories' equilibration and spacing: the same start and seed, run by hand
    rng = np.random.default_rng(0)
    start = target_of_size(box, 32, rng, settings.min_distance_A)
    start.info["seed"] = "cu"
    teacher_relax(start, calculator, settings.md.relax_steps)
    by_hand = teacher_md(start, calculator, 300.0, md_of_test_runs(settings, 3), rng)
    assert md_of_test_runs(settings, 3).equilibration_steps == 6
    for frame, expected in zip(frames, by_hand, strict=True):
        np.testing.assert_allclose(frame.positions, expected.positions)


def test_training_teacher_md_samples_are_the_targets_md_frames_in_training() -> None:
    infos = [
        {"strategy": "md", "target": "water", "temperature_K": 300.0, "split": "train"},
        {"strategy": "md", "target": "water", "temperature_K": 350.0, "split": "val"},
        {"strategy": "test-md", "target": "water", "temperature_K": 300.0, "split": "test"},
        {"strategy": "md", "split": "train"},  # MD of a seed molecule, no target
        {"strategy": "cluster", "target": "water", "temperature_K": 300.0, "split": "train"},
        {"strategy": "md", "target": "methanol", "temperature_K": 300.0, "split": "train"},
    ]
    sampled = [Atoms("H2O", info={**info, "sample_index": 10 + i}) for i, info in enumerate(infos)]
    assert training_teacher_md_samples(sampled) == [10, 15]
