"""Periodic timing systems built from seeds: packed boxes of molecules, repeated crystals."""

import numpy as np
import pytest
from ase.build import bulk, fcc111, molecule

from mlff_distill.sampling.boxes import build_timing_systems
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
