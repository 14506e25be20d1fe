"""Closest contacts by pair of elements (`mlff_distill.contacts`)."""

import pytest
from ase import Atoms

from mlff_distill.contacts import closest_contacts_A, describe_contacts


def h2(distance_A: float) -> Atoms:
    return Atoms("H2", positions=[[0.0, 0.0, 0.0], [distance_A, 0.0, 0.0]])


def test_nth_closest_contact_ignores_a_few_outlying_structures() -> None:
    structures = [h2(0.8), h2(0.9)] + [h2(1.0 + 0.001 * k) for k in range(498)]
    assert closest_contacts_A(structures, 4.0) == {(1, 1): pytest.approx(0.8)}
    assert closest_contacts_A(structures, 4.0, nth=2) == {(1, 1): pytest.approx(0.9)}
    assert closest_contacts_A(structures, 4.0, nth=3) == {(1, 1): pytest.approx(1.0)}
    # 500 structures: at most 1 % of them below it (the 5th closest)
    assert closest_contacts_A(structures, 4.0, nth=50) == {(1, 1): pytest.approx(1.002)}
    assert closest_contacts_A(structures[:99], 4.0, nth=3) == {(1, 1): pytest.approx(0.8)}  # too few: the closest
    assert closest_contacts_A([h2(5.0)], 4.0) == {}
    with pytest.raises(ValueError, match="nth"):
        closest_contacts_A(structures, 4.0, nth=0)


def test_nth_closest_contact_of_many_structures_keeps_the_right_one() -> None:
    distances = [1.0 + 0.001 * ((7 * k) % 1000) for k in range(1000)]  # a permutation of 1.000 .. 1.999
    assert closest_contacts_A(map(h2, distances), 4.0, nth=10) == {(1, 1): pytest.approx(1.009)}


def test_describe_contacts() -> None:
    assert describe_contacts({(8, 8): 2.394, (1, 1): 1.291}) == "H-H 1.29, O-O 2.39"
