"""The teacher's Hessian signal: central-difference Hessian-vector products of real teachers and
their place in the label store (the student's Hessian term: tests/student/test_hessian_loss.py)."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk, molecule

from mlff_distill.labeling.shards import label_structures
from mlff_distill.settings import TeacherSettings, section_settings
from mlff_distill.store import combine_shards, read_labels, store_attrs
from mlff_distill.teachers import load_teacher
from mlff_distill.teachers.hessian import hessian_directions, hessian_vector_products

pytestmark = pytest.mark.usefixtures("single_thread")


def rattled(names: list[str]) -> list:
    structures = []
    for index, name in enumerate(names):
        atoms = molecule(name)
        atoms.rattle(0.03, seed=index)
        atoms.info.update(split=["train", "val"][index % 2], group=index, sample_index=index)
        structures.append(atoms)
    return structures


def emt_teacher_settings() -> TeacherSettings:
    return section_settings(
        TeacherSettings, "teacher", {"kind": "ase", "name": "emt", "factory": "ase.calculators.emt:EMT"}
    )


def test_directions_are_unit_and_follow_the_sample_index() -> None:
    structures = rattled(["CH4", "C6H6"])
    first = hessian_directions(structures)
    assert [d.shape for d in first] == [(5, 3), (12, 3)]
    assert [np.linalg.norm(d) for d in first] == pytest.approx([1.0, 1.0])
    again = hessian_directions(structures[::-1])  # another shard order: the same direction per structure
    np.testing.assert_array_equal(again[1], first[0])
    assert not np.allclose(hessian_directions(structures, seed=1)[0], first[0])


def test_ani1x_hessian_products_are_symmetric_and_converged(ani1x_teacher) -> None:
    """u.(H v) = v.(H u) for the true Hessian, and a smaller step should not change H v much. For
    the float32 ensemble with the 0.01 A step both hold to within 1 % of |H v| (measured: up to
    0.2 % and 0.4 %; against a float64 ensemble with a 1e-4 A step the products differ by 1.4 %)."""
    structures = rattled(["CH4", "C6H6", "CH3CH2OH"])
    u, v = hessian_directions(structures, seed=1), hessian_directions(structures, seed=2)
    hu = hessian_vector_products(ani1x_teacher, structures, u)
    hv = hessian_vector_products(ani1x_teacher, structures, v)
    hv_half = hessian_vector_products(ani1x_teacher, structures, v, step_A=0.005)
    ptr = np.concatenate([[0], np.cumsum([len(a) for a in structures])])
    for i in range(len(structures)):
        block = slice(ptr[i], ptr[i + 1])
        norm = np.linalg.norm(hv[block])
        assert norm > 1.0  # eV/A^2: a real molecule's curvature, not a vanishing signal
        assert abs(np.sum(u[i] * hv[block]) - np.sum(v[i] * hu[block])) < 1e-2 * norm
        assert np.linalg.norm(hv[block] - hv_half[block]) < 1e-2 * norm


def test_label_store_holds_hessian_products_only_when_asked(tmp_path) -> None:
    """EMT (float64) as the teacher: stored products equal a direct evaluation; the Hessian setting
    relabels every shard; shards of both kinds are not combined."""
    copper = bulk("Cu", cubic=True) * (2, 1, 1)
    copper.rattle(0.05, seed=1)
    copper.info.update(split="train", group=9, sample_index=9)
    structures = rattled(["CH4", "H2O", "NH3"]) + [copper]
    teacher = emt_teacher_settings()
    with_hessian = tmp_path / "with"
    label_structures(
        structures,
        teacher,
        with_hessian / "shards",
        with_hessian / "labels.zarr",
        n_workers=0,
        shard_size=2,
        attrs={},
        hessian_step_A=0.01,
    )
    labels = read_labels(with_hessian / "labels.zarr")
    assert labels.has_hessian and "hessian_product_eV_per_A2" in store_attrs(with_hessian / "labels.zarr")["units"]
    directions = hessian_directions(structures)
    np.testing.assert_array_equal(labels.hessian_direction, np.concatenate(directions))
    expected = hessian_vector_products(load_teacher(teacher), structures, directions, 0.01)
    np.testing.assert_allclose(labels.hessian_product_eV_per_A2, expected, rtol=1e-10, atol=1e-10)
    assert np.abs(expected).max() > 0.1
    subset = labels.subset([3, 0])
    np.testing.assert_array_equal(subset.hessian_direction[:8], directions[3])

    summary = label_structures(
        structures, teacher, with_hessian / "shards", with_hessian / "labels.zarr", n_workers=0, shard_size=2, attrs={}
    )
    assert summary["shards_labeled"] == 2 and not read_labels(with_hessian / "labels.zarr").has_hessian

    other = tmp_path / "other"
    label_structures(
        structures[:2],
        teacher,
        other / "shards",
        other / "labels.zarr",
        n_workers=0,
        shard_size=2,
        attrs={},
        hessian_step_A=0.01,
    )
    shards = sorted((with_hessian / "shards").glob("shard-*.zarr")) + sorted((other / "shards").glob("shard-*.zarr"))
    with pytest.raises(ValueError, match="Hessian arrays"):
        combine_shards(shards, tmp_path / "mixed.zarr", {})
    assert not (tmp_path / "mixed.zarr").exists()
