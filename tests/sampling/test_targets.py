"""Targets: the config's systems read and checked, fresh starts, periodic systems of a size."""

import numpy as np
import pytest
from ase import Atoms, units
from ase.build import bulk, molecule
from ase.io import write

from mlff_distill.sampling.targets import Target, target_of_size, target_start, targets_from


def density_g_per_cm3(atoms):
    return atoms.get_masses().sum() * units._amu * 1e3 / (atoms.get_volume() * 1e-24)


@pytest.fixture
def files(tmp_path):
    """A molecule file (Cu2), a crystal file (Si), a periodic 'molecule' and a non-periodic 'crystal'."""
    paths = {name: tmp_path / f"{name}.extxyz" for name in ("cu2", "si", "periodic", "molecule")}
    write(paths["cu2"], Atoms("Cu2", positions=[[0, 0, 0], [2.3, 0, 0]]))
    write(paths["si"], bulk("Si", "diamond", a=5.43, cubic=True))
    write(paths["periodic"], bulk("Cu", "fcc", a=3.6))
    write(paths["molecule"], molecule("H2O"))
    return {name: str(path) for name, path in paths.items()}


def test_systems_become_targets(files):
    targets = targets_from(
        [
            {"name": "water", "box": {"H2O": 8, files["cu2"]: 2}, "density_g_per_cm3": 1.0, "temperatures_K": [300]},
            {"name": "ethanol", "molecule": "CH3CH2OH", "temperatures_K": [300, 400]},
            {"name": "dimer", "molecule": files["cu2"], "temperatures_K": [500]},
            {"name": "si", "file": files["si"], "temperatures_K": [300, 900]},
        ]
    )
    water, ethanol, dimer, si = targets
    assert (water.kind, water.counts, water.density_g_per_cm3) == ("box", {"H2O": 8, files["cu2"]: 2}, 1.0)
    assert water.molecules["H2O"].get_chemical_formula() == "H2O" and not water.molecules["H2O"].pbc.any()
    assert water.molecules[files["cu2"]].get_distance(0, 1) == pytest.approx(2.3)
    assert (ethanol.kind, ethanol.temperatures_K, ethanol.structure) == ("molecule", (300.0, 400.0), None)
    assert ethanol.molecules["CH3CH2OH"].get_chemical_formula() == "C2H6O"
    assert dimer.kind == "molecule" and len(dimer.molecules[files["cu2"]]) == 2
    assert si.kind == "structure" and len(si.structure) == 8 and si.structure.pbc.all()


SILICON = {"formula": "Si", "structure": "diamond", "a_A": 5.43, "cubic": True, "repeat": [2, 2, 2], "vacancies": 0}


def test_a_built_in_crystal_is_repeated_and_loses_its_vacancies():
    perfect, vacant = targets_from(
        [
            {"name": "si", "crystal": SILICON, "temperatures_K": [300]},
            {"name": "si-v2", "crystal": {**SILICON, "vacancies": 2}, "temperatures_K": [300, 1200]},
        ]
    )
    assert perfect.kind == vacant.kind == "structure"
    assert len(perfect.structure) == 64 and perfect.structure.pbc.all()
    assert np.allclose(perfect.structure.cell.lengths(), 10.86)
    assert len(vacant.structure) == 62 and np.allclose(vacant.structure.cell.array, perfect.structure.cell.array)
    kept = {tuple(np.round(p, 6)) for p in vacant.structure.positions}
    removed = [i for i, p in enumerate(perfect.structure.positions) if tuple(np.round(p, 6)) not in kept]
    assert removed == [0, 32]  # spread over the cell
    start = target_start(vacant, np.random.default_rng(0), 1.6)
    assert len(start) == 62 and start.info == {"seed": "si-v2", "target": "si-v2"}
    assert len(target_of_size(vacant, 500, np.random.default_rng(0), 1.6)) == 62 * 8


@pytest.mark.parametrize(
    ("crystal", "message"),
    [
        ({**SILICON, "vacancies": 64}, r"systems\[0\] \(x\): crystal: 64 vacancies in a cell of 64 atoms"),
        ({**SILICON, "structure": "bcc", "formula": "SiO2"}, r"systems\[0\] \(x\): crystal .*ase.build.bulk failed"),
    ],
)
def test_a_crystal_that_cannot_be_built_is_named(crystal, message):
    with pytest.raises(ValueError, match=message):
        targets_from([{"name": "x", "crystal": crystal, "temperatures_K": [300]}])


