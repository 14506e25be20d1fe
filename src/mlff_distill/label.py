"""Label sampled structures with the teacher, in shards run by a Dask local cluster.

Each shard is labeled by one worker process and written as its own small Zarr group with a marker
(`mlff_distill.store.write_shard`); one writer then combines the shards into the label store.
Shards that are complete and hold the same input structures are reused, so a rerun after a kill
labels only what is missing. Units: positions Angstrom, energies eV, forces eV/Angstrom.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from ase import Atoms

from mlff_distill.data import concatenate_structures
from mlff_distill.store import SPLIT_CODES, combine_shards, read_shard, write_shard
from mlff_distill.teachers import Teacher, check_structures_for, load_teacher

REQUIRED_INFO = ("split", "group", "sample_index")
# Each worker is a single-threaded process: keep XLA's Eigen off the other workers' cores
# (distributed already sets OMP_NUM_THREADS=1). On 2 cores this measured neither faster nor slower.
WORKER_ENV = {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false"}
# Workers share compiled teacher functions through JAX's persistent cache in <shards_dir>/jax-cache.
JAX_CACHE_DIR = "jax-cache"
TEACHER_CONFIG_FILE = "teacher_config.json"


def plan_shards(n_structures: int, shard_size: int) -> list[range]:
    """Consecutive index ranges of at most ``shard_size`` structures covering ``n_structures``."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {shard_size}")
    return [range(start, min(start + shard_size, n_structures))
            for start in range(0, n_structures, shard_size)]


def label_shard(teacher_config: dict, structures: list[Atoms], shard_path: Path) -> dict:
    """Label ``structures`` with the teacher and write them as the shard at ``shard_path``.

    Runs in a Dask worker; the teacher is loaded once per process. Returns
    ``{shard, n_structures, n_atoms, seconds}`` (wall time of the whole task, in s).
    """
    start = time.perf_counter()
    output = _cached_teacher(_canonical_json(teacher_config)).compute(structures)
    arrays = _input_arrays(structures)
    arrays.update(
        forces_eV_per_A=output.forces_eV_per_A,
        energy_eV=output.energy_eV,
        energy_std_eV=output.energy_std_eV,
    )
    write_shard(shard_path, arrays)
    return {
        "shard": Path(shard_path).name,
        "n_structures": len(structures),
        "n_atoms": int(arrays["atoms_ptr"][-1]),
        "seconds": time.perf_counter() - start,
    }


def label_structures(
    structures: list[Atoms],
    teacher_config: dict,
    shards_dir: Path,
    store_path: Path,
    n_workers: int,
    shard_size: int,
    attrs: dict,
    progress: Callable[[dict], None] | None = None,
) -> dict:
    """Label ``structures`` in shards under ``shards_dir`` and combine them into ``store_path``.

    Every structure needs ``info["split"]`` (train/val/test), ``info["group"]`` and
    ``info["sample_index"]``. Shards are labeled by a local cluster of ``n_workers`` processes of
    one thread each (``n_workers=0``: in this process, without Dask). Complete shards holding the
    same structures, labeled with the same ``teacher_config``, are reused. ``progress`` receives
    each finished shard's stats with ``structures_per_second`` and ``eta_seconds``. ``attrs`` go
    into the store's root attributes. Returns a summary with per-shard stats; times in s,
    ``structures_per_second`` over the labeling phase including the cluster's start.
    """
    start = time.perf_counter()
    _check_info(structures)
    shards_dir = Path(shards_dir).resolve()
    shards_dir.mkdir(parents=True, exist_ok=True)
    _invalidate_if_teacher_changed(shards_dir, teacher_config)
    ranges = plan_shards(len(structures), shard_size)
    paths = [shards_dir / f"shard-{r.start:08d}-{r.stop:08d}.zarr" for r in ranges]
    shards = [[structures[i] for i in r] for r in ranges]
    todo = [(path, shard) for path, shard in zip(paths, shards) if not _reusable(path, shard)]
    label_start = time.perf_counter()
    env = {**WORKER_ENV, "JAX_COMPILATION_CACHE_DIR": str(shards_dir / JAX_CACHE_DIR)}
    stats = _label_todo(todo, teacher_config, n_workers, env, progress)
    label_seconds = time.perf_counter() - label_start

    combine_start = time.perf_counter()
    combine_shards(paths, store_path, attrs)
    n_labeled = sum(s["n_structures"] for s in stats)
    return {
        "n_structures": len(structures),
        "n_atoms": sum(len(a) for a in structures),
        "shards_labeled": len(todo),
        "shards_reused": len(paths) - len(todo),
        "seconds": time.perf_counter() - start,
        "label_seconds": label_seconds,
        "combine_seconds": time.perf_counter() - combine_start,
        "structures_per_second": n_labeled / label_seconds if n_labeled else 0.0,
        "shards": sorted(stats, key=lambda s: s["shard"]),
    }


