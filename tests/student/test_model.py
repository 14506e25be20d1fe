"""Student neighbour list, potential, checkpoint and ASE calculator."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.build import bulk, molecule
from ase.calculators.calculator import PropertyNotImplementedError, all_changes
from ase.calculators.emt import EMT
from ase.md.verlet import VelocityVerlet
from ase.neighborlist import neighbor_list
from scipy.spatial.transform import Rotation

from mlff_distill.data import concatenate_structures
from mlff_distill.student import (
    StudentCalculator,
    StudentPotential,
    energy_forces_stress,
    load_student,
    neighbour_list,
    save_student,
)
from mlff_distill.student.angular_moments import semi_normalised_harmonics
from mlff_distill.student.calculator import AUTO_THREADS_MIN_ATOMS
from mlff_distill.student.neighbours import ALL_PAIRS_MAX_CANDIDATES, pairs_of_one_structure

SPECIES = [1, 6, 8, 14]


pytestmark = pytest.mark.usefixtures("single_thread")


def as_batch(structures: list[Atoms]) -> dict[str, torch.Tensor]:
    return {name: torch.as_tensor(value) for name, value in concatenate_structures(structures).items()}


def water_box(n_molecules: int, length_A: float, seed: int) -> Atoms:
    """Randomly placed and oriented water molecules in a cubic periodic box."""
    rng = np.random.default_rng(seed)
    box = Atoms(cell=[length_A] * 3, pbc=True)
    for _ in range(n_molecules):
        water = molecule("H2O")
        water.rotate(rng.uniform(0, 360), rng.normal(size=3))
        water.translate(rng.uniform(0, length_A, size=3))
        box += water
    return box


def silicon() -> Atoms:
    """2-atom primitive Si, rattled; its cell heights (3.1 A) are below the 5 A cutoff."""
    atoms = bulk("Si", "diamond", a=5.43)
    atoms.rattle(0.05, seed=1)
    return atoms


def triclinic_sioh() -> Atoms:
    """A small triclinic cell holding Si, O, H, C atoms."""
    atoms = Atoms(
        "Si2O3CH2",
        scaled_positions=np.random.default_rng(3).uniform(size=(8, 3)),
        cell=[[5.2, 0.0, 0.0], [1.1, 4.8, 0.0], [0.7, -0.9, 5.5]],
        pbc=True,
    )
    return atoms


@pytest.fixture(scope="module", params=[1, 3], ids=["painn", "angular-moments"])
def model(request: pytest.FixtureRequest) -> StudentPotential:
    """The student alone (angular order 1) and with the angular moments of orders 2 and 3."""
    torch.manual_seed(0)
    return StudentPotential(
        species=SPECIES,
        n_features=16,
        reference_energies_eV={1: -13.6, 8: -2041.0},
        angular_order=request.param,
        angular_channels=4,
    ).double()


def energy_of(model: StudentPotential, structures: list[Atoms]) -> np.ndarray:
    return model(**as_batch(structures)).detach().numpy()


def pair_set(structures: list[Atoms], cutoff_A: float) -> set:
    batch = as_batch(structures)
    src, dst, shifts = neighbour_list(batch["positions_A"], batch["cell_A"], batch["pbc"], batch["atoms_ptr"], cutoff_A)
    pairs = list(zip(src.tolist(), dst.tolist(), map(tuple, shifts.tolist())))
    assert len(pairs) == len(set(pairs)), "duplicate pairs"
    return set(pairs)


def ase_pair_set(structures: list[Atoms], cutoff_A: float) -> set:
    pairs, offset = set(), 0
    for atoms in structures:
        i, j, shifts = neighbor_list("ijS", atoms, cutoff_A)
        pairs |= set(zip((i + offset).tolist(), (j + offset).tolist(), map(tuple, shifts.tolist())))
        offset += len(atoms)
    return pairs


@pytest.mark.parametrize(
    "structures",
    [
        [molecule("CH3CH2OH")],
        [silicon()],
        [water_box(40, 10.0, seed=0)],
        [silicon(), molecule("H2O"), water_box(20, 8.0, seed=1), triclinic_sioh(), molecule("C6H6")],
    ],
    ids=["molecule", "si-primitive", "water-box", "mixed-batch"],
)
def test_neighbour_list_matches_ase(structures: list[Atoms]) -> None:
    for atoms in structures:  # positions outside the cell must not matter
        if atoms.pbc.all():
            atoms.positions += atoms.cell.array.sum(axis=0) * 1.7 - 0.3
    assert pair_set(structures, 5.0) == ase_pair_set(structures, 5.0)


@pytest.mark.parametrize(
    "atoms",
    [molecule("CH3CH2OH"), silicon(), water_box(40, 10.0, seed=0), triclinic_sioh(), "slab"],
    ids=["molecule", "si-primitive", "water-box", "triclinic", "slab"],
)
def test_one_structure_pairs_equal_the_batched_neighbour_list(atoms) -> None:
    """The calculator's vesin pairs are the batched PyTorch list's, shifts included (also for
    cells shorter than the cutoff, positions outside the cell and a slab, periodic in x and y)."""
    if atoms == "slab":
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 2)
        atoms.rattle(0.05, seed=4)
        atoms.pbc = [True, True, False]
    elif atoms.pbc.all():
        atoms.positions += atoms.cell.array.sum(axis=0) * 1.7 - 0.3
    src, dst, shifts = pairs_of_one_structure(atoms.positions, atoms.cell.array, atoms.pbc, 5.0)
    pairs = list(zip(src.tolist(), dst.tolist(), map(tuple, shifts.tolist())))
    assert len(pairs) == len(set(pairs)) > 0
    assert set(pairs) == pair_set([atoms], 5.0)


def test_neighbour_list_large_systems_match_ase() -> None:
    """Above ALL_PAIRS_MAX_CANDIDATES a molecular batch goes through the cell list too."""
    crystal = bulk("Si", "diamond", a=5.43, cubic=True) * (4, 4, 4)
    crystal.rattle(0.1, seed=2)
    cluster = water_box(100, 15.0, seed=3)
    cluster.pbc = False
    cluster.cell = np.zeros((3, 3))
    assert len(cluster) ** 2 > ALL_PAIRS_MAX_CANDIDATES
    for structures in ([crystal], [cluster], [molecule("H2O"), cluster]):
        assert pair_set(structures, 5.0) == ase_pair_set(structures, 5.0)


@pytest.mark.parametrize("atoms", [molecule("CH3CH2OH"), triclinic_sioh()], ids=["molecule", "triclinic"])
def test_forces_are_minus_finite_difference_gradient(model: StudentPotential, atoms: Atoms) -> None:
    _, forces, _ = energy_forces_stress(model, **as_batch([atoms]), compute_stress=False)
    step = 1e-4
    numerical = np.zeros((len(atoms), 3))
    for i in range(len(atoms)):
        for k in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[i, k] += step
            minus.positions[i, k] -= step
            numerical[i, k] = -(energy_of(model, [plus])[0] - energy_of(model, [minus])[0]) / (2 * step)
    assert np.abs(forces.numpy()).max() > 1e-3
    np.testing.assert_allclose(forces.numpy(), numerical, atol=1e-6 * np.abs(numerical).max())


def finite_difference_stress(energy, atoms: Atoms, step: float = 1e-4) -> np.ndarray:
    """``(1/V) dE/d eps_ij`` by central differences of a symmetric strain of cell and positions."""
    stress = np.zeros((3, 3))
    for i in range(3):
        for j in range(3):
            strain = np.zeros((3, 3))
            strain[i, j] += 0.5 * step
            strain[j, i] += 0.5 * step
            deformed = []
            for sign in (1, -1):
                strained = atoms.copy()
                strained.set_cell(atoms.cell.array @ (np.eye(3) + sign * strain), scale_atoms=True)
                deformed.append(energy(strained))
            stress[i, j] = (deformed[0] - deformed[1]) / (2 * step) / atoms.get_volume()
    return stress


def test_finite_difference_stress_follows_ase_convention() -> None:
    """The finite-difference definition used below reproduces ASE's EMT stress, sign included."""
    atoms = bulk("Cu", "fcc", a=3.5) * (2, 1, 1)  # compressed (EMT a0 = 3.59 A)
    atoms.rattle(0.05, seed=4)
    atoms.calc = EMT()

    def emt_energy(strained: Atoms) -> float:
        strained.calc = EMT()
        return strained.get_potential_energy()

    reference = atoms.get_stress(voigt=False)
    assert np.trace(reference) < 0  # ASE: compressed crystal, negative stress
    np.testing.assert_allclose(finite_difference_stress(emt_energy, atoms), reference, atol=1e-6)


