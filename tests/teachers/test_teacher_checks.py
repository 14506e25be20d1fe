"""Every check before labeling fires, naming the structure and the problem."""

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule

from mlff_distill.teachers.base import TeacherIdentity
from mlff_distill.teachers.checks import MIN_DISTANCE_A, check_structures

IDENTITY = TeacherIdentity(
    name="test/hcno",
    kind="test",
    source="-",
    weights_sha256="-",
    cutoff_A=5.0,
    species=(1, 6, 7, 8),
    conservative=True,
    trained=True,
)


def water_box(edge_A: float) -> Atoms:
    atoms = molecule("H2O")
    atoms.center()
    atoms.set_cell([edge_A] * 3)
    atoms.center()
    atoms.pbc = True
    return atoms


def check(
    structures,
    molecule_only=False,
    handles_small_cells=True,
    handles_mixed_pbc=False,
    identity=IDENTITY,
    periodic_only=False,
):
    check_structures(
        structures,
        identity,
        molecule_only=molecule_only,
        handles_small_cells=handles_small_cells,
        handles_mixed_pbc=handles_mixed_pbc,
        periodic_only=periodic_only,
    )


def test_valid_structures_pass():
    check([molecule("CH3OH"), water_box(12.0)], handles_small_cells=False)
    check([water_box(3.0)], handles_small_cells=True)


def test_uncovered_species_named_with_what_the_teacher_knows():
    with pytest.raises(
        ValueError,
        match=r"structure 1 \(.*Cl.*\): holds S, Cl, which test/hcno "
        r"does not cover \(it knows H, C, N, O\)",
    ):
        check([molecule("H2O"), Atoms("SCl2", positions=[[0, 0, 0], [2, 0, 0], [-2, 0, 0]])])


def test_undeclared_species_skip_the_species_check():
    check([Atoms("Cu")], identity=TeacherIdentity("x", "ase", "-", "-", 0.0, (), True, True))


@pytest.mark.parametrize("where", ["positions", "cell"])
def test_non_finite_positions_or_cell(where):
    atoms = water_box(10.0)
    if where == "positions":
        atoms.positions[2, 1] = np.nan
        expected = r"structure 0 \(H2O\): non-finite positions for atom\(s\) \[2\]"
    else:
        atoms.cell[1, 1] = np.inf
        expected = r"structure 0 \(H2O\): non-finite cell"
    with pytest.raises(ValueError, match=expected):
        check([atoms])


def test_overlapping_atoms_named_by_pair_and_distance():
    atoms = molecule("CH4")
    atoms.positions[3] = atoms.positions[0] + [0.3, 0.0, 0.0]
    with pytest.raises(
        ValueError,
        match=rf"structure 0 \(CH4\): atoms 0 and 3 are 0.300 A apart "
        rf"\(closer than {MIN_DISTANCE_A} A\)",
    ):
        check([atoms])


def test_overlap_across_the_periodic_boundary():
    atoms = Atoms("H2", positions=[[0.1, 1, 1], [4.8, 1, 1]], cell=[5.0] * 3, pbc=True)
    with pytest.raises(ValueError, match=r"atoms 0 and 1 are 0.300 A apart"):
        check([atoms])


def test_periodic_cell_given_to_a_molecule_only_teacher():
    with pytest.raises(ValueError, match=r"structure 1 \(H2O\): periodic .* molecules only"):
        check([molecule("H2O"), water_box(12.0)], molecule_only=True)


def test_molecule_or_slab_given_to_a_periodic_only_teacher():
    slab = water_box(12.0)
    slab.pbc = [True, True, False]
    for other in (molecule("H2O"), slab):
        with pytest.raises(
            ValueError,
            match=r"structure 1 \(H2O\): not periodic in all three directions \(pbc=\[.*\]\) but the "
            r"teacher needs a periodic cell",
        ):
            check([water_box(12.0), other], periodic_only=True, handles_mixed_pbc=True)
    check([water_box(12.0)], periodic_only=True)


def test_mixed_periodicity_unless_the_teacher_handles_it():
    slab = water_box(12.0)
    slab.pbc = [True, True, False]
    with pytest.raises(ValueError, match=r"mixed periodicity pbc=\[True, True, False\]"):
        check([slab])
    check([slab], handles_mixed_pbc=True)


def test_degenerate_periodic_cell():
    atoms = water_box(10.0)
    atoms.cell[2] = atoms.cell[0]
    with pytest.raises(ValueError, match=r"degenerate cell vectors"):
        check([atoms])


def test_cell_too_small_for_the_cutoff_unless_the_teacher_handles_it():
    atoms = bulk("C", "diamond", a=3.57, cubic=True)
    with pytest.raises(
        ValueError,
        match=r"structure 0 \(C8\): cell height 3.570 A along cell "
        r"vector 0 is less than twice the cutoff \(2 x 5.0 A\)",
    ):
        check([atoms], handles_small_cells=False)
    check([atoms], handles_small_cells=True)
    check([atoms.repeat(3)], handles_small_cells=False)


def test_small_cell_check_uses_heights_not_lengths():
    # Vectors over 11 A long, so skewed that opposite faces are 7.37 A apart (84 A^2 / 11.40 A).
    atoms = Atoms("H", cell=[[12, 0, 0], [9, 7, 0], [0, 0, 12]], pbc=True)
    with pytest.raises(ValueError, match=r"cell height 7.367 A along cell vector 0"):
        check([atoms], handles_small_cells=False)
