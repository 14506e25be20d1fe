"""Extra sampling strategies and filters: seed files, strain, rattle-relax, normal modes, selection."""

import logging

import numpy as np
import pytest
from ase import Atoms, units
from ase.build import bulk, molecule
from ase.io import write

from mlff_distill.sampling.sampler import sample_structures
from mlff_distill.sampling.seeds import read_seed_files, seed_crystals
from mlff_distill.sampling.strategies import (
    cell_heights_A,
    ensemble_spread,
    harmonic_displacements_A,
    max_force_filter,
    normal_mode_samples,
    rattle_and_strain,
    rattle_relax,
    remove_near_duplicates,
    replicate_to_min_size,
    select_by_disagreement,
    teacher_hessian,
    teacher_relax,
    vibrational_modes,
    with_vacancies,
)
from mlff_distill.settings import SampleSettings, section_settings
from mlff_distill.teachers import TeacherCalculator


def seeded(name: str) -> Atoms:
    atoms = molecule(name)
    atoms.info = {"seed": name}
    return atoms


@pytest.fixture(scope="module")
def emt_teacher():
    from mlff_distill.teachers.ase_calculator import AseCalculatorTeacher

    return AseCalculatorTeacher("ase.calculators.emt:EMT")


def test_seed_files_round_trip(tmp_path):
    copper = bulk("Cu", "fcc", a=3.6, cubic=True)
    strained = copper.copy()
    strained.positions[0] += 0.05
    write(tmp_path / "cu.extxyz", [copper, strained], format="extxyz")
    write(tmp_path / "cu.cif", copper, format="cif")
    seeds = read_seed_files([str(tmp_path / "cu.extxyz"), tmp_path / "cu.cif"])
    assert [s.info["seed"] for s in seeds] == ["cu.extxyz:0", "cu.extxyz:1", "cu.cif:0"]
    for atoms, original in zip(seeds, [copper, strained, copper]):
        assert atoms.get_chemical_formula() == "Cu4" and atoms.pbc.all()
        assert np.allclose(atoms.cell, original.cell, atol=1e-4)
        assert np.allclose(atoms.get_scaled_positions() % 1.0, original.get_scaled_positions() % 1.0, atol=1e-4)


def test_seed_files_errors_name_the_file(tmp_path):
    (tmp_path / "empty.xyz").write_text("")
    (tmp_path / "junk.cif").write_text("this is not a CIF file\n")
    with pytest.raises(ValueError, match="empty.xyz"):
        read_seed_files([tmp_path / "empty.xyz"])
    with pytest.raises(ValueError, match="junk.cif"):
        read_seed_files([tmp_path / "junk.cif"])
    with pytest.raises(ValueError, match="missing.xyz"):
        read_seed_files([tmp_path / "missing.xyz"])


def test_replication_reaches_minimum_size():
    primitive = bulk("Cu", "fcc", a=3.6)  # heights about 2.08 Angstrom
    bigger = replicate_to_min_size(primitive, 8.0)
    assert cell_heights_A(bigger).min() >= 8.0
    repeats = [int(r) for r in bigger.info["replicated"].split()]
    assert len(bigger) == len(primitive) * np.prod(repeats)
    # one fewer repeat along any axis would be too small
    assert all(cell_heights_A(primitive)[i] * (repeats[i] - 1) < 8.0 for i in range(3))
    slab = primitive.copy()
    slab.pbc = [True, True, False]
    assert replicate_to_min_size(slab, 8.0).info["replicated"].endswith(" 1")
    water = seeded("H2O")
    assert replicate_to_min_size(water, 8.0) is water