@pytest.mark.parametrize(
    "systems, message",
    [
        ([{"name": "x", "molecule": "XeF9", "temperatures_K": [300]}], r"systems\[0\] \(x\).*'XeF9'.*neither"),
        (
            [{"name": "x", "box": {"XeF9": 2}, "density_g_per_cm3": 1.0, "temperatures_K": [300]}],
            r"systems\[0\] \(x\).*'XeF9'.*neither",
        ),
        ([{"name": "x", "file": "{molecule}", "temperatures_K": [300]}], r"\(x\).*not periodic.*use molecule:"),
        ([{"name": "x", "molecule": "{periodic}", "temperatures_K": [300]}], r"\(x\).*is periodic.*use file:"),
        (
            [{"name": "w", "molecule": "H2O", "temperatures_K": [300]}] * 2,
            r"systems\[1\] \(w\).*used twice",
        ),
        ([{"name": "x", "molecule": "H2O", "temperatures_K": [300, 0]}], r"\(x\).*temperatures_K.*> 0"),
        ([{"name": "x", "molecule": "H2O", "temperatures_K": [-5]}], r"\(x\).*temperatures_K"),
        ([{"name": "x", "box": {"H2O": 4}, "density_g_per_cm3": 0, "temperatures_K": [300]}], r"\(x\).*density"),
        ([{"name": "x", "molecule": "H2O", "file": "{si}", "temperatures_K": [300]}], r"\(x\).*exactly one"),
        ([{"name": "x", "box": {"H2O": 0}, "density_g_per_cm3": 1.0, "temperatures_K": [300]}], r"\(x\).*>= 1"),
    ],
)
def test_bad_systems_are_named_with_the_problem(files, systems, message):
    systems = [{k: v.format(**files) if isinstance(v, str) else v for k, v in s.items()} for s in systems]
    with pytest.raises(ValueError, match=message):
        targets_from(systems)


def test_starts_are_fresh_boxes_molecules_and_copies(files):
    water, ethanol, si = targets_from(
        [
            {"name": "water", "box": {"H2O": 8}, "density_g_per_cm3": 1.0, "temperatures_K": [300]},
            {"name": "ethanol", "molecule": "CH3CH2OH", "temperatures_K": [300]},
            {"name": "si", "file": files["si"], "temperatures_K": [300]},
        ]
    )
    rng = np.random.default_rng(0)
    first, second = target_start(water, rng, 1.6), target_start(water, rng, 1.6)
    assert first.info == {"seed": "water", "target": "water"} and first.pbc.all()
    assert first.arrays["molecule_index"].tolist() == np.repeat(np.arange(8), 3).tolist()
    assert density_g_per_cm3(first) == pytest.approx(1.0, rel=0.01)
    assert not np.allclose(first.positions, second.positions)
    molecule_start = target_start(ethanol, rng, 1.6)
    assert molecule_start.info == {"seed": "ethanol", "target": "ethanol"} and not molecule_start.pbc.any()
    crystal = target_start(si, rng, 1.6)
    crystal.positions += 1.0
    assert crystal.info["target"] == "si" and not np.allclose(crystal.positions, si.structure.positions)


def test_a_box_that_cannot_be_packed_names_the_target():
    (dense,) = targets_from([{"name": "dense", "box": {"H2O": 8}, "density_g_per_cm3": 5.0, "temperatures_K": [300]}])
    with pytest.raises(ValueError, match=r"target dense: density_g_per_cm3=5.0"):
        target_start(dense, np.random.default_rng(0), 1.6)


def test_systems_of_a_size_for_timing(files):
    mix, si, ethanol = targets_from(
        [
            {"name": "mix", "box": {"H2O": 24, "CH3OH": 6}, "density_g_per_cm3": 0.95, "temperatures_K": [300]},
            {"name": "si", "file": files["si"], "temperatures_K": [300]},
            {"name": "ethanol", "molecule": "CH3CH2OH", "temperatures_K": [300]},
        ]
    )
    rng = np.random.default_rng(0)
    for size in (64, 512):
        box = target_of_size(mix, size, rng, 1.6)
        assert abs(len(box) - size) <= 0.1 * size and box.info["system"] == "mix"
        assert density_g_per_cm3(box) == pytest.approx(0.95, rel=0.01)
        index = box.arrays["molecule_index"]
        formulas = [box[index == m].get_chemical_formula() for m in range(index.max() + 1)]
        assert formulas.count("H2O") / formulas.count("CH4O") == pytest.approx(4.0, rel=0.3)
    assert len(target_of_size(si, 64, rng, 1.6)) == 64 and len(target_of_size(si, 500, rng, 1.6)) == 512
    with pytest.raises(ValueError, match="ethanol.*not periodic"):
        target_of_size(ethanol, 64, rng, 1.6)


def test_target_is_frozen():
    target = Target("t", "molecule", (300.0,), {"H2O": 1}, {"H2O": molecule("H2O")}, None, None)
    with pytest.raises(AttributeError):
        target.name = "u"