@pytest.mark.parametrize("atoms", [silicon(), triclinic_sioh()], ids=["si-primitive", "triclinic"])
def test_stress_is_strain_derivative_over_volume(model: StudentPotential, atoms: Atoms) -> None:
    _, _, stress = energy_forces_stress(model, **as_batch([atoms]), compute_stress=True)
    numerical = finite_difference_stress(lambda strained: energy_of(model, [strained])[0], atoms)
    assert np.abs(numerical).max() > 1e-4
    np.testing.assert_allclose(stress[0].numpy(), numerical, atol=1e-6 * np.abs(numerical).max())


def test_stress_is_nan_for_molecules(model: StudentPotential) -> None:
    _, _, stress = energy_forces_stress(model, **as_batch([molecule("H2O"), silicon()]), compute_stress=True)
    assert torch.isnan(stress[0]).all() and torch.isfinite(stress[1]).all()


def test_invariances(model: StudentPotential) -> None:
    atoms = triclinic_sioh()
    energy, forces, _ = energy_forces_stress(model, **as_batch([atoms]), compute_stress=False)

    rotation = Rotation.from_euler("xyz", [30, -50, 110], degrees=True).as_matrix()
    rotated = atoms.copy()
    rotated.set_cell(atoms.cell.array @ rotation.T)
    rotated.positions = atoms.positions @ rotation.T
    e_rot, f_rot, _ = energy_forces_stress(model, **as_batch([rotated]), compute_stress=False)
    np.testing.assert_allclose(e_rot.numpy(), energy.numpy(), rtol=1e-12)
    np.testing.assert_allclose(f_rot.numpy(), forces.numpy() @ rotation.T, atol=1e-10)

    moved = atoms.copy()
    moved.positions += [1.3, -7.2, 4.4]
    wrapped = moved.copy()
    wrapped.wrap()
    assert not np.allclose(wrapped.positions, moved.positions)
    for other in (moved, wrapped):
        e_other, f_other, _ = energy_forces_stress(model, **as_batch([other]), compute_stress=False)
        np.testing.assert_allclose(e_other.numpy(), energy.numpy(), rtol=1e-12)
        np.testing.assert_allclose(f_other.numpy(), forces.numpy(), atol=1e-10)

    permutation = np.random.default_rng(0).permutation(len(atoms))
    e_perm, f_perm, _ = energy_forces_stress(model, **as_batch([atoms[permutation]]), compute_stress=False)
    np.testing.assert_allclose(e_perm.numpy(), energy.numpy(), rtol=1e-12)
    np.testing.assert_allclose(f_perm.numpy(), forces.numpy()[permutation], atol=1e-10)

    mol = molecule("CH3CH2OH")
    e_mol = energy_of(model, [mol])
    mol.positions = (mol.positions + 3.0) @ rotation.T
    np.testing.assert_allclose(energy_of(model, [mol]), e_mol, rtol=1e-12)