def test_strain_is_within_bounds_and_changes_the_cell():
    copper = bulk("Cu", "fcc", a=3.6, cubic=True)
    copper.info = {"seed": "Cu"}
    structures = rattle_and_strain(copper, 20, (0.01, 0.05), 0.03, np.random.default_rng(0))
    for atoms in structures:
        strain = atoms.info["strain"].reshape(3, 3)
        assert np.allclose(strain, strain.T) and np.abs(strain).max() <= 0.03
        assert np.allclose(atoms.cell, copper.cell @ (np.eye(3) + strain))
        assert not np.allclose(atoms.cell, copper.cell)
        assert atoms.info["strategy"] == "rattle-strain" and 0.01 <= atoms.info["sigma_A"] <= 0.05
    water = seeded("H2O")
    for atoms in rattle_and_strain(water, 3, (0.01, 0.05), 0.03, np.random.default_rng(0)):
        assert not atoms.cell.any() and not atoms.info["strain"].any()


def test_rattle_relax_lowers_energy_and_records_parents(ani1x_teacher, single_thread):
    seed = seeded("NH3")
    args = dict(generations=1, children_per_generation=6, sigma_A=0.08, temperature_K=1000.0)
    rattled = rattle_relax(seed, ani1x_teacher, relax_steps=0, rng=np.random.default_rng(3), **args)
    relaxed = rattle_relax(seed, ani1x_teacher, relax_steps=8, rng=np.random.default_rng(3), **args)
    e_rattled = [teacher_relax(a.copy(), TeacherCalculator(ani1x_teacher), 0) for a in rattled]
    e_relaxed = [teacher_relax(a.copy(), TeacherCalculator(ani1x_teacher), 0) for a in relaxed]
    assert np.mean(e_relaxed) < np.mean(e_rattled)

    family = rattle_relax(
        seed,
        ani1x_teacher,
        generations=3,
        children_per_generation=2,
        sigma_A=0.05,
        relax_steps=2,
        temperature_K=1000.0,
        rng=np.random.default_rng(0),
    )
    assert [a.info["generation"] for a in family] == [1, 1, 2, 2, 3, 3]
    assert [a.info["member"] for a in family] == list(range(1, 7))
    for atoms in family:
        assert atoms.info["strategy"] == "rattle-relax" and atoms.info["seed"] == "NH3"
        # parents come from earlier generations (member 0 is the seed)
        assert 0 <= atoms.info["parent"] <= 2 * (atoms.info["generation"] - 1)


def test_normal_modes_of_water(ani1x_teacher, single_thread):
    water = seeded("H2O")
    teacher_relax(water, TeacherCalculator(ani1x_teacher), 50)  # near the teacher's minimum
    hessian = teacher_hessian(water, ani1x_teacher)
    eigenvalues, vectors = vibrational_modes(water, hessian)
    assert len(eigenvalues) == 3 and (eigenvalues > 0).all()
    wavenumbers = np.sqrt(eigenvalues / units._amu * units._e * 1e20) / (2 * np.pi * 2.998e10)
    assert 1000 < wavenumbers.min() and wavenumbers.max() < 4500  # bend ~1600, stretches ~3800

    temperature = 300.0
    displacements = harmonic_displacements_A(
        water.get_masses(), eigenvalues, vectors, temperature, 2000, np.random.default_rng(0)
    )
    weighted = displacements.reshape(len(displacements), -1) * np.repeat(np.sqrt(water.get_masses()), 3)
    amplitudes = weighted @ vectors  # mass-weighted mode coordinates
    expected = units.kB * temperature / eigenvalues
    assert np.allclose(amplitudes.var(axis=0), expected, rtol=0.3)
    # harmonic equipartition: mean potential energy is k_B T / 2 per mode
    flat = displacements.reshape(len(displacements), -1)
    potential = 0.5 * np.einsum("si,ij,sj->s", flat, hessian, flat)
    assert potential.mean() == pytest.approx(1.5 * units.kB * temperature, rel=0.3)

    samples = normal_mode_samples(water, ani1x_teacher, temperature, 5, np.random.default_rng(1))
    assert len(samples) == 5
    for atoms in samples:
        assert atoms.info["strategy"] == "normal-modes" and atoms.info["n_modes"] == 3
        assert 0 < np.abs(atoms.positions - water.positions).max() < 0.5
    # one count per temperature; the hotter samples lie farther from the seed
    samples = normal_mode_samples(water, ani1x_teacher, [100.0, 1000.0], [40, 60], np.random.default_rng(2))
    temperatures = np.array([a.info["temperature_K"] for a in samples])
    assert (temperatures == 100.0).sum() == 40 and (temperatures == 1000.0).sum() == 60
    spread = {
        t: np.mean([np.abs(a.positions - water.positions).std() for a in samples if a.info["temperature_K"] == t])
        for t in (100.0, 1000.0)
    }
    assert spread[1000.0] > 2 * spread[100.0]  # amplitudes grow as sqrt(T): about 3.2x
    with pytest.raises(ValueError, match="2 counts for 3 temperatures"):
        normal_mode_samples(water, ani1x_teacher, [100.0, 300.0, 1000.0], [1, 2], np.random.default_rng(0))


