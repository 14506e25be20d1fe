"""torchani 2.9 running the ANI-1x ensemble with its cell list (`mlff_distill.teachers.torchani_runtime`):
the same model as the FeNNol teacher built from the same NeuroChem files (energies, forces, stress,
one member), so that the speed table may time it as the teacher's fastest implementation."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import molecule
from ase.calculators.fd import calculate_numerical_stress

from mlff_distill.sampling.boxes import pack_box, replicated
from mlff_distill.settings import TeacherSettings, section_settings
from mlff_distill.teachers import TeacherCalculator, load_teacher, teacher_implementations, teacher_md_calculator
from mlff_distill.teachers.fennol_skin import FENNOL_SKIN
from mlff_distill.teachers.neurochem import torchani_resource_dir
from mlff_distill.teachers.torchani_runtime import CELL_LIST, ani1x_cell_list_calculator, torchani_runtime_missing

# float32 in both: the energies of a box of hundreds of atoms (about -1e4 eV) differ by rounding
ENERGY_TOL_EV_PER_ATOM = 2e-4
FORCE_TOL_EV_PER_A = 1e-3
STRESS_TOL_EV_PER_A3 = 2e-5


@pytest.fixture(scope="module")
def default_settings() -> TeacherSettings:
    assert torchani_runtime_missing() is None, torchani_runtime_missing()  # `make test` installs it
    return section_settings(TeacherSettings, "teacher")


@pytest.fixture(scope="module")
def water_box():
    """A packed periodic box of water at 1 g/cm^3, repeated to 168 atoms (cells of 8.6 A: more
    than one cell list bin, and periodic images within the 5.2 A cutoff)."""
    box = pack_box([(molecule("H2O"), 7)], 1.0, np.random.default_rng(3), 1.6)
    box = replicated(box, 168)
    box.rattle(0.05, seed=1)
    return box


def _results(calculator, atoms, properties):
    calculator.calculate(atoms.copy(), properties, ["positions", "numbers", "cell", "pbc"])
    return dict(calculator.results)


def test_cell_list_ensemble_equals_the_fennol_teacher(default_settings, water_box):
    fennol = TeacherCalculator(load_teacher(default_settings))
    cell_list = ani1x_cell_list_calculator(torchani_resource_dir())
    ethanol = molecule("CH3CH2OH")
    ethanol.rattle(0.05, seed=2)
    for atoms, properties in ((water_box, ["energy", "forces", "stress"]), (ethanol, ["energy", "forces"])):
        ours, theirs = _results(cell_list, atoms, properties), _results(fennol, atoms, properties)
        assert abs(ours["energy"] - theirs["energy"]) / len(atoms) < ENERGY_TOL_EV_PER_ATOM
        assert np.abs(ours["forces"] - theirs["forces"]).max() < FORCE_TOL_EV_PER_A
        assert np.abs(theirs["forces"]).max() > 0.5  # not trivially equal
        if "stress" in properties:
            assert np.abs(ours["stress"] - theirs["stress"]).max() < STRESS_TOL_EV_PER_A3
            assert np.abs(theirs["stress"]).max() > 1e-3


def test_cell_list_stress_is_the_strain_derivative(water_box):
    """torchani's default stress (``scaling``) is off under the cell list; ours (``fdotr``) is not."""
    atoms = water_box.copy()
    atoms.calc = ani1x_cell_list_calculator(torchani_resource_dir(), float64=True)
    np.testing.assert_allclose(atoms.get_stress(), calculate_numerical_stress(atoms, eps=1e-5), atol=1e-6)


def test_one_member_equals_the_fennol_member(default_settings, water_box):
    member = TeacherCalculator(load_teacher(default_settings).member(0))
    ours = _results(ani1x_cell_list_calculator(torchani_resource_dir(), member=0), water_box, ["energy", "forces"])
    theirs = _results(member, water_box, ["energy", "forces"])
    ensemble = _results(ani1x_cell_list_calculator(torchani_resource_dir()), water_box, ["forces"])
    assert abs(ours["energy"] - theirs["energy"]) / len(water_box) < ENERGY_TOL_EV_PER_ATOM
    assert np.abs(ours["forces"] - theirs["forces"]).max() < FORCE_TOL_EV_PER_A
    assert np.abs(ours["forces"] - ensemble["forces"]).max() > 10 * FORCE_TOL_EV_PER_A  # a member, not the mean
    with pytest.raises(ValueError, match="member index 8"):
        ani1x_cell_list_calculator(torchani_resource_dir(), member=8)


def test_implementations_of_each_teacher(default_settings):
    ani1x = teacher_implementations(default_settings)
    assert ani1x.labeling == "fennol" and ani1x.missing is None
    assert list(ani1x.others) == [FENNOL_SKIN, CELL_LIST] and list(ani1x.other_members) == [CELL_LIST]
    emt = section_settings(TeacherSettings, "teacher", {"kind": "ase", "factory": "ase.calculators.emt:EMT"})
    assert teacher_implementations(emt).others == {}
    other_model = section_settings(TeacherSettings, "teacher", {"source": "fennol-pmc", "name": "ani2x"})
    assert list(teacher_implementations(other_model).others) == [FENNOL_SKIN]  # FeNNol's own only


def test_the_teachers_md_runs_its_fastest_implementation(default_settings):
    emt_settings = section_settings(TeacherSettings, "teacher", {"kind": "ase", "factory": "ase.calculators.emt:EMT"})
    emt = load_teacher(emt_settings)
    name, calculator = teacher_md_calculator(emt, teacher_implementations(emt_settings))
    assert name == "ase" and isinstance(calculator, TeacherCalculator)
    ani1x = teacher_implementations(default_settings)
    assert teacher_md_calculator(emt, ani1x) == (CELL_LIST, ani1x.others[CELL_LIST])  # cell list, then skin
    other_model = teacher_implementations(section_settings(TeacherSettings, "teacher", {"name": "ani2x"}))
    assert teacher_md_calculator(emt, other_model) == (FENNOL_SKIN, other_model.others[FENNOL_SKIN])
