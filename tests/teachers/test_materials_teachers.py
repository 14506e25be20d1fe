"""SevenNet-0 and CHGNet 0.3.0, trained teachers whose weights ship in their wheels, built by
`load_teacher`: finite labels, forces and stress against finite differences (float32 tolerances),
identity and checksum, names, refused structures.

Tests that build a teacher are skipped when its package is missing (pip install
'mlff-distill[materials]'); those of the loader's refusals and of the install message run without.
"""

import dataclasses
import hashlib
import importlib
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule

from mlff_distill.settings import TeacherSettings, section_settings
from mlff_distill.teachers import check_structures_for, load_teacher

# kind: (package, model name, cutoff in Angstrom)
TEACHERS = {"sevennet": ("sevenn", "7net-0", 5.0), "chgnet": ("chgnet", "0.3.0", 6.0)}
INSTALL = "pip install 'mlff-distill[materials]'"
# Both were trained on MPtrj: H..Bi and Ac..Pu (89 elements); Po, At, Rn, Fr, Ra never occur.
MPTRJ_SPECIES = tuple(range(1, 84)) + tuple(range(89, 95))
# Central-difference steps and float32 tolerances (measured worst cases: 7e-4 eV/A, 1.1e-5
# eV/A^3). Keep the force step small: CHGNet's float32 energy has a smooth ripple of ~3e-5 eV with
# a period of ~0.02 A, which its forces follow but steps of ~1e-2 A average out (5e-3 eV/A off).
H_FORCE_A = 2e-3  # Angstrom
H_STRAIN = 3e-3
FORCE_TOL_eV_per_A = 3e-3
STRESS_TOL_eV_per_A3 = 5e-5  # about 0.008 GPa


def settings(**teacher) -> TeacherSettings:
    """The ``teacher:`` section with the schema's defaults under ``teacher``."""
    return section_settings(TeacherSettings, "teacher", teacher)


def build(kind: str):
    """``teacher: {kind: <kind>}`` (name left at its default); skipped when the package is missing."""
    package = TEACHERS[kind][0]
    pytest.importorskip(package, reason=f"{package} is not installed: {INSTALL}")
    return load_teacher(settings(kind=kind, batch_size=4))


@pytest.fixture(scope="module")
def sevennet():
    return build("sevennet")


@pytest.fixture(scope="module")
def chgnet():
    return build("chgnet")


@pytest.fixture(params=list(TEACHERS))
def teacher(request):
    return request.getfixturevalue(request.param)


def silicon() -> Atoms:
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)  # 8 atoms
    atoms.rattle(0.03, seed=1)
    return atoms


def gallium_arsenide() -> Atoms:
    atoms = bulk("GaAs", "zincblende", a=5.65, cubic=True)  # 8 atoms, 2 elements
    atoms.rattle(0.03, seed=2)
    return atoms


def polonium() -> Atoms:
    return bulk("Po", "sc", a=3.35)  # Z = 84, not in MPtrj


def test_labels_are_finite_and_batching_changes_nothing(teacher):
    structures = [silicon(), gallium_arsenide()] * 3  # batch_size 4: two batches
    out = teacher.compute(structures, compute_stress=True)
    assert out.energy_eV.shape == (6,) and out.forces_eV_per_A.shape == (48, 3)
    assert out.stress_eV_per_A3.shape == (6, 3, 3)
    for values in (out.energy_eV, out.forces_eV_per_A, out.stress_eV_per_A3):
        assert np.isfinite(values).all()
    one_by_one = [teacher.compute([atoms], compute_stress=True) for atoms in structures[:2]]
    np.testing.assert_allclose(out.energy_eV[:2], [o.energy_eV[0] for o in one_by_one], atol=1e-4)
    np.testing.assert_allclose(
        out.forces_eV_per_A[:16], np.concatenate([o.forces_eV_per_A for o in one_by_one]), atol=1e-5
    )
    np.testing.assert_allclose(out.energy_eV[4:], out.energy_eV[:2], atol=1e-4)  # across batches
    assert np.isnan(teacher.compute(structures[:2]).stress_eV_per_A3).all()  # not asked for


@pytest.mark.parametrize("make", [silicon, gallium_arsenide])
def test_forces_are_minus_energy_gradient(teacher, make):
    """F[i, k] = -(E(x + h e_ik) - E(x - h e_ik)) / 2h for a few components."""
    atoms = make()
    forces = teacher.compute([atoms]).forces_eV_per_A
    components = [(0, 0), (3, 1), (5, 2)]
    displaced = []
    for atom, axis in components:
        for sign in (1, -1):
            copy = atoms.copy()
            copy.positions[atom, axis] += sign * H_FORCE_A
            displaced.append(copy)
    energies = teacher.compute(displaced).energy_eV.reshape(-1, 2)
    numerical = -(energies[:, 0] - energies[:, 1]) / (2 * H_FORCE_A)
    analytic = np.array([forces[atom, axis] for atom, axis in components])
    np.testing.assert_allclose(analytic, numerical, atol=FORCE_TOL_eV_per_A)
    assert np.abs(analytic).min() > 0.1  # the comparison means something