def test_normal_modes_of_periodic_copper(emt_teacher):
    copper = bulk("Cu", "fcc", a=3.6, cubic=True)
    copper.info = {"seed": "Cu"}
    eigenvalues, _ = vibrational_modes(copper, teacher_hessian(copper, emt_teacher))
    assert len(eigenvalues) == 3 * len(copper) - 3
    samples = normal_mode_samples(copper, emt_teacher, 300.0, 3, np.random.default_rng(0))
    assert all(np.allclose(a.cell, copper.cell) for a in samples)


def test_disagreement_selection_picks_top_spread(ani1x_teacher, single_thread):
    rng = np.random.default_rng(0)
    structures = []
    for name in ("H2O", "CH4"):
        for sigma in (0.0, 0.05, 0.15, 0.3):
            atoms = seeded(name)
            atoms.positions += rng.normal(0.0, sigma, atoms.positions.shape)
            structures.append(atoms)
    out = ani1x_teacher.compute(structures)
    starts = np.cumsum([0] + [len(a) for a in structures])
    direct = [
        np.linalg.norm(out.forces_std_eV_per_A[starts[i] : starts[i + 1]], axis=1).max() for i in range(len(structures))
    ]
    assert np.allclose(ensemble_spread(structures, ani1x_teacher), direct, rtol=1e-4, atol=1e-6)
    chosen = select_by_disagreement(structures, ani1x_teacher, 3)
    top = sorted(np.argsort(direct)[-3:])
    assert [structures.index(a) for a in chosen] == top
    assert all(
        a.info["ensemble_force_std_eV_per_A"] == pytest.approx(d, rel=1e-4, abs=1e-6)
        for a, d in zip(structures, direct)
    )


def test_max_force_filter():
    structures = [seeded("H2O"), seeded("NH3"), seeded("CH4")]
    forces = [
        np.full((3, 3), 0.1),
        np.array([[0, 0, 5.0]] + [[0, 0, 0]] * 3),
        np.full((5, 3), 1.0),
    ]  # norms 0.17, 5, 1.73 eV/Angstrom
    assert max_force_filter(structures, forces, 2.0) == [structures[0], structures[2]]
    assert max_force_filter(structures, np.concatenate(forces), 1.0) == [structures[0]]
    with pytest.raises(ValueError):
        max_force_filter(structures, forces[:2], 1.0)


def test_near_duplicates_are_removed():
    water = seeded("H2O")
    rotated = water.copy()
    rotated.rotate(40, "z")
    rotated.translate([1.0, 2.0, 3.0])
    shifted = water.copy()
    shifted.positions[1] += [0.0, 0.2, 0.0]
    ammonia = seeded("NH3")
    kept = remove_near_duplicates([water, rotated, shifted, ammonia, ammonia.copy()], 0.01)
    assert kept == [water, shifted, ammonia]
    copper = bulk("Cu", "fcc", a=3.6, cubic=True)
    moved = copper.copy()
    moved.translate([0.3, 0.1, 0.2])  # same crystal, shifted origin
    assert len(remove_near_duplicates([copper, moved], 1e-6)) == 1