def test_stress_rotates_with_the_cell_and_ignores_wrapping_and_order(model: StudentPotential) -> None:
    atoms = triclinic_sioh()
    _, _, stress = energy_forces_stress(model, **as_batch([atoms]), compute_stress=True)
    assert np.abs(stress.numpy()).max() > 1e-4

    rotation = Rotation.from_euler("zyx", [75, 20, -40], degrees=True).as_matrix()
    rotated = atoms.copy()
    rotated.set_cell(atoms.cell.array @ rotation.T)
    rotated.positions = atoms.positions @ rotation.T
    moved = atoms[np.random.default_rng(1).permutation(len(atoms))]
    moved.positions += [-11.0, 2.5, 17.3]  # several cells away, then wrapped back
    moved.wrap()
    _, _, s_rot = energy_forces_stress(model, **as_batch([rotated]), compute_stress=True)
    _, _, s_moved = energy_forces_stress(model, **as_batch([moved]), compute_stress=True)
    np.testing.assert_allclose(s_rot[0].numpy(), rotation @ stress[0].numpy() @ rotation.T, atol=1e-12)
    np.testing.assert_allclose(s_moved[0].numpy(), stress[0].numpy(), atol=1e-12)


def test_batch_equals_structures_alone(model: StudentPotential) -> None:
    structures = [molecule("CH3CH2OH"), triclinic_sioh(), silicon()]
    energy, forces, stress = energy_forces_stress(model, **as_batch(structures), compute_stress=True)
    offset = 0
    for b, atoms in enumerate(structures):
        e_alone, f_alone, s_alone = energy_forces_stress(model, **as_batch([atoms]), compute_stress=True)
        np.testing.assert_allclose(energy[b].item(), e_alone.item(), rtol=1e-12)
        np.testing.assert_allclose(forces[offset : offset + len(atoms)].numpy(), f_alone.numpy(), atol=1e-10)
        np.testing.assert_allclose(stress[b].numpy(), s_alone[0].numpy(), atol=1e-10)
        offset += len(atoms)


