"""An ASE calculator named by its factory string labels exactly as the calculator itself."""

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms

from mlff_distill.teachers.ase_calculator import AseCalculatorTeacher


def structures():
    rng = np.random.default_rng(0)
    copper = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    copper.rattle(0.05, rng=rng)
    copper.set_cell(copper.cell.array @ (np.eye(3) + 0.01 * rng.standard_normal((3, 3))), scale_atoms=True)
    cluster = bulk("Al", "fcc", a=4.05).repeat(2)
    cluster.pbc = False
    cluster.rattle(0.05, rng=rng)
    slab = copper.copy()
    slab.pbc = [True, True, False]
    copper.set_constraint(FixAtoms([0]))  # labels are raw forces: constraints are ignored
    return [copper, cluster, slab]


def test_emt_teacher_matches_emt():
    teacher = AseCalculatorTeacher("ase.calculators.emt:EMT", {}, species=[13, 29], cutoff_A=None, name=None)
    items = structures()
    out = teacher.compute(items, compute_stress=True)
    for index, atoms in enumerate(items):
        atoms.calc = EMT()
        start = sum(len(a) for a in items[:index])
        np.testing.assert_allclose(out.energy_eV[index], atoms.get_potential_energy(), rtol=1e-12)
        np.testing.assert_allclose(
            out.forces_eV_per_A[start : start + len(atoms)], atoms.get_forces(apply_constraint=False), atol=1e-12
        )
    np.testing.assert_allclose(out.stress_eV_per_A3[0], items[0].get_stress(voigt=False), atol=1e-12)
    assert np.abs(out.forces_eV_per_A[0]).max() > 1e-3  # atom 0 is fixed, yet has a force
    assert np.abs(out.stress_eV_per_A3[0]).max() > 1e-4  # a strained cell: stress is not 0
    assert np.isnan(out.stress_eV_per_A3[1:]).all()  # a cluster and a slab have no stress
    assert not out.energy_std_eV.any() and not out.forces_std_eV_per_A.any()
    assert np.isnan(teacher.compute(items[:1]).stress_eV_per_A3).all()  # not asked for
    assert teacher.identity.kind == "ase" and teacher.identity.source == "ase.calculators.emt:EMT"
    assert teacher.identity.name == "ase/ase.calculators.emt:EMT"
    assert teacher.identity.species == (13, 29) and teacher.identity.cutoff_A == 0.0


def test_identity_hash_depends_on_kwargs():
    plain = AseCalculatorTeacher("ase.calculators.emt:EMT", {}, None, 6.0, "emt")
    other = AseCalculatorTeacher("ase.calculators.emt:EMT", {"asap_cutoff": True}, None, 6.0, "emt")
    assert plain.identity.weights_sha256 != other.identity.weights_sha256
    assert plain.identity.species == () and plain.identity.cutoff_A == 6.0


@pytest.mark.parametrize(
    "factory, error, message",
    [
        ("ase.calculators.emt.EMT", ValueError, "must look like 'package.module:callable'"),
        ("ase.calculators.no_such_module:EMT", ImportError, "cannot import module 'ase.calculators.no_such_module'"),
        (
            "ase.calculators.emt:NoSuchCalculator",
            ImportError,
            "'ase.calculators.emt' has no attribute 'NoSuchCalculator'",
        ),
        (
            "ase.calculators.emt:EMT.no_such_method",
            ImportError,
            "'ase.calculators.emt.EMT' has no attribute 'no_such_method'",
        ),
        ("ase.calculators.emt:parameters", TypeError, "is not callable"),
    ],
)
def test_bad_factory_paths_give_clear_errors(factory, error, message):
    with pytest.raises(error, match=message):
        AseCalculatorTeacher(factory, {}, None, None, None)