def test_sample_stage_with_seed_files_and_new_strategies(emt_teacher, tmp_path):
    write(tmp_path / "cu.cif", bulk("Cu", "fcc", a=3.6), format="cif")
    md = {
        "timestep_fs": 1.0,
        "friction_per_fs": 0.02,
        "equilibration_steps": 2,
        "frames_per_trajectory": 2,
        "steps_between_frames": 2,
        "temperatures_K": [300.0],
    }
    settings = section_settings(
        SampleSettings,
        "sample",
        {
            "molecules": [],
            "seed_files": [str(tmp_path / "cu.cif")],
            "min_cell_length_A": 5.0,
            "rattle": {"structures_per_seed": 2, "sigma_A": [0.02, 0.05]},
            "md": md,
            "rattle_strain": {"structures_per_seed": 3, "sigma_A": [0.01, 0.02], "max_strain": 0.02},
            "rattle_relax": {
                "generations": 2,
                "children_per_generation": 2,
                "sigma_A": 0.05,
                "relax_steps": 2,
                "temperature_K": 1000.0,
            },
            "normal_modes": {"structures_per_seed": 2, "temperatures_K": [300.0]},
            "duplicate_tolerance_A": 1e-6,
            "max_force_eV_per_A": 50.0,
            "min_distance_A": 0.6,
            "val_fraction": 0.2,
            "test_fraction": 0.2,
        },
    )
    structures = sample_structures(settings, 0, emt_teacher, False, logging.getLogger("test"))
    strategies = [a.info["strategy"] for a in structures]
    assert {s: strategies.count(s) for s in set(strategies)} == {
        "rattle": 2,
        "md": 2,
        "rattle-strain": 3,
        "rattle-relax": 4,
        "normal-modes": 2,
    }
    for atoms in structures:
        assert atoms.pbc.all() and cell_heights_A(atoms).min() >= 5.0 and len(atoms) == 27
        assert atoms.info["seed"] == "cu.cif:0"
    relax_groups = {a.info["group"] for a in structures if a.info["strategy"] == "rattle-relax"}
    assert len(relax_groups) == 1  # one family tree, one group: one split


def test_vacancies_remove_atoms_and_need_a_periodic_seed():
    seed = bulk("Si", "diamond", a=5.43, cubic=True)
    seed.info = {"seed": "Si"}
    structures = with_vacancies(seed, 6, 2, [0.01, 0.02], np.random.default_rng(0))
    assert {len(seed) - len(a) for a in structures} == {a.info["n_vacancies"] for a in structures}
    assert {a.info["n_vacancies"] for a in structures} <= {1, 2}
    assert all(a.info["strategy"] == "vacancies" and a.pbc.all() for a in structures)
    with pytest.raises(ValueError, match="'water' is not periodic"):
        with_vacancies(_renamed("H2O", "water"), 1, 1, [0.01, 0.02], np.random.default_rng(0))


def _renamed(name: str, seed: str) -> Atoms:
    atoms = molecule(name)
    atoms.info = {"seed": seed}
    return atoms


def test_builtin_crystals_and_vacancies_in_the_sample_stage(emt_teacher):
    settings = section_settings(
        SampleSettings,
        "sample",
        {
            "molecules": [],
            "min_cell_length_A": 7.0,
            "crystals": [{"formula": "Cu", "structure": "fcc", "a_A": 3.61}],
            "rattle": {"structures_per_seed": 1},
            "md": {"frames_per_trajectory": 0},
            "normal_modes": {"structures_per_seed": 0},
            "vacancies": {"structures_per_seed": 3, "max_vacancies": 1},
        },
    )
    structures = sample_structures(settings, 0, emt_teacher, False, logging.getLogger("test"))
    counts = {a.info["strategy"]: len(a) for a in structures}
    assert counts == {"rattle": 32, "vacancies": 31}
    assert all(a.info["seed"] == "Cu-fcc" for a in structures)


def test_unknown_crystal_structure_is_named():
    with pytest.raises(ValueError, match=r"sample.crystals\[0\]"):
        seed_crystals([{"formula": "Xx", "structure": "fcc", "a_A": 3.6, "cubic": True}])
