"""Label sampled structures with the teacher, in shards run by Dask (`mlff_distill.labeling.cluster`).

Each shard is labeled by one worker process and written as its own small Zarr group with a marker
(`mlff_distill.store.write_shard`); one writer then combines the shards into the label store.
Shards that are complete and hold the same input structures are reused, so a rerun after a kill
labels only what is missing. An on-policy round labels only its new structures into its own shards
and combines them with the complete shards of the earlier rounds (``previous_shards``), which are
never relabeled. Units: positions Angstrom, energies eV, forces eV/Angstrom.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from ase import Atoms
from distributed import as_completed

from mlff_distill.data import concatenate_structures
from mlff_distill.labeling.cluster import WORKER_ENV, checked_scheduler, in_this_process, open_client
from mlff_distill.settings import TeacherSettings
from mlff_distill.store import (
    FAILURES_FILE,
    SPLIT_CODES,
    combine_shards,
    marker_path,
    read_index_columns,
    read_marker,
    read_shard,
    write_json_atomic,
    write_shard,
)
from mlff_distill.teachers import Teacher, load_teacher
from mlff_distill.teachers.fennol_ensemble import largest_molecules
from mlff_distill.teachers.hessian import hessian_directions, hessian_vector_products

REQUIRED_INFO = ("split", "group", "sample_index")
TEACHER_CONFIG_FILE = "teacher_config.json"
# Written into a shards directory once its shards are combined: their names, in store order.
SHARDS_MANIFEST = "shards.json"


def plan_shards(n_structures: int, shard_size: int) -> list[range]:
    """Consecutive index ranges of at most ``shard_size`` structures covering ``n_structures``."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {shard_size}")
    return [range(start, min(start + shard_size, n_structures)) for start in range(0, n_structures, shard_size)]


def label_shard(
    teacher_config: dict,
    structures: list[Atoms],
    shard_path: Path,
    largest: Sequence[Atoms] = (),
    hessian_step_A: float | None = None,
) -> dict:
    """Label ``structures`` with the teacher and write them as the shard at ``shard_path``.

    With ``hessian_step_A`` (Angstrom), each structure also gets one Hessian-vector product of the
    teacher (`mlff_distill.teachers.hessian`: two more force evaluations per structure).

    ``largest``: the largest molecules of the whole labeling job (see
    `teachers.fennol_ensemble.largest_molecules`), given to a teacher's ``reserve_capacity``
    (where it has one, as FeNNol ensembles do) before the first batch, so that its padded shapes,
    and JAX's compilations, are settled once per worker (README, "Measured").

    Runs in a Dask worker; the teacher is loaded once per process. If the teacher raises on the
    whole batch or returns non-finite energies/forces, the structures are labeled one at a time;
    a structure that then raises or gives non-finite energy/forces is left out of the shard and
    recorded in ``failures`` (``sample_index``, ``error``: exception type or None, ``reason``).
    A shard with failures is still complete: its marker records the failures and a hash of all
    its input structures, so a rerun reuses it instead of retrying the failing structures
    (delete the shard, or change the teacher config, to retry them).

    Returns ``{shard, n_structures (labeled), n_atoms, n_failed, failures, seconds (whole task),
    teacher_seconds, write_seconds}``; times in s.
    """
    start = time.perf_counter()
    teacher = _cached_teacher(_canonical_json(teacher_config))
    teacher_start = time.perf_counter()
    if largest and hasattr(teacher, "reserve_capacity"):
        teacher.reserve_capacity(largest)
    kept, output, failures = _compute_with_fallback(teacher, structures, hessian_step_A)
    teacher_seconds = time.perf_counter() - teacher_start
    arrays = _input_arrays(kept)
    arrays.update(output)
    write_start = time.perf_counter()
    write_shard(shard_path, arrays, {"failures": failures, "inputs_sha256": _inputs_sha256(structures)})
    return {
        "shard": Path(shard_path).name,
        "n_structures": len(kept),
        "n_atoms": int(arrays["atoms_ptr"][-1]),
        "n_failed": len(failures),
        "failures": failures,
        "seconds": time.perf_counter() - start,
        "teacher_seconds": teacher_seconds,
        "write_seconds": time.perf_counter() - write_start,
    }


