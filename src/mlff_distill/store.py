"""The label store: teacher labels of sampled structures in a Zarr (format 3) directory.

Layout of a store (and of each shard, which is a small store of the same layout)::

    atoms/numbers            [M]       int16    atomic numbers
    atoms/positions_A        [M, 3]    float64  Angstrom
    atoms/forces_eV_per_A    [M, 3]    float64  eV/Angstrom
    structures/atoms_ptr     [N + 1]   int64    offsets: atoms of structure i are atoms_ptr[i]:atoms_ptr[i+1]
    structures/energy_eV     [N]       float64  eV
    structures/energy_std_eV [N]       float64  eV, spread over the teacher's ensemble members
    structures/stress_eV_per_A3 [N, 3, 3] float64 eV/Angstrom^3, ASE's sign; NaN for molecules
    structures/cell_A        [N, 3, 3] float64  Angstrom (zeros for molecules)
    structures/pbc           [N, 3]    bool
    structures/split         [N]       int8     `SPLIT_CODES`, or `EXCLUDED_CODE` (labeled, used nowhere)
    structures/group         [N]       int64    trajectory/seed group a structure came from
    structures/sample_index  [N]       int64    index in the sampled structures file

and, when the label stage was asked for the teacher's Hessian signal (``label.hessian_step_A``),
one Hessian-vector product per structure (`mlff_distill.teachers.hessian`)::

    atoms/hessian_direction          [M, 3] float64  unit norm over each structure's 3n coordinates
    atoms/hessian_product_eV_per_A2  [M, 3] float64  eV/Angstrom^2, the teacher's Hessian times it

Zarr has no ragged arrays, so per-atom arrays are flat with per-structure offsets. Several processes
writing one Zarr array lose data, so each labeling task writes its own shard (`write_shard`) and one
writer concatenates the shards (`combine_shards`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import zarr

from mlff_distill.data import LabeledArrays

SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
# Split code of structures whose teacher forces exceed the label stage's limit: kept, never read as a split.
EXCLUDED_CODE = 3
# Written beside the label store: the structures left out because the teacher failed on them.
FAILURES_FILE = "failures.json"


class ArraySpec(NamedTuple):
    """Where an array lives in the store, its dtype, trailing shape and unit."""

    path: str  # inside the store
    dtype: type
    tail: tuple[int, ...]  # shape after the first (atoms or structures) axis
    unit: str


# Per-atom arrays first; every shard and store holds exactly these.
ARRAYS = {
    "numbers": ArraySpec("atoms/numbers", np.int16, (), "atomic number"),
    "positions_A": ArraySpec("atoms/positions_A", np.float64, (3,), "Angstrom"),
    "forces_eV_per_A": ArraySpec("atoms/forces_eV_per_A", np.float64, (3,), "eV/Angstrom"),
    "atoms_ptr": ArraySpec("structures/atoms_ptr", np.int64, (), "atom index"),
    "energy_eV": ArraySpec("structures/energy_eV", np.float64, (), "eV"),
    "energy_std_eV": ArraySpec("structures/energy_std_eV", np.float64, (), "eV"),
    "stress_eV_per_A3": ArraySpec(
        "structures/stress_eV_per_A3", np.float64, (3, 3), "eV/Angstrom^3, ASE sign convention, NaN for molecules"
    ),
    "cell_A": ArraySpec("structures/cell_A", np.float64, (3, 3), "Angstrom"),
    "pbc": ArraySpec("structures/pbc", np.bool_, (3,), "bool"),
    "split": ArraySpec("structures/split", np.int8, (), "code, see split_codes"),
    "group": ArraySpec("structures/group", np.int64, (), "group id"),
    "sample_index": ArraySpec("structures/sample_index", np.int64, (), "index in the sampled file"),
}
# Present in a shard or store only together, and only when asked for.
HESSIAN_ARRAYS = {
    "hessian_direction": ArraySpec(
        "atoms/hessian_direction", np.float64, (3,), "dimensionless, unit norm over each structure's coordinates"
    ),
    "hessian_product_eV_per_A2": ArraySpec(
        "atoms/hessian_product_eV_per_A2", np.float64, (3,), "eV/Angstrom^2, teacher Hessian times hessian_direction"
    ),
}
ALL_ARRAYS = {**ARRAYS, **HESSIAN_ARRAYS}
PER_ATOM = ("numbers", "positions_A", "forces_eV_per_A", *HESSIAN_ARRAYS)
CHUNK_ROWS = 65536


def marker_path(shard_path: Path) -> Path:
    """The marker file of a shard: ``<shard_path>.done.json``."""
    shard_path = Path(shard_path)
    return shard_path.with_name(shard_path.name + ".done.json")


MARKER_KEYS = ("n_structures", "n_atoms", "sha256")


def write_shard(shard_path: Path, arrays: dict[str, np.ndarray], extra: dict | None = None) -> None:
    """Write one shard (arrays named as in `ARRAYS`, optionally with both `HESSIAN_ARRAYS`;
    ``atoms_ptr`` starting at 0) atomically.

    Data goes to a temporary sibling directory renamed into place; then the marker
    ``<shard_path>.done.json`` records the structure count, atom count and SHA-256 of the arrays,
    plus ``extra`` (JSON-serializable, e.g. the structures that failed to label; see `read_marker`).
    A shard may hold zero structures. Stale data and marker at ``shard_path`` are removed first.
    """
    shard_path = Path(shard_path)
    extra = dict(extra or {})
    if set(extra) & set(MARKER_KEYS):
        raise ValueError(f"extra may not set the marker's own keys {sorted(set(extra) & set(MARKER_KEYS))}")
    arrays = _checked(arrays)
    marker = marker_path(shard_path)
    marker.unlink(missing_ok=True)
    shutil.rmtree(shard_path, ignore_errors=True)
    partial = shard_path.with_name(f".{shard_path.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    group = zarr.open_group(store=str(partial), mode="w", zarr_format=3)
    for name, values in arrays.items():
        group.create_array(ALL_ARRAYS[name].path, data=values, chunks=(max(1, len(values)),) + ALL_ARRAYS[name].tail)
    os.rename(partial, shard_path)
    write_json_atomic(
        marker,
        {
            "n_structures": len(arrays["energy_eV"]),
            "n_atoms": len(arrays["numbers"]),
            "sha256": _checksum(arrays),
            **extra,
        },
    )


def read_marker(shard_path: Path) -> dict:
    """The marker of a shard: its counts, checksum and the ``extra`` given to `write_shard`."""
    return json.loads(marker_path(Path(shard_path)).read_text())


def read_shard(shard_path: Path) -> dict[str, np.ndarray]:
    """The arrays of a complete shard; raises if the marker is missing or does not match the data."""
    shard_path = Path(shard_path)
    marker = json.loads(marker_path(shard_path).read_text())
    group = zarr.open_group(store=str(shard_path), mode="r", zarr_format=3)
    arrays = {name: group[spec.path][...] for name, spec in _present(group).items()}
    found = {"n_structures": len(arrays["energy_eV"]), "n_atoms": len(arrays["numbers"]), "sha256": _checksum(arrays)}
    if found != {key: marker.get(key) for key in MARKER_KEYS}:
        raise ValueError(
            f"shard {shard_path} does not match its marker: {found} != "
            f"{ {key: marker.get(key) for key in MARKER_KEYS} }"
        )
    return arrays


def shard_is_complete(shard_path: Path) -> bool:
    """True only if the shard's marker and data exist and the data's checksum matches the marker."""
    try:
        read_shard(shard_path)
    except Exception:  # missing, partial or corrupt files fail in many ways; all mean "relabel"
        return False
    return True


def combine_shards(
    shard_paths: list[Path], store_path: Path, attrs: dict, max_force_eV_per_A: float | None = None
) -> list[int]:
    """Concatenate complete shards, in order, into the store at ``store_path``, replacing it whole.

    The store is built in a temporary sibling directory and renamed into place, so ``store_path``
    never holds a half-written store. ``attrs`` (JSON-serializable: teacher identity, config hash,
    versions) go into the root attributes beside ``units``, ``split_codes``, ``n_structures``,
    ``n_atoms`` and ``max_force_eV_per_A``. One shard is held in memory at a time.

    Structures with a teacher force on some atom of ``max_force_eV_per_A`` (eV/Angstrom) or more
    are stored with the split code `EXCLUDED_CODE`; the shards keep their splits, so another
    limit needs no relabeling. Returns those structures' ``sample_index`` values.
    """
    reserved = {"units", "split_codes", "n_structures", "n_atoms", "max_force_eV_per_A"} & set(attrs)
    if reserved:
        raise ValueError(f"attrs may not set the store's own keys {sorted(reserved)}")
    store_path = Path(store_path)
    markers = [json.loads(marker_path(p).read_text()) for p in shard_paths]
    specs = _common_arrays(shard_paths)
    n_structures = sum(m["n_structures"] for m in markers)
    n_atoms = sum(m["n_atoms"] for m in markers)

    partial = store_path.with_name(f".{store_path.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    group = zarr.open_group(store=str(partial), mode="w", zarr_format=3)
    targets = {}
    for name, spec in specs.items():
        rows = _rows(name, n_structures, n_atoms)
        targets[name] = group.create_array(
            spec.path,
            shape=(rows,) + spec.tail,
            dtype=spec.dtype,
            chunks=(min(max(rows, 1), CHUNK_ROWS),) + spec.tail,
        )
    targets["atoms_ptr"][0] = 0
    structure_offset = atom_offset = 0
    excluded: list[int] = []
    for shard_path in shard_paths:
        arrays = read_shard(shard_path)
        n, m = len(arrays["energy_eV"]), len(arrays["numbers"])
        if max_force_eV_per_A is not None and n:
            too_strong = max_atom_force_eV_per_A(arrays["forces_eV_per_A"], arrays["atoms_ptr"]) >= max_force_eV_per_A
            arrays["split"] = np.where(too_strong, EXCLUDED_CODE, arrays["split"]).astype(np.int8)
            excluded += arrays["sample_index"][too_strong].tolist()
        for name, values in arrays.items():
            if name == "atoms_ptr":
                targets[name][structure_offset + 1 : structure_offset + n + 1] = values[1:] + atom_offset
            elif name in PER_ATOM:
                targets[name][atom_offset : atom_offset + m] = values
            else:
                targets[name][structure_offset : structure_offset + n] = values
        structure_offset, atom_offset = structure_offset + n, atom_offset + m
    group.attrs.update(
        {
            **attrs,
            "units": {name: spec.unit for name, spec in specs.items()},
            "split_codes": {**SPLIT_CODES, "excluded": EXCLUDED_CODE},
            "n_structures": n_structures,
            "n_atoms": n_atoms,
            "max_force_eV_per_A": max_force_eV_per_A,
        }
    )

    old = store_path.with_name(f".{store_path.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if store_path.exists():
        os.rename(store_path, old)
    os.rename(partial, store_path)
    shutil.rmtree(old, ignore_errors=True)
    return excluded


def _present(group) -> dict[str, ArraySpec]:
    """The arrays of `ALL_ARRAYS` that the Zarr ``group`` holds (all of `ARRAYS`, and the
    Hessian arrays if it has them)."""
    return {name: spec for name, spec in ALL_ARRAYS.items() if name in ARRAYS or spec.path in group}


def _common_arrays(shard_paths: list[Path]) -> dict[str, ArraySpec]:
    """The arrays every shard holds; raises naming a shard that holds the Hessian arrays when the
    first does not, or the other way round (shards labeled with different settings)."""
    kinds = [_present(zarr.open_group(store=str(p), mode="r", zarr_format=3)) for p in shard_paths]
    for path, kind in zip(shard_paths, kinds):
        if kinds and set(kind) != set(kinds[0]):
            raise ValueError(
                f"shard {path} {'has' if len(kind) > len(kinds[0]) else 'lacks'} the Hessian "
                f"arrays and shard {shard_paths[0]} does not: shards labeled with different settings"
            )
    return kinds[0] if kinds else dict(ARRAYS)


def max_atom_force_eV_per_A(forces_eV_per_A: np.ndarray, atoms_ptr: np.ndarray) -> np.ndarray:
    """The largest force magnitude on any atom of each structure ``[N]`` (eV/Angstrom; 0 for none)."""
    norms = np.linalg.norm(forces_eV_per_A, axis=1)
    counts = np.diff(atoms_ptr)
    result = np.zeros(len(counts))
    nonempty = counts > 0
    result[nonempty] = np.maximum.reduceat(norms, atoms_ptr[:-1][nonempty]) if len(norms) else 0.0
    return result


def read_labels(store_path: Path, split: str | None = None) -> LabeledArrays:
    """The structures of the store (all, or those of ``split``: train/val/test), in store order."""
    group = zarr.open_group(store=str(store_path), mode="r", zarr_format=3)
    return read_structures(store_path, 0, group["structures/energy_eV"].shape[0], split)


def read_structures(store_path: Path, start: int, stop: int, split: str | None = None) -> LabeledArrays:
    """Structures ``start:stop`` of the store (those of ``split`` among them, if given).

    Reads only the slices of the per-atom arrays that hold these structures' atoms, so a block
    of structures loads without the rest of the store.
    """
    group = zarr.open_group(store=str(store_path), mode="r", zarr_format=3)
    ptr = group["structures/atoms_ptr"][start : stop + 1]
    keep = np.ones(len(ptr) - 1, dtype=bool)
    if split is not None:
        if split not in SPLIT_CODES:
            raise ValueError(f"split {split!r} is not one of {sorted(SPLIT_CODES)}")
        keep = group["structures/split"][start:stop] == SPLIT_CODES[split]
    keep_atoms = np.repeat(keep, np.diff(ptr))
    atoms = slice(int(ptr[0]), int(ptr[-1]))
    n_atoms = np.diff(ptr)[keep]
    hessian = {
        name: group[spec.path][atoms][keep_atoms] for name, spec in _present(group).items() if name in HESSIAN_ARRAYS
    }
    return LabeledArrays(
        numbers=group["atoms/numbers"][atoms][keep_atoms].astype(np.int64),
        positions_A=group["atoms/positions_A"][atoms][keep_atoms],
        forces_eV_per_A=group["atoms/forces_eV_per_A"][atoms][keep_atoms],
        energy_eV=group["structures/energy_eV"][start:stop][keep],
        stress_eV_per_A3=group["structures/stress_eV_per_A3"][start:stop][keep],
        atoms_ptr=np.concatenate([[0], np.cumsum(n_atoms)]).astype(np.int64),
        cell_A=group["structures/cell_A"][start:stop][keep],
        pbc=group["structures/pbc"][start:stop][keep],
        sample_index=group["structures/sample_index"][start:stop][keep],
        **hessian,
    )


def read_samples(store_path: Path, split: str, sample_indices: Sequence[int]) -> LabeledArrays:
    """The structures of ``split`` whose ``sample_index`` is among ``sample_indices``, in store
    order; reads only the span of the store from the first to the last of them."""
    index = read_index_columns(store_path)
    wanted = np.isin(index["sample_index"], np.asarray(sample_indices, dtype=np.int64))
    rows = np.flatnonzero((index["split"] == SPLIT_CODES[split]) & wanted)
    if not len(rows):
        return read_structures(store_path, 0, 0)
    return read_structures(store_path, int(rows[0]), int(rows[-1]) + 1).subset(rows - rows[0])


def read_structure_table(store_path: Path) -> dict[str, np.ndarray | int]:
    """The store's small index arrays: ``atoms_ptr [N + 1]``, ``split [N]`` (codes),
    ``atom_chunk_rows``, the chunk length (atoms) of its per-atom arrays, and ``has_hessian``."""
    group = zarr.open_group(store=str(store_path), mode="r", zarr_format=3)
    return {
        "atoms_ptr": group["structures/atoms_ptr"][...],
        "split": group["structures/split"][...],
        "atom_chunk_rows": int(group["atoms/positions_A"].chunks[0]),
        "has_hessian": len(_present(group)) > len(ARRAYS),
    }


def read_index_columns(path: Path) -> dict[str, np.ndarray]:
    """The ``sample_index``, ``group`` and ``split`` arrays ``[N]`` of a store or a shard, without
    the rest of it."""
    group = zarr.open_group(store=str(path), mode="r", zarr_format=3)
    return {name: group[ARRAYS[name].path][...] for name in ("sample_index", "group", "split")}


def store_species(store_path: Path) -> list[int]:
    """Sorted atomic numbers present in the store, read one chunk of atoms at a time."""
    numbers = zarr.open_group(store=str(store_path), mode="r", zarr_format=3)["atoms/numbers"]
    step = max(1, numbers.chunks[0])
    found: set[int] = set()
    for start in range(0, numbers.shape[0], step):
        found.update(np.unique(numbers[start : start + step]).tolist())
    return sorted(int(z) for z in found)


def store_checksum(store_path: Path) -> str:
    """SHA-256 over the relative paths and bytes of every file of the store, streamed."""
    store_path = Path(store_path)
    digest = hashlib.sha256()
    for path in sorted(p for p in store_path.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(store_path).as_posix()}\0".encode())
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def store_attrs(store_path: Path) -> dict:
    """The root attributes of the store (units, split_codes, counts, and the caller's attrs)."""
    return zarr.open_group(store=str(store_path), mode="r", zarr_format=3).attrs.asdict()


def _checked(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``arrays`` cast to the store's dtypes, in `ARRAYS` order, after checking names and shapes."""
    if set(arrays) not in (set(ARRAYS), set(ALL_ARRAYS)):
        raise ValueError(
            f"shard arrays must be exactly {sorted(ARRAYS)}, or those and {sorted(HESSIAN_ARRAYS)}; "
            f"got {sorted(arrays)}"
        )
    out = {
        name: np.ascontiguousarray(arrays[name], dtype=spec.dtype)
        for name, spec in ALL_ARRAYS.items()
        if name in arrays
    }
    n, m, ptr = len(out["energy_eV"]), len(out["numbers"]), out["atoms_ptr"]
    for name, values in out.items():
        shape = (_rows(name, n, m),) + ALL_ARRAYS[name].tail
        if values.shape != shape:
            raise ValueError(f"{name} has shape {values.shape}, expected {shape}")
    if ptr[0] != 0 or ptr[-1] != m or np.any(np.diff(ptr) < 0):
        raise ValueError(f"atoms_ptr must rise from 0 to {m}")
    return out


def _rows(name: str, n_structures: int, n_atoms: int) -> int:
    """Length of array ``name`` along its first axis."""
    if name in PER_ATOM:
        return n_atoms
    return n_structures + 1 if name == "atoms_ptr" else n_structures


def _checksum(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over the name, dtype, shape and bytes of each array, in `ALL_ARRAYS` order."""
    digest = hashlib.sha256()
    for name in (name for name in ALL_ARRAYS if name in arrays):
        values = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{values.dtype.str}:{values.shape};".encode())
        digest.update(values.tobytes())
    return digest.hexdigest()


def write_json_atomic(path: Path, content: dict | list) -> None:
    """Write ``content`` as JSON to ``path`` via a temporary file and ``os.replace``."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(content, indent=1))
    os.replace(partial, path)