def _label_todo(todo: list[tuple[Path, list[Atoms]]], teacher_config: dict, n_workers: int,
                env: dict[str, str], progress: Callable[[dict], None] | None) -> list[dict]:
    """Label the shards in ``todo`` (in this process if ``n_workers <= 0``; else in worker
    processes with environment ``env``); their stats."""
    if not todo:
        return []
    total = sum(len(shard) for _, shard in todo)
    start = time.perf_counter()
    stats: list[dict] = []

    def finished(stat: dict) -> None:
        stats.append(stat)
        done = sum(s["n_structures"] for s in stats)
        rate = done / (time.perf_counter() - start)
        if progress is not None:
            progress({**stat, "shards_done": len(stats), "shards_total": len(todo),
                      "structures_done": done, "structures_total": total,
                      "structures_per_second": rate, "eta_seconds": (total - done) / rate})

    if n_workers <= 0:
        for path, shard in todo:
            finished(label_shard(teacher_config, shard, path))
        return stats

    from distributed import Client, LocalCluster, as_completed

    with LocalCluster(n_workers=min(n_workers, len(todo)), threads_per_worker=1, processes=True,
                      dashboard_address=None, silence_logs=logging.WARNING, env=env) as cluster, \
            Client(cluster) as client:
        futures = [client.submit(label_shard, teacher_config, shard, path, pure=False)
                   for path, shard in todo]
        for future in as_completed(futures):
            finished(future.result())
    return stats


@functools.lru_cache(maxsize=2)
def _cached_teacher(teacher_config_json: str) -> Teacher:
    """The teacher of a canonical-JSON config, loaded once per process."""
    return load_teacher(json.loads(teacher_config_json))


def _canonical_json(config: dict) -> str:
    return json.dumps(config, sort_keys=True)


def _check_info(structures: Sequence[Atoms]) -> None:
    """Raise naming the first structure that lacks an info key or has an unknown split."""
    for index, atoms in enumerate(structures):
        for key in REQUIRED_INFO:
            if key not in atoms.info:
                raise ValueError(f"structure {index} has no info[{key!r}] (needs {', '.join(REQUIRED_INFO)})")
        if atoms.info["split"] not in SPLIT_CODES:
            raise ValueError(f"structure {index}: info['split']={atoms.info['split']!r} "
                             f"is not one of {', '.join(SPLIT_CODES)}")


def _input_arrays(structures: Sequence[Atoms]) -> dict[str, np.ndarray]:
    """The store arrays that come from the structures themselves (not from the teacher)."""
    arrays = concatenate_structures(structures)
    arrays["split"] = np.array([SPLIT_CODES[a.info["split"]] for a in structures], dtype=np.int8)
    arrays["group"] = np.array([a.info["group"] for a in structures], dtype=np.int64)
    arrays["sample_index"] = np.array([a.info["sample_index"] for a in structures], dtype=np.int64)
    return arrays


def _reusable(shard_path: Path, structures: Sequence[Atoms]) -> bool:
    """True if the shard is complete and holds exactly ``structures``."""
    try:
        existing = read_shard(shard_path)
    except Exception:  # missing, partial or corrupt: relabel
        return False
    return all(np.array_equal(existing[name], values)
               for name, values in _input_arrays(structures).items())


def _invalidate_if_teacher_changed(shards_dir: Path, teacher_config: dict) -> None:
    """Unless ``shards_dir`` records ``teacher_config``, drop its shard markers, then record it."""
    path = shards_dir / TEACHER_CONFIG_FILE
    wanted = _canonical_json(teacher_config)
    if path.is_file() and path.read_text() == wanted:
        return
    for marker in shards_dir.glob("shard-*.zarr.done.json"):
        marker.unlink()
    path.write_text(wanted)


def run(config: dict, structures_file: Path, store: Path, shards_dir: Path, pipeline_file: Path,
        log_file: Path, threads: int) -> None:
    """The Snakemake job: label, combine, log throughput and one MLflow child run per shard."""
    from ase.io import read

    from mlff_distill.logs import stage_logger
    from mlff_distill.tracking import config_hash, package_versions, stage_run

    logger = stage_logger("label", log_file)
    structures = read(structures_file, ":")
    teacher = load_teacher(config["teacher"])
    check_structures_for(teacher, structures, config["teacher"]["molecule_only"])
    n_workers = config["label"]["workers"] or threads
    with stage_run(pipeline_file, "label", {**config["label"], "n_workers": n_workers},
                   log_file) as tracker:
        tracker.set_tags({"teacher": teacher.identity.label,
                          "teacher_trained": teacher.identity.trained})
        tracker.log_params({"teacher": teacher.identity.as_dict()})

        def progress(stat: dict) -> None:
            logger.info("shard %s done: %d/%d structures, %.1f structures/s, %.0f s left",
                        stat["shard"], stat["structures_done"], stat["structures_total"],
                        stat["structures_per_second"], stat["eta_seconds"])
            tracker.log_metrics({"structures_done": stat["structures_done"],
                                 "structures_per_second": stat["structures_per_second"],
                                 "eta_seconds": stat["eta_seconds"]}, step=stat["shards_done"])

        attrs = {"teacher": teacher.identity.as_dict(), "config_hash": config_hash(config),
                 "package_versions": package_versions(),
                 "structures_file": str(Path(structures_file).resolve())}
        summary = label_structures(structures, config["teacher"], shards_dir, store, n_workers,
                                   config["label"]["shard_size"], attrs, progress)
        for stat in summary["shards"]:
            shard_run = tracker.child(f"label {stat['shard']}")
            shard_run.log_metrics({k: stat[k] for k in ("n_structures", "n_atoms", "seconds")})
            shard_run.end()
        tracker.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))})
        logger.info("labeled %d structures (%d shards new, %d reused) in %.1f s into %s",
                    summary["n_structures"], summary["shards_labeled"], summary["shards_reused"],
                    summary["seconds"], store)