class LabelingFailedError(RuntimeError):
    """More structures failed to label than ``max_failed_fraction`` allows; ``summary`` holds the
    labeling summary (the store was written all the same, without the failed structures)."""

    def __init__(self, message: str, summary: dict):
        super().__init__(message)
        self.summary = summary


def label_structures(
    structures: list[Atoms],
    teacher: TeacherSettings,
    shards_dir: Path,
    store_path: Path,
    n_workers: int,
    shard_size: int,
    attrs: dict,
    progress: Callable[[dict], None] | None = None,
    max_failed_fraction: float = 0.0,
    scheduler: dict | None = None,
    max_force_eV_per_A: float | None = None,
    hessian_step_A: float | None = None,
    previous_shards: Sequence[Path] = (),
) -> dict:
    """Label ``structures`` in shards under ``shards_dir`` and combine them into ``store_path``.

    Every structure needs ``info["split"]`` (train/val/test), ``info["group"]`` and
    ``info["sample_index"]``. ``scheduler`` picks where shards are labeled (see `open_client`):
    None or ``{"kind": "local"}``: a local cluster of ``n_workers`` processes of one thread each
    (``n_workers=0``: in this process, without Dask); ``{"kind": "address", "address": ...}``: an
    existing Dask scheduler; ``{"kind": "slurm", "jobs": N, ...}``: a dask-jobqueue SLURMCluster.
    Complete shards holding the same structures, labeled with the same ``teacher`` settings, are
    reused. ``hessian_step_A`` (Angstrom; None: none) adds the teacher's Hessian-vector products
    (see `label_shard`). ``progress`` receives each finished shard's stats with ``structures_per_second`` and
    ``eta_seconds``. ``attrs`` go into the store's root attributes.

    Structures the teacher fails on (see `label_shard`) are left out of the store; all failures,
    of new and reused shards, are in the summary (``n_failed``, ``failed_fraction``, ``failures``)
    and in ``failures.json`` beside the store. If the failed fraction exceeds
    ``max_failed_fraction``, `LabelingFailedError` is raised after the store is combined.
    Structures with a teacher force of ``max_force_eV_per_A`` (eV/Angstrom) or more on some atom
    are stored but excluded from every split (`mlff_distill.store.combine_shards`); their sample
    indices are the summary's ``excluded``.

    ``previous_shards``: complete shards of earlier rounds (see `shards_in`), labeled with the same
    teacher settings; they go into the store as they are, before this call's own shards, and are
    never relabeled. A ``sample_index`` that occurs twice among the new structures, the previous
    shards' structures and their failures (a structure labeled twice) raises ``ValueError`` before
    anything is labeled. ``failures.json`` then lists the previous shards' failures too; the
    failed fraction is that of ``structures`` alone. Once combined, the names of this call's
    shards go to ``<shards_dir>/shards.json`` (`SHARDS_MANIFEST`).

    Returns a summary with per-shard stats; times in s, ``structures_per_second`` over the
    labeling phase including the cluster's start. ``n_structures``, ``n_stored`` and the failures
    count the new structures; ``n_previous`` the structures stored from ``previous_shards`` and
    ``n_store`` all structures of the store.
    """
    start = time.perf_counter()
    _check_info(structures)
    if not 0.0 <= max_failed_fraction <= 1.0:
        raise ValueError(f"max_failed_fraction must be within [0, 1], got {max_failed_fraction}")
    scheduler = checked_scheduler(scheduler)
    teacher_config = dataclasses.asdict(teacher)
    shards_dir = Path(shards_dir).resolve()
    labeled_with = {**teacher_config, "hessian_step_A": hessian_step_A}
    previous = [Path(path).resolve() for path in previous_shards]
    previous_failures = _check_previous_shards(previous, labeled_with, shards_dir)
    _check_unique_samples(structures, previous, previous_failures)
    shards_dir.mkdir(parents=True, exist_ok=True)
    (shards_dir / SHARDS_MANIFEST).unlink(missing_ok=True)
    _invalidate_if_teacher_changed(shards_dir, labeled_with)
    ranges = plan_shards(len(structures), shard_size)
    paths = [shards_dir / f"shard-{r.start:08d}-{r.stop:08d}.zarr" for r in ranges]
    shards = [[structures[i] for i in r] for r in ranges]
    todo = [(path, shard) for path, shard in zip(paths, shards) if not _reusable(path, shard)]
    label_start = time.perf_counter()
    stats = _label_todo(todo, teacher_config, n_workers, WORKER_ENV, progress, scheduler, hessian_step_A)
    label_seconds = time.perf_counter() - label_start

    combine_start = time.perf_counter()
    excluded = combine_shards(previous + paths, store_path, attrs, max_force_eV_per_A)
    combine_seconds = time.perf_counter() - combine_start
    write_json_atomic(shards_dir / SHARDS_MANIFEST, {"shards": [path.name for path in paths]})
    failures = [failure for path in paths for failure in read_marker(path).get("failures", [])]
    failures_file = Path(store_path).resolve().parent / FAILURES_FILE
    write_json_atomic(failures_file, previous_failures + failures)
    n_labeled = sum(s["n_structures"] + s["n_failed"] for s in stats)
    n_previous = sum(read_marker(path)["n_structures"] for path in previous)
    summary = {
        "n_structures": len(structures),
        "n_atoms": sum(len(a) for a in structures),
        "n_stored": len(structures) - len(failures),
        "n_previous_shards": len(previous),
        "n_previous": n_previous,
        "n_store": n_previous + len(structures) - len(failures),
        "n_failed": len(failures),
        "n_excluded": len(excluded),
        "excluded": excluded,
        "failed_fraction": len(failures) / len(structures) if structures else 0.0,
        "shards_labeled": len(todo),
        "shards_reused": len(paths) - len(todo),
        "seconds": time.perf_counter() - start,
        "label_seconds": label_seconds,
        "combine_seconds": combine_seconds,
        "structures_per_second": n_labeled / label_seconds if n_labeled else 0.0,
        "scheduler": scheduler["kind"],
        "failures_file": str(failures_file),
        "failures": failures,
        "shards": sorted(stats, key=lambda s: s["shard"]),
    }
    if summary["failed_fraction"] > max_failed_fraction:
        reasons = "; ".join(f"sample {f['sample_index']}: {f['reason']}" for f in failures[:3])
        raise LabelingFailedError(
            f"{len(failures)} of {len(structures)} structures ({summary['failed_fraction']:.1%}) "
            f"failed to label, more than max_failed_fraction={max_failed_fraction}; first: "
            f"{reasons}; all in {failures_file}",
            summary,
        )
    return summary