def test_reference_energies_are_added(model: StudentPotential) -> None:
    zeroed = StudentPotential(**{**model.hyperparameters, "reference_energies_eV": None}).double()
    zeros = torch.zeros(len(SPECIES), dtype=torch.float64)
    zeroed.load_state_dict({**model.state_dict(), "reference_energies_eV": zeros})
    water = molecule("H2O")
    np.testing.assert_allclose(energy_of(model, [water]) - energy_of(zeroed, [water]), 2 * -13.6 - 2041.0, rtol=1e-12)


def test_unknown_species_raises(model: StudentPotential) -> None:
    with pytest.raises(ValueError, match="29"):
        model(**as_batch([bulk("Cu")]))
    with pytest.raises(ValueError, match="120"):
        model(**as_batch([Atoms(numbers=[120, 1], positions=[[0, 0, 0], [1, 0, 0]])]))


def test_checkpoint_round_trip(model: StudentPotential, tmp_path) -> None:
    path = tmp_path / "student.pt"
    save_student(path, model, {"teacher": "ani1x", "val_force_mae_eV_per_A": 0.05})
    loaded, metadata = load_student(path)
    assert metadata == {"teacher": "ani1x", "val_force_mae_eV_per_A": 0.05}
    assert loaded.hyperparameters == model.hyperparameters
    structures = [molecule("CH3CH2OH"), triclinic_sioh()]
    np.testing.assert_array_equal(energy_of(loaded, structures), energy_of(model, structures))


