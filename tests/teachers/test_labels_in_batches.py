import numpy as np
from ase.build import bulk, molecule
from ase.calculators.emt import EMT

from mlff_distill.teachers.base import labels_in_batches


def _emt_batch(batch, first):
    """EMT's energy (eV), forces (eV/A) and stress (eV/A^3) of each structure of ``batch``."""
    energies, forces, stresses = [], [], []
    for atoms in batch:
        atoms = atoms.copy()
        atoms.calc = EMT()
        energies.append(atoms.get_potential_energy())
        forces.append(atoms.get_forces())
        stresses.append(atoms.get_stress(voigt=False) if atoms.pbc.all() else np.zeros((3, 3)))
    return np.array(energies), np.concatenate(forces), np.array(stresses)


def _structures():
    rattled = []
    for seed, n in enumerate([1, 2, 1]):
        crystal = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(n)
        crystal.rattle(0.05, seed=seed)
        rattled.append(crystal)
    copper_cluster = molecule("CH4")  # not periodic: no stress
    copper_cluster.set_chemical_symbols(["Cu"] * 5)
    copper_cluster.positions *= 2.0
    return [rattled[0], copper_cluster, rattled[1], rattled[2]]


def test_batches_keep_the_order_and_stress_only_for_periodic_cells():
    structures = _structures()
    whole = labels_in_batches(structures, 10, _emt_batch, compute_stress=True)
    batched = labels_in_batches(structures, 3, _emt_batch, compute_stress=True)
    for output in (whole, batched):
        assert output.energy_eV.shape == (4,)
        assert output.forces_eV_per_A.shape == (sum(len(a) for a in structures), 3)
        assert np.isnan(output.stress_eV_per_A3[1]).all()
        assert np.isfinite(output.stress_eV_per_A3[[0, 2, 3]]).all()
        assert not output.energy_std_eV.any() and not output.forces_std_eV_per_A.any()
    np.testing.assert_allclose(batched.energy_eV, whole.energy_eV)
    np.testing.assert_allclose(batched.forces_eV_per_A, whole.forces_eV_per_A)
    np.testing.assert_allclose(batched.stress_eV_per_A3[[0, 2, 3]], whole.stress_eV_per_A3[[0, 2, 3]])
    # the first structure's labels are its own, not another's
    single = labels_in_batches(structures[:1], 1, _emt_batch, compute_stress=True)
    np.testing.assert_allclose(batched.energy_eV[0], single.energy_eV[0])


def test_no_stress_unless_asked():
    output = labels_in_batches(_structures(), 2, _emt_batch, compute_stress=False)
    assert np.isnan(output.stress_eV_per_A3).all()


def test_no_structures():
    output = labels_in_batches([], 4, _emt_batch, compute_stress=True)
    assert output.energy_eV.shape == (0,) and output.forces_eV_per_A.shape == (0, 3)
    assert output.stress_eV_per_A3.shape == (0, 3, 3)