def shards_in(shards_dir: Path) -> list[Path]:
    """The shards that `label_structures` combined from ``shards_dir``, in store order (from its
    `SHARDS_MANIFEST`, so that stale shards of an earlier plan are left out); raises
    ``FileNotFoundError`` if that labeling did not finish."""
    manifest = Path(shards_dir) / SHARDS_MANIFEST
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest} not found: the labeling of {shards_dir} did not finish")
    return [Path(shards_dir) / name for name in json.loads(manifest.read_text())["shards"]]


def _check_previous_shards(previous: Sequence[Path], labeled_with: dict, shards_dir: Path) -> list[dict]:
    """Raise unless every previous shard is complete (has its marker), lies outside ``shards_dir``
    and was labeled with ``labeled_with`` (where its directory records it); their failures."""
    wanted = _canonical_json(labeled_with)
    failures: list[dict] = []
    for path in previous:
        if path.parent == shards_dir:
            raise ValueError(f"previous shard {path} lies in this labeling's own shards directory {shards_dir}")
        if not marker_path(path).is_file() or not path.is_dir():
            raise ValueError(f"previous shard {path} is not complete (no data or no marker): relabel its round")
        recorded = path.parent / TEACHER_CONFIG_FILE
        if recorded.is_file() and recorded.read_text() != wanted:
            raise ValueError(
                f"previous shard {path} was labeled with other teacher settings ({recorded}) than these: "
                "relabel its round"
            )
        failures += read_marker(path).get("failures", [])
    return failures


def _check_unique_samples(structures: Sequence[Atoms], previous: Sequence[Path], previous_failures: list[dict]) -> None:
    """Raise naming a ``sample_index`` that occurs twice among ``structures``, the structures of
    the ``previous`` shards and their failures."""
    seen: dict[int, str] = {}
    sources = [(int(f["sample_index"]), "a failure recorded in a previous shard") for f in previous_failures]
    for path in previous:
        sources += [(int(index), f"previous shard {path.name}") for index in read_index_columns(path)["sample_index"]]
    sources += [(int(atoms.info["sample_index"]), f"new structure {n}") for n, atoms in enumerate(structures)]
    for index, source in sources:
        if index in seen:
            raise ValueError(
                f"sample_index {index} occurs twice ({seen[index]} and {source}): it would be labeled twice"
            )
        seen[index] = source