def test_calculator_runs_molecular_dynamics(model: StudentPotential, tmp_path) -> None:
    path = tmp_path / "student.pt"
    save_student(path, model, {})
    atoms = triclinic_sioh()
    atoms.calc = StudentCalculator(path)
    energy, forces, stress = energy_forces_stress(model, **as_batch([atoms]), compute_stress=True)
    assert atoms.get_potential_energy() == pytest.approx(energy.item(), rel=1e-12)
    np.testing.assert_allclose(atoms.get_forces(), forces.numpy(), atol=1e-12)
    np.testing.assert_allclose(atoms.get_stress(voigt=False), stress[0].numpy(), atol=1e-12)
    assert atoms.get_stress().shape == (6,)

    atoms.set_momenta(np.random.default_rng(0).normal(scale=0.5, size=(len(atoms), 3)))
    start = atoms.get_positions()
    VelocityVerlet(atoms, timestep=0.5 * units.fs).run(3)
    assert not np.allclose(atoms.get_positions(), start)
    assert np.isfinite(atoms.get_potential_energy())

    water = molecule("H2O")
    water.calc = StudentCalculator(model)
    assert np.isfinite(water.get_forces()).all()
    with pytest.raises(PropertyNotImplementedError):
        water.get_stress()


def test_compiled_calculator_equals_eager() -> None:
    """``compiled=True`` (torch.compile, dynamic shapes) gives the eager numbers in float32, also
    after the number of atoms and edges changes (no recompilation is needed for that)."""
    torch.manual_seed(1)
    # One interaction layer: half the graph to compile (the student of test_inference_path.py's
    # compiled test, so that their periodic graphs are compiled once per session).
    model = StudentPotential(
        species=SPECIES, n_features=8, n_interactions=1, reference_energies_eV={1: -13.6, 8: -2041.0}
    )
    eager, compiled = StudentCalculator(model), StudentCalculator(model, compiled=True)
    assert (eager.inference_path, compiled.inference_path) == ("eager", "torch_compile")
    assert compiled.threads_for(AUTO_THREADS_MIN_ATOMS) == 1  # one thread at every size: no recompiles
    assert StudentCalculator(model, compiled=True, threads=2).threads_for(10) == 2
    for atoms in (water_box(12, 7.0, seed=5), triclinic_sioh(), water_box(20, 8.0, seed=6)):
        results = []
        for calculator in (eager, compiled):
            calculator.calculate(atoms, ["energy", "forces", "stress"], all_changes)
            results.append(dict(calculator.results))
        assert results[1]["energy"] == pytest.approx(results[0]["energy"], abs=1e-4)
        np.testing.assert_allclose(results[1]["forces"], results[0]["forces"], atol=2e-4)
        np.testing.assert_allclose(results[1]["stress"], results[0]["stress"], atol=2e-6)


def test_edge_gradient_forces_and_stress_equal_autograd_through_positions_and_strain(model: StudentPotential) -> None:
    """energy_forces_stress takes one gradient to the edge vectors; it must equal -dE/dr and the
    strain derivative of `forward` (positions and cell strained together) on a mixed batch."""
    structures = [molecule("CH3CH2OH"), triclinic_sioh(), silicon()]
    batch = as_batch(structures)
    energy, forces, stress = energy_forces_stress(model, **batch, compute_stress=True)

    positions = batch["positions_A"].clone().requires_grad_(True)
    strain = torch.zeros(len(structures), 3, 3, dtype=torch.float64, requires_grad=True)
    symmetric = 0.5 * (strain + strain.transpose(1, 2))
    counts = batch["atoms_ptr"][1:] - batch["atoms_ptr"][:-1]
    per_atom = symmetric.repeat_interleave(counts, dim=0)
    strained_positions = positions + torch.einsum("mi,mij->mj", positions, per_atom)
    strained_cell = batch["cell_A"] + batch["cell_A"] @ symmetric
    reference = model(batch["numbers"], strained_positions, strained_cell, batch["pbc"], batch["atoms_ptr"])
    d_positions, d_strain = torch.autograd.grad(reference.sum(), [positions, strain])

    np.testing.assert_allclose(energy.numpy(), reference.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(forces.numpy(), -d_positions.numpy(), atol=1e-10)
    volumes = np.array([abs(np.linalg.det(atoms.cell.array)) for atoms in structures[1:]])
    np.testing.assert_allclose(stress[1:].numpy(), d_strain[1:].numpy() / volumes[:, None, None], atol=1e-10)
    assert torch.isnan(stress[0]).all()


def test_state_dict_keys_are_those_of_saved_checkpoints() -> None:
    """Checkpoints written before the inference rework still load: same parameter names."""
    layer = [
        "message.0.weight",
        "message.0.bias",
        "message.2.weight",
        "message.2.bias",
        "vector_u.weight",
        "vector_v.weight",
        "update.0.weight",
        "update.0.bias",
        "update.2.weight",
        "update.2.bias",
    ]
    expected = {
        "reference_energies_eV",
        "energy_scale_eV",
        "embedding.weight",
        "radial_filter.weight",
        "readout.0.weight",
        "readout.0.bias",
        "readout.2.weight",
        "readout.2.bias",
    }
    expected |= {f"interactions.{i}.{name}" for i in range(2) for name in layer}
    assert set(StudentPotential(species=SPECIES, n_interactions=2).state_dict()) == expected
    moments = {
        f"angular_moments.0.{name}"
        for name in ["neighbour_weight.weight", "neighbour_weight.bias", "radial_filter.weight"]
        + [f"mix.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")]
    }
    with_moments = StudentPotential(species=SPECIES, n_interactions=2, angular_order=3)
    assert set(with_moments.state_dict()) == expected | moments


