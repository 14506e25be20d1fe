"""The label store: shards written atomically with checksummed markers, combined into one store."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import zarr
from ase.build import bulk, molecule

from mlff_distill.data import LabeledArrays, concatenate_structures
from mlff_distill.store import (
    ARRAYS,
    EXCLUDED_CODE,
    SPLIT_CODES,
    combine_shards,
    marker_path,
    max_atom_force_eV_per_A,
    read_index_columns,
    read_labels,
    read_marker,
    read_samples,
    read_shard,
    shard_is_complete,
    store_attrs,
    write_shard,
)


def shard_arrays(structures, splits, first_index, seed):
    """Store arrays for ``structures`` with made-up labels (eV, eV/Angstrom)."""
    rng = np.random.default_rng(seed)
    arrays = concatenate_structures(structures)
    n, m = len(structures), len(arrays["numbers"])
    arrays.update(
        forces_eV_per_A=rng.normal(size=(m, 3)),
        energy_eV=rng.normal(-1000.0, 10.0, size=n),
        energy_std_eV=rng.uniform(0.0, 0.1, size=n),
        stress_eV_per_A3=np.where(
            np.array([a.pbc.all() for a in structures])[:, None, None], rng.normal(size=(n, 3, 3)), np.nan
        ),
        split=np.array([SPLIT_CODES[s] for s in splits], dtype=np.int8),
        group=np.arange(n, dtype=np.int64) // 2 + first_index,
        sample_index=np.arange(first_index, first_index + n, dtype=np.int64),
    )
    return arrays


@pytest.fixture
def two_shards(tmp_path):
    """Two shards: three molecules, then a periodic silicon cell and a molecule."""
    first = [molecule("CH4"), molecule("H2O"), molecule("NH3")]
    silicon = bulk("Si", cubic=True)
    silicon.rattle(0.01, seed=0)
    second = [silicon, molecule("HCN")]
    arrays = [
        shard_arrays(first, ["train", "val", "train"], 0, seed=1),
        shard_arrays(second, ["test", "val"], 3, seed=2),
    ]
    paths = [tmp_path / "shards" / "a.zarr", tmp_path / "shards" / "b.zarr"]
    paths[0].parent.mkdir()
    for path, values in zip(paths, arrays):
        write_shard(path, values)
    return paths, arrays, first + second


def test_round_trip_through_shards_and_store(two_shards, tmp_path):
    paths, arrays, structures = two_shards
    store = tmp_path / "labels.zarr"
    combine_shards(paths, store, {"teacher": {"name": "fennol-pmc/ani1x"}, "config_sha256": "abc"})

    labels = read_labels(store)
    flat = concatenate_structures(structures)
    assert labels.n_structures == 5
    np.testing.assert_array_equal(labels.atoms_ptr, [0, 5, 8, 12, 20, 23])
    np.testing.assert_array_equal(labels.numbers, flat["numbers"])
    np.testing.assert_array_equal(labels.positions_A, flat["positions_A"])
    np.testing.assert_array_equal(labels.cell_A, flat["cell_A"])
    np.testing.assert_array_equal(labels.pbc, flat["pbc"])
    assert labels.pbc[3].all() and labels.cell_A[3, 0, 0] == pytest.approx(5.43)
    for name in ("forces_eV_per_A", "energy_eV"):
        np.testing.assert_array_equal(getattr(labels, name), np.concatenate([a[name] for a in arrays]))

    group = zarr.open_group(store=str(store), mode="r")
    for name, spec in ARRAYS.items():
        assert group[spec.path].dtype == spec.dtype
    np.testing.assert_array_equal(group["structures/sample_index"][:], np.arange(5))
    np.testing.assert_array_equal(group["structures/split"][:], [0, 1, 0, 2, 1])
    np.testing.assert_array_equal(
        group["structures/energy_std_eV"][:], np.concatenate([a["energy_std_eV"] for a in arrays])
    )

    attrs = store_attrs(store)
    assert attrs["teacher"] == {"name": "fennol-pmc/ani1x"} and attrs["config_sha256"] == "abc"
    assert (attrs["n_structures"], attrs["n_atoms"]) == (5, 23)
    assert attrs["split_codes"] == {**SPLIT_CODES, "excluded": EXCLUDED_CODE}
    assert set(attrs["units"]) == set(ARRAYS)
    assert attrs["units"]["forces_eV_per_A"] == "eV/Angstrom" and attrs["units"]["energy_eV"] == "eV"


def test_read_one_split(two_shards, tmp_path):
    paths, _, _ = two_shards
    store = tmp_path / "labels.zarr"
    combine_shards(paths, store, {})
    full = read_labels(store)
    for split, indices in {"train": [0, 2], "val": [1, 4], "test": [3]}.items():
        part, expected = read_labels(store, split), full.subset(indices)
        for name in LabeledArrays.__dataclass_fields__:
            np.testing.assert_array_equal(getattr(part, name), getattr(expected, name))
    with pytest.raises(ValueError, match="validation"):
        read_labels(store, "validation")


def test_read_samples_keeps_the_split_s_structures_of_those_samples_in_store_order(two_shards, tmp_path):
    paths, _, _ = two_shards
    store = tmp_path / "labels.zarr"
    combine_shards(paths, store, {})
    full = read_labels(store)
    part = read_samples(store, "train", [2, 1, 0, 9])  # sample 1 is in val, 9 in no structure
    for name in LabeledArrays.__dataclass_fields__:
        np.testing.assert_array_equal(getattr(part, name), getattr(full.subset([0, 2]), name))
    assert read_samples(store, "test", [0, 1]).n_structures == 0


def test_index_columns_of_a_shard_and_of_the_store(two_shards, tmp_path):
    paths, arrays, _ = two_shards
    combine_shards(paths, tmp_path / "labels.zarr", {})
    columns = read_index_columns(paths[1])
    assert {name: values.tolist() for name, values in columns.items()} == {
        "sample_index": [3, 4],
        "group": [3, 3],
        "split": [SPLIT_CODES["test"], SPLIT_CODES["val"]],
    }
    store = read_index_columns(tmp_path / "labels.zarr")
    assert store["sample_index"].tolist() == list(range(5)) and store["group"].tolist() == [0, 0, 1, 3, 3]
    assert store["split"].tolist() == [0, 1, 0, 2, 1]


def test_complete_shard_reads_back(two_shards):
    paths, arrays, _ = two_shards
    assert shard_is_complete(paths[0])
    marker = json.loads(marker_path(paths[0]).read_text())
    assert (marker["n_structures"], marker["n_atoms"]) == (3, 12)
    back = read_shard(paths[0])
    for name, values in arrays[0].items():
        np.testing.assert_array_equal(back[name], values)


def test_shard_with_a_changed_value_is_incomplete(two_shards):
    path = two_shards[0][0]
    energy = zarr.open_array(store=str(path / "structures" / "energy_eV"), mode="r+")
    energy[1] = energy[1] + 1e-9
    assert not shard_is_complete(path)


def test_shard_with_an_overwritten_chunk_file_is_incomplete(two_shards):
    path = two_shards[0][0]
    chunk = path / "atoms" / "forces_eV_per_A" / "c" / "0" / "0"
    chunk.write_bytes(b"\0" * len(chunk.read_bytes()))
    assert not shard_is_complete(path)


def test_shard_without_marker_or_data_is_incomplete(two_shards, tmp_path):
    first, second = two_shards[0]
    marker_path(first).unlink()
    assert first.is_dir() and not shard_is_complete(first)
    shutil.rmtree(second / "atoms" / "forces_eV_per_A" / "c")  # chunks lost, metadata kept
    assert not shard_is_complete(second)
    assert not shard_is_complete(tmp_path / "never-written.zarr")


def test_rewriting_a_shard_replaces_stale_data(two_shards):
    path = two_shards[0][0]
    (path / "stray-file").write_text("left by a killed run")
    replacement = shard_arrays([molecule("CO2")], ["test"], 7, seed=3)
    write_shard(path, replacement)
    assert shard_is_complete(path) and not (path / "stray-file").exists()
    np.testing.assert_array_equal(read_shard(path)["sample_index"], [7])


def test_write_shard_rejects_inconsistent_offsets(tmp_path):
    arrays = shard_arrays([molecule("CH4")], ["train"], 0, seed=0)
    arrays["atoms_ptr"] = np.array([0, 4])
    with pytest.raises(ValueError, match="atoms_ptr"):
        write_shard(tmp_path / "bad.zarr", arrays)
    assert not (tmp_path / "bad.zarr").exists()


def test_combine_replaces_an_existing_store_whole(two_shards, tmp_path):
    paths, _, _ = two_shards
    store = tmp_path / "labels.zarr"
    combine_shards(paths, store, {"run": 1})
    (store / "stray-file").write_text("from an older layout")
    combine_shards(paths[1:], store, {"run": 2})
    assert not (store / "stray-file").exists()
    assert read_labels(store).n_structures == 2 and store_attrs(store)["run"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.zarr", "shards"]


def test_combine_refuses_a_corrupt_shard_and_keeps_the_old_store(two_shards, tmp_path):
    paths, _, _ = two_shards
    store = tmp_path / "labels.zarr"
    combine_shards(paths, store, {"run": 1})
    energy = zarr.open_array(store=str(paths[1] / "structures" / "energy_eV"), mode="r+")
    energy[0] = 0.0
    with pytest.raises(ValueError, match="does not match its marker"):
        combine_shards(paths, store, {"run": 2})
    assert store_attrs(store)["run"] == 1 and read_labels(store).n_structures == 5


def test_marker_extra_and_an_empty_shard_combine(tmp_path):
    """A shard may hold no structures (all failed) and carry extra marker entries."""
    full = tmp_path / "full.zarr"
    empty = tmp_path / "empty.zarr"
    write_shard(
        full,
        shard_arrays([molecule("CH4")], ["train"], 0, seed=0),
        extra={"failures": [{"sample_index": 1, "error": None, "reason": "non-finite"}]},
    )
    write_shard(empty, shard_arrays([], [], 2, seed=0), extra={"failures": []})
    assert read_marker(full)["failures"][0]["sample_index"] == 1
    assert read_marker(full)["n_structures"] == 1 and shard_is_complete(full)
    assert read_marker(empty)["n_structures"] == 0 and shard_is_complete(empty)
    combine_shards([empty, full, empty], tmp_path / "labels.zarr", {})
    labels = read_labels(tmp_path / "labels.zarr")
    assert labels.n_structures == 1 and labels.atoms_ptr.tolist() == [0, 5]
    with pytest.raises(ValueError, match="may not set the marker's own keys"):
        write_shard(full, shard_arrays([molecule("CH4")], ["train"], 0, seed=0), extra={"sha256": "x"})


def test_structures_over_the_force_limit_are_stored_but_excluded(two_shards, tmp_path):
    paths, arrays, structures = two_shards
    forces = np.concatenate([a["forces_eV_per_A"] for a in arrays])
    ptr = np.concatenate([[0], np.cumsum([len(a) for a in structures])])
    largest = max_atom_force_eV_per_A(forces, ptr)
    assert largest[0] == pytest.approx(np.linalg.norm(forces[:5], axis=1).max())
    limit = float(np.sort(largest)[-2])  # the two strongest structures reach it
    store = tmp_path / "labels.zarr"
    excluded = combine_shards(paths, store, {}, max_force_eV_per_A=limit)
    assert sorted(excluded) == sorted(np.argsort(largest)[-2:].tolist())
    assert read_labels(store).n_structures == 5  # labels kept
    kept = sum(read_labels(store, split).n_structures for split in SPLIT_CODES)
    assert kept == 3
    assert store_attrs(store)["max_force_eV_per_A"] == limit
    assert store_attrs(store)["split_codes"]["excluded"] == EXCLUDED_CODE
    assert read_shard(paths[0])["split"].tolist() == [0, 1, 0]  # shards keep their splits
    assert (
        combine_shards(paths, store, {}) == []
        and sum(read_labels(store, split).n_structures for split in SPLIT_CODES) == 5
    )


def test_max_atom_force_of_a_structure_without_atoms_is_zero():
    forces = np.array([[3.0, 4.0, 0.0], [0.0, 0.0, 1.0]])
    np.testing.assert_allclose(max_atom_force_eV_per_A(forces, np.array([0, 0, 2, 2])), [0.0, 5.0, 0.0])
