"""The AOTInductor package gives the student's numbers (energy, forces, stress) on molecules and
periodic cells of sizes other than the one it was exported with, and carries its metadata."""

import json

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule

from mlff_distill.student import StudentCalculator, StudentPotential
from mlff_distill.student.aoti import ExportedStudentCalculator, export_aoti

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(3)
    # with the angular moments (order 2), so that the package is shown to carry them too
    model = StudentPotential(species=(1, 6, 8), cutoff_A=3.5, n_features=8, n_interactions=2, angular_order=2)
    with torch.no_grad():  # an untrained readout is near zero: give the energy some size
        model.energy_scale_eV.fill_(0.7)
        model.reference_energies_eV.copy_(torch.tensor([-13.6, -1029.8, -2041.3]))
    path = export_aoti(model, tmp_path_factory.mktemp("aoti") / "student.pt2", {"teacher": "test"})
    return model, path


def structures():
    water = molecule("H2O")
    water.center(vacuum=3.0)
    methanol_box = molecule("CH3OH")
    methanol_box.set_cell([6.1, 6.3, 6.7])
    methanol_box.center()
    methanol_box.pbc = True
    methanol_box = methanol_box.repeat((2, 2, 1))
    methanol_box.rattle(0.1, seed=4)
    diamond = bulk("C", "diamond", a=3.57, cubic=True).repeat(2)  # 64 atoms, images within the cutoff
    diamond.rattle(0.05, seed=5)
    return [water, methanol_box, diamond]


@pytest.mark.parametrize("index", range(3))
def test_package_matches_the_student_at_sizes_it_was_not_exported_with(exported, index):
    model, path = exported
    atoms = structures()[index]
    package, eager = ExportedStudentCalculator(path), StudentCalculator(model)
    properties = ["energy", "forces"] + (["stress"] if atoms.pbc.all() else [])
    package.calculate(atoms, properties)
    eager.calculate(atoms, properties)
    assert package.results["energy"] == pytest.approx(eager.results["energy"], abs=1e-5)
    np.testing.assert_allclose(package.results["forces"], eager.results["forces"], atol=1e-5)
    assert np.abs(eager.results["forces"]).max() > 1e-3  # not trivially zero
    if atoms.pbc.all():
        np.testing.assert_allclose(package.results["stress"], eager.results["stress"], atol=1e-7)
    else:
        assert "stress" not in package.results


def test_package_carries_metadata_and_rejects_unknown_species(exported):
    model, path = exported
    package = ExportedStudentCalculator(path)
    assert package.metadata["teacher"] == "test" and package.metadata["species"] == [1, 6, 8]
    assert package.metadata["hyperparameters"] == json.loads(json.dumps(model.hyperparameters))
    with pytest.raises(ValueError, match=r"atomic numbers \[7\] are not species"):
        package.calculate(molecule("NH3"), ["energy"])
