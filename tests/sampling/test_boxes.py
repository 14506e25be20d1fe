"""Periodic systems: boxes packed at a mass density, scaled compositions, repeated cells, timing systems."""

import numpy as np
import pytest
from ase import units
from ase.build import bulk, fcc111, molecule
from ase.neighborlist import neighbor_list

from mlff_distill.sampling.boxes import (
    build_timing_systems,
    pack_box,
    replicated,
    scaled_counts,
    vdw_volume_lower_bound_A3,
)
from mlff_distill.sampling.strategies import cell_heights_A


def test_molecules_are_packed_at_the_density_without_close_contacts():
    seeds = [molecule(name) for name in ("H2O", "CH4", "CH3OH")]
    systems = build_timing_systems(seeds, [64, 300], cutoff_A=5.0, seed=0)
    for size, system in zip([64, 300], systems):
        assert system.pbc.all() and abs(len(system) - size) <= 3  # half the largest seed
        assert len(system) / system.get_volume() == pytest.approx(0.1)
        assert set(system.numbers) <= {1, 6, 8}
        distances = system.get_all_distances(mic=True)[np.triu_indices(len(system), 1)]
        # Closest pair inside a molecule (C-H, O-H: ~0.96 A) or between molecules (>= 1.2 A).
        assert distances.min() > 0.9
    again = build_timing_systems(seeds, [64], cutoff_A=5.0, seed=0)[0]
    assert np.allclose(again.positions, systems[0].positions)


def test_molecules_in_a_packed_box_keep_their_shape():
    water = molecule("H2O")
    box = build_timing_systems([water], [90], cutoff_A=5.0, seed=3)[0]
    for start in range(0, len(box), 3):
        copy = box[start : start + 3]
        assert list(copy.numbers) == list(water.numbers)
        assert np.allclose(
            np.sort(copy.get_all_distances(mic=True).ravel()), np.sort(water.get_all_distances().ravel()), atol=1e-8
        )


def test_crystals_are_replicated_near_cubic_to_about_the_size():
    copper = bulk("Cu", "fcc", a=3.6, cubic=True)
    systems = build_timing_systems([molecule("H2O"), copper], [64, 500, 2048], cutoff_A=5.0, seed=0)
    assert [len(s) for s in systems][1:] == [500, 2048]
    assert 48 <= len(systems[0]) <= 96 and set(systems[0].numbers) == {29}
    for system in systems:
        heights = cell_heights_A(system)
        assert heights.min() >= 5.0 and heights.max() / heights.min() < 1.6


def test_unusable_seeds_and_sizes_are_named():
    with pytest.raises(ValueError, match="slabs"):
        build_timing_systems([fcc111("Cu", (2, 2, 3), vacuum=5.0)], [64], 5.0, 0)
    with pytest.raises(ValueError, match="sizes"):
        build_timing_systems([molecule("H2O")], [6], 5.0, 0)
    with pytest.raises(ValueError, match="seeds"):
        build_timing_systems([], [64], 5.0, 0)


# ------------------------------------------------------------------------------- pack_box and co.


def density_g_per_cm3(atoms):
    return atoms.get_masses().sum() * units._amu * 1e3 / (atoms.get_volume() * 1e-24)


def close_pairs(atoms, distance_A):
    """(i, j, shift) of every pair closer than ``distance_A``, periodic images included."""
    first, second, shifts = neighbor_list("ijS", atoms, distance_A)
    return list(zip(first, second, map(tuple, shifts)))


def test_pack_box_keeps_density_distance_and_whole_molecules_in_order():
    water, methanol = molecule("H2O"), molecule("CH3OH")
    box = pack_box([(water, 12), (methanol, 4)], 0.95, np.random.default_rng(0), 1.6)
    assert box.pbc.all() and np.allclose(box.cell, np.eye(3) * box.cell[0, 0])
    assert density_g_per_cm3(box) == pytest.approx(0.95, rel=0.01)
    index = box.arrays["molecule_index"]
    assert index.tolist() == np.repeat(np.arange(16), [3] * 12 + [6] * 4).tolist()
    for m in range(16):
        copy = box[index == m]
        template = water if m < 12 else methanol
        assert copy.numbers.tolist() == template.numbers.tolist()
        # whole: the same shape without any periodic image
        assert np.allclose(copy.get_all_distances(), template.get_all_distances(), atol=1e-8)
    # within the cutoff: only bonds inside a molecule, never an image nor another molecule
    for i, j, shift in close_pairs(box, 1.6):
        assert index[i] == index[j] and shift == (0, 0, 0)
    again = pack_box([(water, 12), (methanol, 4)], 0.95, np.random.default_rng(0), 1.6)
    assert np.array_equal(again.positions, box.positions)
    other = pack_box([(water, 12), (methanol, 4)], 0.95, np.random.default_rng(1), 1.6)
    assert not np.allclose(other.positions, box.positions)


def test_pack_box_names_the_density_it_cannot_reach():
    water = molecule("H2O")
    with pytest.raises(ValueError, match=r"density_g_per_cm3=3.0: the molecules' van der Waals volume.*lower the"):
        pack_box([(water, 32)], 3.0, np.random.default_rng(0), 1.0)
    with pytest.raises(ValueError, match=r"density_g_per_cm3=1.0: could not place molecule .*lower the density"):
        pack_box([(water, 32)], 1.0, np.random.default_rng(0), 2.4)
    assert vdw_volume_lower_bound_A3(water) == pytest.approx(18.1, abs=0.2)  # the union is about 19 A^3


def test_scaled_counts_keep_the_ratio_and_one_of_each():
    sizes = {"H2O": 3, "CH3OH": 6}
    assert scaled_counts({"H2O": 24, "CH3OH": 6}, sizes, 64) == {"H2O": 14, "CH3OH": 4}
    big = scaled_counts({"H2O": 24, "CH3OH": 6}, sizes, 2048)
    assert big["H2O"] / big["CH3OH"] == pytest.approx(4.0, rel=0.02)
    assert abs(3 * big["H2O"] + 6 * big["CH3OH"] - 2048) <= 6
    assert scaled_counts({"H2O": 100, "CH3OH": 1}, sizes, 30) == {"H2O": 10, "CH3OH": 1}
    with pytest.raises(ValueError, match="no size"):
        scaled_counts({"H2O": 1, "NH3": 1}, sizes, 30)


def test_replicated_repeats_near_cubic_and_numbers_molecules_per_copy():
    copper = bulk("Cu", "fcc", a=3.6, cubic=True)  # pretend: two Cu2 "molecules"
    copper.arrays["molecule_index"] = np.array([0, 0, 1, 1])
    for size, repeats in [(32, "2 2 2"), (500, "5 5 5"), (1, "1 1 1")]:
        system = replicated(copper, size)
        assert len(system) == 4 * int(np.prod([int(r) for r in repeats.split()]))
        assert system.info["repeats"] == repeats
    system = replicated(copper, 32)
    assert system.arrays["molecule_index"].tolist() == np.repeat(np.arange(16), 2).tolist()
    assert np.allclose(system.positions[4:6] - system.positions[0:2], system.positions[5] - system.positions[1])
    with pytest.raises(ValueError, match="not periodic"):
        replicated(molecule("H2O"), 32)