# How many of the job's largest molecules, by atoms and by atoms of each species, go to each
# shard's teacher.reserve_capacity.
LARGEST_FOR_CAPACITY = 64


def _label_todo(
    todo: list[tuple[Path, list[Atoms]]],
    teacher_config: dict,
    n_workers: int,
    env: dict[str, str],
    progress: Callable[[dict], None] | None,
    scheduler: dict,
    hessian_step_A: float | None = None,
) -> list[dict]:
    """Label the shards in ``todo`` (in this process if the (checked) scheduler is local and
    ``n_workers <= 0``; else on Dask workers, see `open_client`); their stats."""
    if not todo:
        return []
    total = sum(len(shard) for _, shard in todo)
    start = time.perf_counter()
    stats: list[dict] = []

    def finished(stat: dict) -> None:
        stats.append(stat)
        done = sum(s["n_structures"] + s["n_failed"] for s in stats)
        rate = done / (time.perf_counter() - start)
        if progress is not None:
            progress(
                {
                    **stat,
                    "shards_done": len(stats),
                    "shards_total": len(todo),
                    "structures_done": done,
                    "structures_total": total,
                    "structures_per_second": rate,
                    "eta_seconds": (total - done) / rate,
                }
            )

    batches = largest_molecules([atoms for _, shard in todo for atoms in shard], LARGEST_FOR_CAPACITY)
    largest = list({id(atoms): atoms for batch in batches for atoms in batch}.values())
    if in_this_process(scheduler, n_workers):
        for path, shard in todo:
            finished(label_shard(teacher_config, shard, path, largest, hessian_step_A))
        return stats

    with open_client(scheduler, min(n_workers, len(todo)), env) as client:
        futures = [
            client.submit(label_shard, teacher_config, shard, path, largest, hessian_step_A, pure=False)
            for path, shard in todo
        ]
        for future in as_completed(futures):
            finished(future.result())
    return stats


def _compute_with_fallback(
    teacher: Teacher, structures: list[Atoms], hessian_step_A: float | None = None
) -> tuple[list[Atoms], dict[str, np.ndarray], list[dict]]:
    """The structures the teacher labeled, their labels and the failures (see `label_shard`)."""
    try:
        arrays = _teacher_labels(teacher, structures, hessian_step_A)
        if _finite(arrays):
            return list(structures), arrays, []
    except Exception:  # one bad structure spoils the batch: find it below
        pass
    kept, outputs, failures = [], [], []
    for atoms in structures:
        failure = {"sample_index": int(atoms.info["sample_index"]), "error": None, "reason": "non-finite energy/forces"}
        try:
            arrays = _teacher_labels(teacher, [atoms], hessian_step_A)
        except Exception as error:  # any teacher error means: this structure fails
            failures.append({**failure, "error": type(error).__name__, "reason": f"{type(error).__name__}: {error}"})
            continue
        if not _finite(arrays):
            failures.append(failure)
            continue
        kept.append(atoms)
        outputs.append(arrays)
    if not outputs:
        empty = {
            "energy_eV": np.zeros(0),
            "energy_std_eV": np.zeros(0),
            "forces_eV_per_A": np.zeros((0, 3)),
            "stress_eV_per_A3": np.zeros((0, 3, 3)),
        }
        if hessian_step_A is not None:
            empty.update(hessian_direction=np.zeros((0, 3)), hessian_product_eV_per_A2=np.zeros((0, 3)))
        return [], empty, failures
    return kept, {name: np.concatenate([o[name] for o in outputs]) for name in outputs[0]}, failures