def test_angular_harmonics_sum_to_legendre_polynomials() -> None:
    """The moments' invariants are rotation-invariant because, for any two directions, the sum over
    m of the harmonics' products is P_l of their cosine (orders 2 and 3)."""
    rng = np.random.default_rng(3)
    a, b = (torch.nn.functional.normalize(torch.as_tensor(rng.normal(size=(200, 3))), dim=1) for _ in range(2))
    cosine = (a * b).sum(dim=1)
    products = semi_normalised_harmonics(a, 3) * semi_normalised_harmonics(b, 3)
    np.testing.assert_allclose(products[:, :5].sum(dim=1), 1.5 * cosine**2 - 0.5, atol=1e-12)
    np.testing.assert_allclose(products[:, 5:].sum(dim=1), 2.5 * cosine**3 - 1.5 * cosine, atol=1e-12)
    assert semi_normalised_harmonics(a, 2).shape == (200, 5)
    with pytest.raises(ValueError, match="angular order must be 2 or 3"):
        StudentPotential(species=SPECIES, angular_order=4)


def test_calculator_threads(model: StudentPotential) -> None:
    before = torch.get_num_threads()  # 1, from the single_thread fixture
    torch.set_num_threads(2)
    automatic = StudentCalculator(model)
    torch.set_num_threads(before)
    assert automatic.threads_for(10) == 1
    assert automatic.threads_for(AUTO_THREADS_MIN_ATOMS) == 2
    assert StudentCalculator(model, threads=3).threads_for(10) == 3
    with pytest.raises(ValueError, match="threads"):
        StudentCalculator(model, threads=0)
    atoms = triclinic_sioh()
    atoms.calc = StudentCalculator(model, threads=2)
    atoms.get_forces()
    assert torch.get_num_threads() == before


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning, Linux only")
def test_keep_freed_memory_stops_page_faults_on_reallocation() -> None:
    """After keep_freed_memory, a large tensor allocated again and again reuses the freed pages.

    Run in a fresh process: how the heap is laid out decides after how many allocations glibc
    starts reusing a freed 64 MB block (seen: from the second to the fourth in fresh processes;
    never within six in the long process of this test module). Ten allocations, the last three
    of which must not fault their pages in again. Faults are counted for the main thread, on one
    torch thread."""
    script = (
        "import resource, torch\n"
        "from mlff_distill.student.calculator import keep_freed_memory\n"
        "torch.set_num_threads(1)\n"
        "assert keep_freed_memory()\n"
        "n_floats = 16 << 20  # 64 MB, above glibc's largest default mmap threshold (32 MB)\n"
        "for _ in range(10):\n"
        "    faults = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt\n"
        "    torch.empty(n_floats).fill_(1.0)\n"
        "    print(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - faults)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    faults = [int(line) for line in result.stdout.split()]
    pages = (16 << 20) * 4 // 4096
    assert faults[0] > pages // 2  # the first allocation does fault its pages in: the count works
    assert all(count < pages // 10 for count in faults[-3:]), faults


def walled(
    model: StudentPotential, stiffness_eV_per_A3: float, radii_A: dict[tuple[int, int], float]
) -> StudentPotential:
    """``model``'s weights with a contact wall of these radii (by pair of atomic numbers)."""
    matrix = [[radii_A.get((min(a, b), max(a, b)), 0.0) for b in SPECIES] for a in SPECIES]
    hyperparameters = {**model.hyperparameters, "contact_wall_eV_per_A3": stiffness_eV_per_A3, "contact_wall_A": matrix}
    copy = StudentPotential(**hyperparameters).double()
    copy.load_state_dict(model.state_dict())
    return copy


def test_contact_wall_is_its_pair_energy_below_the_radius_and_nothing_above(model: StudentPotential) -> None:
    radii = {(1, 1): 1.6, (8, 8): 2.9, (1, 8): 0.5}
    wall = walled(model, 50.0, radii)
    box = water_box(20, 8.0, seed=1)  # intramolecular H-H 1.51 A: inside the H-H wall
    i, j, d = neighbor_list("ijd", box, 3.0)
    r0 = np.array([radii.get((min(a, b), max(a, b)), 0.0) for a, b in zip(box.numbers[i], box.numbers[j])])
    expected = 0.5 * (50.0 * np.clip(r0 - d, 0.0, None) ** 3).sum()  # ordered pairs: each twice
    assert expected > 1.0
    np.testing.assert_allclose(energy_of(wall, [box]) - energy_of(model, [box]), expected, rtol=1e-6)  # radii: float32
    far = molecule("CH3OH")  # no pair inside any wall
    np.testing.assert_allclose(energy_of(wall, [far]), energy_of(model, [far]), rtol=0, atol=1e-12)


def test_contact_wall_forces_and_stress_are_its_derivatives(model: StudentPotential) -> None:
    wall = walled(model, 50.0, {(1, 1): 1.6, (8, 8): 2.9})
    atoms = water_box(6, 5.0, seed=2)
    _, forces, stress = energy_forces_stress(wall, **as_batch([atoms]), compute_stress=True)
    _, plain_forces, _ = energy_forces_stress(model, **as_batch([atoms]), compute_stress=False)
    assert np.abs(forces.numpy() - plain_forces.numpy()).max() > 0.1  # the wall pushes
    step = 1e-4
    for i, k in [(0, 0), (1, 2), (len(atoms) - 1, 1)]:
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[i, k] += step
        minus.positions[i, k] -= step
        numerical = -(energy_of(wall, [plus])[0] - energy_of(wall, [minus])[0]) / (2 * step)
        np.testing.assert_allclose(forces[i, k].item(), numerical, atol=1e-6 * max(abs(numerical), 1.0))
    numerical_stress = finite_difference_stress(lambda strained: energy_of(wall, [strained])[0], atoms)
    np.testing.assert_allclose(stress[0].numpy(), numerical_stress, atol=1e-6 * np.abs(numerical_stress).max())


def test_contact_wall_survives_a_checkpoint(model: StudentPotential, tmp_path) -> None:
    wall = walled(model, 50.0, {(1, 1): 1.6})
    save_student(tmp_path / "student.pt", wall, {})
    loaded, _ = load_student(tmp_path / "student.pt")
    assert loaded.hyperparameters == wall.hyperparameters
    box = water_box(20, 8.0, seed=1)
    np.testing.assert_array_equal(energy_of(loaded, [box]), energy_of(wall, [box]))
