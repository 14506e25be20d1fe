"""Labeling in shards with the real ANI-1x teacher on a 2-worker Dask cluster, and resuming.

``ani1x_teacher_config`` and ``ani1x_teacher`` come from conftest.py (skipped without the files).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ase.build import molecule

from mlff_distill.label import label_structures, plan_shards
from mlff_distill.store import marker_path, read_labels, store_attrs

MOLECULES = ["CH4", "H2O", "NH3", "C2H6", "C2H4", "HCN", "CH3OH", "H2CO", "CH3CN", "HCOOH",
             "N2H4", "H3CNH2"]


def rattled_molecules() -> list:
    """12 small H/C/N/O molecules, rattled, with the info keys labeling needs."""
    structures = []
    for index, name in enumerate(MOLECULES):
        atoms = molecule(name)
        atoms.rattle(0.05, seed=index)
        atoms.info.update(split=["train", "val", "test"][index % 3], group=index // 4, sample_index=index)
        structures.append(atoms)
    return structures


@pytest.fixture(scope="module")
def labeled(ani1x_teacher_config, tmp_path_factory):
    """A first labeling run: 12 molecules, shards of 4, 2 workers."""
    root = tmp_path_factory.mktemp("label")
    reports = []
    summary = label_structures(
        rattled_molecules(), ani1x_teacher_config, root / "shards", root / "labels.zarr",
        n_workers=2, shard_size=4, attrs={"teacher": "fennol-pmc/ani1x"}, progress=reports.append,
    )
    return root, summary, reports


def relabel(root: Path, teacher_config: dict) -> dict:
    return label_structures(rattled_molecules(), teacher_config, root / "shards", root / "labels.zarr",
                            n_workers=2, shard_size=4, attrs={"teacher": "fennol-pmc/ani1x"})


def test_plan_shards():
    assert plan_shards(10, 4) == [range(0, 4), range(4, 8), range(8, 10)]
    assert plan_shards(0, 4) == []


def test_missing_info_key_names_the_structure(tmp_path):
    structures = rattled_molecules()
    del structures[5].info["group"]
    with pytest.raises(ValueError, match=r"structure 5 has no info\['group'\]"):
        label_structures(structures, {}, tmp_path / "shards", tmp_path / "labels.zarr",
                         n_workers=2, shard_size=4, attrs={})
    assert not (tmp_path / "shards").exists()


def test_store_holds_teacher_labels_in_input_order(labeled, ani1x_teacher):
    root, summary, reports = labeled
    assert (summary["shards_labeled"], summary["shards_reused"], summary["n_structures"]) == (3, 0, 12)
    assert [r["structures_done"] for r in reports] == [4, 8, 12]
    assert reports[-1]["eta_seconds"] == 0 and all(r["structures_per_second"] > 0 for r in reports)

    structures = rattled_molecules()
    direct = ani1x_teacher.compute(structures)
    labels = read_labels(root / "labels.zarr")
    np.testing.assert_array_equal(labels.numbers, np.concatenate([a.numbers for a in structures]))
    np.testing.assert_array_equal(labels.positions_A, np.concatenate([a.positions for a in structures]))
    np.testing.assert_allclose(labels.energy_eV, direct.energy_eV, rtol=1e-6)
    np.testing.assert_allclose(labels.forces_eV_per_A, direct.forces_eV_per_A, rtol=1e-4, atol=1e-4)
    assert store_attrs(root / "labels.zarr")["teacher"] == "fennol-pmc/ani1x"
    assert read_labels(root / "labels.zarr", "val").n_structures == 4


def test_rerun_reuses_every_shard(labeled, ani1x_teacher_config):
    root, _, _ = labeled
    before = read_labels(root / "labels.zarr").energy_eV
    summary = relabel(root, ani1x_teacher_config)
    assert (summary["shards_labeled"], summary["shards_reused"]) == (0, 3)
    np.testing.assert_array_equal(read_labels(root / "labels.zarr").energy_eV, before)


def test_missing_marker_relabels_only_that_shard(labeled, ani1x_teacher_config):
    root, _, _ = labeled
    before = read_labels(root / "labels.zarr").energy_eV
    shard = root / "shards" / "shard-00000004-00000008.zarr"
    marker_path(shard).unlink()
    summary = relabel(root, ani1x_teacher_config)
    assert (summary["shards_labeled"], summary["shards_reused"]) == (1, 2)
    assert [s["shard"] for s in summary["shards"]] == [shard.name]
    np.testing.assert_allclose(read_labels(root / "labels.zarr").energy_eV, before, rtol=1e-6)


def test_changed_teacher_config_relabels_every_shard_in_process(labeled, ani1x_teacher_config):
    root, _, _ = labeled
    before = read_labels(root / "labels.zarr").energy_eV
    changed = {**ani1x_teacher_config, "batch_size": 8}
    summary = label_structures(rattled_molecules(), changed, root / "shards", root / "labels.zarr",
                               n_workers=0, shard_size=4, attrs={})
    assert (summary["shards_labeled"], summary["shards_reused"]) == (3, 0)
    np.testing.assert_allclose(read_labels(root / "labels.zarr").energy_eV, before, rtol=1e-6)