def _teacher_labels(teacher: Teacher, structures: list[Atoms], hessian_step_A: float | None) -> dict[str, np.ndarray]:
    """The store arrays the teacher gives for ``structures``: energies, forces, stress and, with
    ``hessian_step_A``, one Hessian-vector product per structure."""
    output = teacher.compute(structures, compute_stress=True)
    stress = (
        np.full((len(structures), 3, 3), np.nan)
        if output.stress_eV_per_A3 is None
        else np.asarray(output.stress_eV_per_A3, dtype=np.float64)
    )
    arrays = {
        "energy_eV": np.asarray(output.energy_eV, dtype=np.float64),
        "energy_std_eV": np.asarray(output.energy_std_eV, dtype=np.float64),
        "forces_eV_per_A": np.asarray(output.forces_eV_per_A, dtype=np.float64),
        "stress_eV_per_A3": stress,
    }
    if hessian_step_A is not None:
        directions = hessian_directions(structures)
        arrays["hessian_direction"] = np.concatenate(directions) if directions else np.zeros((0, 3))
        arrays["hessian_product_eV_per_A2"] = np.asarray(
            hessian_vector_products(teacher, structures, directions, hessian_step_A), dtype=np.float64
        )
    return arrays


def _finite(arrays: dict[str, np.ndarray]) -> bool:
    """True if the energies, forces and (if present) Hessian-vector products are all finite."""
    return all(
        np.isfinite(arrays[name]).all()
        for name in ("energy_eV", "forces_eV_per_A", "hessian_product_eV_per_A2")
        if name in arrays
    )


@functools.lru_cache(maxsize=2)
def _cached_teacher(teacher_config_json: str) -> Teacher:
    """The teacher of a canonical-JSON config, loaded once per process."""
    return load_teacher(TeacherSettings(**json.loads(teacher_config_json)))


def cached_teacher(settings: TeacherSettings) -> Teacher:
    """The teacher of ``settings``, loaded once per process: the one that `label_shard` uses here."""
    return _cached_teacher(_canonical_json(dataclasses.asdict(settings)))


def _canonical_json(config: dict) -> str:
    return json.dumps(config, sort_keys=True)


def _check_info(structures: Sequence[Atoms]) -> None:
    """Raise naming the first structure that lacks an info key or has an unknown split."""
    for index, atoms in enumerate(structures):
        for key in REQUIRED_INFO:
            if key not in atoms.info:
                raise ValueError(f"structure {index} has no info[{key!r}] (needs {', '.join(REQUIRED_INFO)})")
        if atoms.info["split"] not in SPLIT_CODES:
            raise ValueError(
                f"structure {index}: info['split']={atoms.info['split']!r} is not one of {', '.join(SPLIT_CODES)}"
            )


def _input_arrays(structures: Sequence[Atoms]) -> dict[str, np.ndarray]:
    """The store arrays that come from the structures themselves (not from the teacher)."""
    arrays = concatenate_structures(structures)
    arrays["split"] = np.array([SPLIT_CODES[a.info["split"]] for a in structures], dtype=np.int8)
    arrays["group"] = np.array([a.info["group"] for a in structures], dtype=np.int64)
    arrays["sample_index"] = np.array([a.info["sample_index"] for a in structures], dtype=np.int64)
    return arrays


def _reusable(shard_path: Path, structures: Sequence[Atoms]) -> bool:
    """True if the shard is complete and was labeled from exactly ``structures`` (those the
    teacher failed on are recorded in its marker, not stored)."""
    try:
        existing = read_shard(shard_path)
        marker = read_marker(shard_path)
    except Exception:  # missing, partial or corrupt: relabel
        return False
    if "inputs_sha256" in marker and marker["inputs_sha256"] != _inputs_sha256(structures):
        return False
    failed = {f["sample_index"] for f in marker.get("failures", [])}
    kept = [a for a in structures if a.info["sample_index"] not in failed]
    return all(np.array_equal(existing[name], values) for name, values in _input_arrays(kept).items())


def _inputs_sha256(structures: Sequence[Atoms]) -> str:
    """SHA-256 of the input arrays of ``structures`` (all of them, failing ones included)."""
    digest = hashlib.sha256()
    for name, values in sorted(_input_arrays(structures).items()):
        values = np.ascontiguousarray(values)
        digest.update(f"{name}:{values.dtype.str}:{values.shape};".encode())
        digest.update(values.tobytes())
    return digest.hexdigest()


def _invalidate_if_teacher_changed(shards_dir: Path, teacher_config: dict) -> None:
    """Unless ``shards_dir`` records ``teacher_config``, drop its shard markers, then record it."""
    path = shards_dir / TEACHER_CONFIG_FILE
    wanted = _canonical_json(teacher_config)
    if path.is_file() and path.read_text() == wanted:
        return
    for marker in shards_dir.glob("shard-*.zarr.done.json"):
        marker.unlink()
    path.write_text(wanted)
