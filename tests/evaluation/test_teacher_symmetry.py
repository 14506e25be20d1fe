"""The teacher's rotational symmetry: invariant teachers give no change, an untrained Orb model does."""

import numpy as np
from ase.build import bulk, molecule

from mlff_distill.evaluation.teacher_symmetry import rotated, rotation_force_change
from mlff_distill.sampling.strategies import random_rotation
from mlff_distill.teachers.ase_calculator import AseCalculatorTeacher


def test_random_rotation_is_proper_and_rotated_turns_cell_and_positions():
    rng = np.random.default_rng(3)
    rotation = random_rotation(rng)
    assert np.allclose(rotation @ rotation.T, np.eye(3)) and np.isclose(np.linalg.det(rotation), 1.0)
    copper = bulk("Cu", "fcc", a=3.6, cubic=True)
    turned = rotated(copper, rotation)
    assert np.allclose(turned.get_all_distances(mic=True), copper.get_all_distances(mic=True))
    assert np.allclose(turned.cell.cellpar(), copper.cell.cellpar())
    assert not np.allclose(turned.positions, copper.positions)


def test_invariant_teachers_show_no_change(ani1x_teacher, single_thread):
    rng = np.random.default_rng(0)
    molecules = [molecule(name) for name in ("H2O", "CH3CH2OH", "C6H6")]
    for atoms in molecules:
        atoms.rattle(0.05, seed=1)
    result = rotation_force_change(ani1x_teacher, molecules, rng)
    assert result["n_structures"] == 3
    assert result["force_rel_change"] < 1e-4  # float32 rounding only
    # periodic: the cell turns with the atoms (EMT, invariant by construction)
    copper = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    copper.rattle(0.1, seed=2)
    emt = rotation_force_change(AseCalculatorTeacher("ase.calculators.emt:EMT"), [copper], rng)
    assert emt["force_rel_change"] < 1e-8


def test_untrained_orb_teacher_breaks_rotational_symmetry():
    from mlff_distill.teachers.orb import OrbTeacher

    teacher = OrbTeacher("orb-v3-conservative-inf-omat", weights="random", seed=0, precision="float64", batch_size=2)
    silicon = bulk("Si", cubic=True)
    silicon.rattle(0.05, seed=1)
    result = rotation_force_change(teacher, [silicon], np.random.default_rng(0))
    assert result["force_rel_change"] > 0.1
    assert result["invariant_student_floor"] == result["force_rel_change"] / 2
