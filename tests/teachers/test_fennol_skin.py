"""FeNNol's neighbour list kept across steps with a skin (`mlff_distill.teachers.fennol_skin`): the
same energies, forces and stress as the labeling path whether the list is reused or rebuilt."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import molecule

from mlff_distill.evaluation.speed import uses_torch_threads
from mlff_distill.sampling.boxes import pack_box, replicated
from mlff_distill.settings import TeacherSettings, section_settings
from mlff_distill.teachers import TeacherCalculator, load_teacher
from mlff_distill.teachers.fennol_skin import FennolSkinCalculator

FORCE_TOL_EV_PER_A = 1e-3  # float32 both ways; pairs summed in another order
ENERGY_TOL_EV = 2e-3


@pytest.fixture(scope="module")
def teacher_settings() -> TeacherSettings:
    return section_settings(TeacherSettings, "teacher")  # the default: ANI-1x from torchani's files


@pytest.fixture(scope="module")
def water_box():
    box = replicated(pack_box([(molecule("H2O"), 7)], 1.0, np.random.default_rng(3), 1.6), 168)
    box.rattle(0.05, seed=1)
    return box


def _labels(calculator, atoms):
    atoms = atoms.copy()
    atoms.calc = calculator
    return atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()


def test_skin_list_gives_the_labels_reused_and_rebuilt(teacher_settings, water_box):
    labeling = TeacherCalculator(load_teacher(teacher_settings))
    skin = FennolSkinCalculator(lambda: load_teacher(teacher_settings), skin_A=1.0)  # a teacher of its own
    rng = np.random.default_rng(0)
    moved = water_box.copy()
    moved.positions += rng.uniform(-0.2, 0.2, size=moved.positions.shape)  # within half the skin
    far = water_box.copy()
    far.positions[0] += [0.8, 0.0, 0.0]  # past half the skin: a full build
    expected_builds = [1, 1, 2]
    for atoms, builds in zip((water_box, moved, far), expected_builds):
        energy, forces, stress = _labels(labeling, atoms)
        skin_energy, skin_forces, skin_stress = _labels(skin, atoms)
        assert skin.rebuilds == builds
        assert skin_energy == pytest.approx(energy, abs=ENERGY_TOL_EV)
        assert np.abs(skin_forces - forces).max() < FORCE_TOL_EV_PER_A
        assert np.abs(skin_stress - stress).max() < 1e-5
    # JAX on XLA's own threads: the speed table's all-cores pass keeps their first time
    assert not uses_torch_threads(labeling) and not uses_torch_threads(skin)


def test_skin_must_be_positive(teacher_settings):
    with pytest.raises(ValueError, match="skin"):
        FennolSkinCalculator(lambda: load_teacher(teacher_settings), skin_A=0.0)