@pytest.mark.parametrize("make", [silicon, gallium_arsenide])
def test_stress_is_strain_derivative_over_volume(teacher, make):
    """ASE convention: sigma_ij = (1/V) dE/d eps_ij for cell -> cell (1 + eps), eps symmetric."""
    atoms = make()
    stress = teacher.compute([atoms], compute_stress=True).stress_eV_per_A3[0]
    np.testing.assert_allclose(stress, stress.T, atol=1e-7)
    components = [(0, 0), (1, 2), (0, 1)]
    strained = []
    for i, j in components:
        strain = np.zeros((3, 3))
        strain[i, j] += 0.5
        strain[j, i] += 0.5
        for sign in (1, -1):
            copy = atoms.copy()
            copy.set_cell(atoms.cell.array @ (np.eye(3) + sign * H_STRAIN * strain), scale_atoms=True)
            strained.append(copy)
    energies = teacher.compute(strained).energy_eV.reshape(-1, 2)
    numerical = (energies[:, 0] - energies[:, 1]) / (2 * H_STRAIN) / atoms.get_volume()
    analytic = np.array([stress[i, j] for i, j in components])
    np.testing.assert_allclose(analytic, numerical, atol=STRESS_TOL_eV_per_A3)
    assert np.abs(analytic).max() > 1e-3


def test_identity_describes_the_wheels_weights(teacher):
    """Kind, the kind's model for the default name, the wheel's file and its checksum, species."""
    identity = teacher.identity
    package, model, cutoff_A = TEACHERS[identity.kind]
    assert identity.name == f"{identity.kind}/{model}"
    assert identity.trained and identity.conservative and identity.label == identity.name
    assert identity.cutoff_A == cutoff_A and identity.members == 1
    path = Path(identity.source)
    assert path.is_file()
    assert path.is_relative_to(Path(importlib.import_module(package).__file__).resolve().parent)
    assert re.fullmatch("[0-9a-f]{64}", identity.weights_sha256)
    # base.sha256_of_files: SHA-256 over the files' SHA-256 digests
    assert identity.weights_sha256 == hashlib.sha256(hashlib.sha256(path.read_bytes()).digest()).hexdigest()
    assert identity.species == MPTRJ_SPECIES


def test_untrained_element_is_refused_before_labeling(teacher):
    with pytest.raises(ValueError, match=r"structure 1 \(Po\): holds Po, which .* not cover"):
        check_structures_for(teacher, [silicon(), polonium()])
    check_structures_for(teacher, [silicon(), gallium_arsenide()])


def test_chgnet_labels_untrained_elements_silently(chgnet):
    """Why its species must be the trained ones: CHGNet itself returns a number for Po."""
    assert np.isfinite(chgnet.compute([polonium()]).energy_eV).all()


def test_chgnet_refuses_a_molecule_or_slab_before_labeling(chgnet):
    slab = silicon()
    slab.pbc = [True, True, False]
    for structures in ([silicon(), molecule("H2O")], [silicon(), slab]):
        formula = structures[1].get_chemical_formula()
        with pytest.raises(ValueError, match=rf"structure 1 \({formula}\): not periodic in all three directions"):
            check_structures_for(chgnet, structures)
        with pytest.raises(ValueError, match=rf"structure 1 \({formula}\): .*periodic in all three directions"):
            chgnet.compute(structures)


def test_sevennet_labels_a_molecule_and_a_slab_without_stress(sevennet):
    slab = silicon()
    slab.pbc = [True, True, False]
    structures = [molecule("H2O"), slab, silicon()]
    check_structures_for(sevennet, structures)
    out = sevennet.compute(structures, compute_stress=True)
    assert np.isfinite(out.energy_eV).all() and np.isfinite(out.forces_eV_per_A).all()
    assert np.isnan(out.stress_eV_per_A3[:2]).all() and np.isfinite(out.stress_eV_per_A3[2]).all()


def test_sevennet_takes_its_model_by_name(sevennet):
    """An explicit name, or SevenNet-0's alias, gives the same weights as the default name."""
    for name in ("7net-0", "SevenNet-0"):
        named = load_teacher(settings(kind="sevennet", name=name))
        assert named.identity.name == "sevennet/7net-0"
        assert named.identity.weights_sha256 == sevennet.identity.weights_sha256


def test_chgnet_takes_its_model_by_name(chgnet):
    named = load_teacher(settings(kind="chgnet", name="0.3.0"))
    assert named.identity.name == "chgnet/0.3.0"
    assert named.identity.weights_sha256 == chgnet.identity.weights_sha256


@pytest.mark.parametrize(
    "teacher_config, message",
    [
        ({"kind": "sevennet", "name": "7net-omat"}, "kind sevennet offers only 7net-0"),
        ({"kind": "sevennet", "name": "ani2x"}, "kind sevennet offers only 7net-0"),
        ({"kind": "chgnet", "name": "0.2.0"}, "kind chgnet offers only 0.3.0"),
        ({"kind": "sevennet", "precision": "float64"}, "sevennet runs 'float32' only"),
        ({"kind": "chgnet", "molecule_only": True}, "CHGNet labels only periodic cells"),
    ],
)
def test_loader_refuses_other_models_and_settings(teacher_config, message):
    """Refused before anything is imported or downloaded (runs without the packages)."""
    with pytest.raises(ValueError, match=re.escape(message)):
        load_teacher(settings(**teacher_config))


def test_unknown_kind_lists_the_valid_ones():
    with pytest.raises(ValueError, match="not one of fennol, orb, sevennet, chgnet, ase"):
        load_teacher(dataclasses.replace(settings(), kind="mace"))  # past the schema's enum


@pytest.mark.parametrize("kind", list(TEACHERS))
def test_missing_package_says_how_to_install(kind, monkeypatch):
    monkeypatch.setitem(sys.modules, TEACHERS[kind][0], None)  # import fails as if not installed
    with pytest.raises(ImportError, match=re.escape(INSTALL)):
        load_teacher(settings(kind=kind))
