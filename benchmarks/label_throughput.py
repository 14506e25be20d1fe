"""Labeling throughput of the label stage, in its own process and on 1 and 2 Dask workers.

Usage::

    python benchmarks/label_throughput.py --teacher ani1x orb --workers 0 1 2 --structures 16 \
        --out results/benchmarks/label_throughput.json [--mlflow-uri file:./mlruns]

Structures: periodic boxes of rigid, rattled water molecules (H and O: both the ANI-1x and the
Orb teacher label them), all of the same size. For each teacher and worker count a local cluster
is started and every worker labels a warm-up shard first (teacher loading, JAX compilation),
so cluster start-up and first-call costs are reported apart. Then `label_structures` labels the
structures through that cluster (scheduler kind "address"): structures/s is over its labeling
phase only. ``--workers 0`` labels in this process, as a label job on 2 cores or fewer does
(`mlff_distill.labeling.cluster.local_workers`): no cluster, the warm-up shard labeled here.
``total_seconds`` (start-up, warm-up and labeling) is what a label job of that many structures
pays from a cold start. The store's overhead is (time in `write_shard`, summed over shards, +
time in `combine_shards`) / (teacher compute time, summed over shards). Times in s.

Teachers: ``ani1x``: ``{"kind": "fennol", "name": "ani1x", "source": "torchani"}`` (built from the
torchani wheel into the user cache on first use); ``orb``: orb-v3-conservative-inf-omat with seeded
random weights (an untrained teacher: its speed, not its labels, matters here).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import molecule

TEACHERS = {
    "ani1x": {"kind": "fennol", "name": "ani1x", "source": "torchani"},
    "orb": {"kind": "orb", "name": "orb-v3-conservative-inf-omat", "weights": "random", "seed": 0},
}
WATER_VOLUME_A3 = 29.9  # volume per molecule of liquid water at 1 g/cm^3


def teacher_settings(name: str):
    """The teacher's `TeacherSettings`, every schema default filled in."""
    from mlff_distill.settings import TeacherSettings, section_settings

    return section_settings(TeacherSettings, "teacher", TEACHERS[name])


def water_boxes(n_structures: int, per_side: int, seed: int) -> list[Atoms]:
    """``n_structures`` cubic periodic boxes of ``per_side**3`` water molecules on a grid,
    randomly rotated and rattled, at about 1 g/cm^3, with the info keys labeling needs."""
    rng = np.random.default_rng(seed)
    side = (per_side**3 * WATER_VOLUME_A3) ** (1 / 3)
    spacing = side / per_side
    boxes = []
    for index in range(n_structures):
        box = Atoms(cell=[side] * 3, pbc=True)
        for i in range(per_side):
            for j in range(per_side):
                for k in range(per_side):
                    water = molecule("H2O")
                    water.rotate(rng.uniform(0, 360), rng.standard_normal(3))
                    water.translate((np.array([i, j, k]) + 0.5) * spacing)
                    box += water
        box.rattle(0.05, seed=int(rng.integers(2**31)))
        box.info.update(split="train", group=index, sample_index=index)
        boxes.append(box)
    return boxes


def measure(
    teacher: str, n_workers: int, structures: list[Atoms], warmup: list[Atoms], shard_size: int, workdir: Path
) -> dict:
    """One teacher and worker count: start-up, warm-up and labeling times and throughput."""
    from distributed import Client, LocalCluster, wait

    from mlff_distill.labeling.cluster import WORKER_ENV, pin_workers_to_cores
    from mlff_distill.labeling.shards import label_shard, label_structures

    settings = teacher_settings(teacher)
    config = dataclasses.asdict(settings)  # what `label_shard` takes, as `label_structures` gives it
    shards_dir = workdir / f"{teacher}-{n_workers}" / "shards"
    shards_dir.mkdir(parents=True)
    if n_workers == 0:
        start = time.perf_counter()
        warm = [label_shard(config, warmup, shards_dir.parent / "warm-0.zarr")]
        warmup_seconds = time.perf_counter() - start
        summary = label_structures(
            structures, settings, shards_dir, shards_dir.parent / "labels.zarr", 0, shard_size, attrs={}
        )
        return _result(teacher, n_workers, structures, shard_size, 0.0, warmup_seconds, warm, warmup, summary)
    start = time.perf_counter()
    with (
        LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.WARNING,
            env=WORKER_ENV,
        ) as cluster,
        Client(cluster) as client,
    ):
        client.wait_for_workers(n_workers)
        pin_workers_to_cores(client)
        cluster_start = time.perf_counter() - start
        start = time.perf_counter()
        workers = sorted(client.scheduler_info()["workers"])
        futures = [
            client.submit(
                label_shard,
                config,
                warmup,
                shards_dir.parent / f"warm-{i}.zarr",
                workers=[address],
                allow_other_workers=False,
                pure=False,
            )
            for i, address in enumerate(workers)
        ]
        wait(futures)
        warm = [f.result() for f in futures]
        warmup_seconds = time.perf_counter() - start
        summary = label_structures(
            structures,
            settings,
            shards_dir,
            shards_dir.parent / "labels.zarr",
            n_workers=n_workers,
            shard_size=shard_size,
            attrs={},
            scheduler={"kind": "address", "address": cluster.scheduler_address},
        )
    return _result(teacher, n_workers, structures, shard_size, cluster_start, warmup_seconds, warm, warmup, summary)


def _result(
    teacher: str,
    n_workers: int,
    structures: list[Atoms],
    shard_size: int,
    cluster_start: float,
    warmup_seconds: float,
    warm: list[dict],
    warmup: list[Atoms],
    summary: dict,
) -> dict:
    """The row of one teacher and worker count (see `measure`), times in s."""
    teacher_seconds = sum(s["teacher_seconds"] for s in summary["shards"])
    write_seconds = sum(s["write_seconds"] for s in summary["shards"])
    return {
        "teacher": teacher,
        "workers": n_workers,
        "n_structures": len(structures),
        "atoms_per_structure": len(structures[0]),
        "shard_size": shard_size,
        "n_failed": summary["n_failed"],
        "cluster_start_seconds": cluster_start,
        "warmup_seconds": warmup_seconds,
        "warmup_teacher_seconds_per_structure": float(np.mean([w["teacher_seconds"] for w in warm])) / len(warmup),
        "label_seconds": summary["label_seconds"],
        "structures_per_second": len(structures) / summary["label_seconds"],
        "teacher_seconds": teacher_seconds,
        "teacher_seconds_per_structure": teacher_seconds / len(structures),
        "write_seconds": write_seconds,
        "combine_seconds": summary["combine_seconds"],
        "store_overhead_fraction": (write_seconds + summary["combine_seconds"]) / teacher_seconds,
        "total_seconds": cluster_start + warmup_seconds + summary["label_seconds"],
    }


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
        "load_average_1_5_15": list(os.getloadavg()),
    }


def print_table(results: list[dict], speedups: dict) -> None:
    header = (
        f"{'teacher':8} {'workers':>7} {'structs/s':>10} {'teacher s/struct':>16} "
        f"{'store overhead':>14} {'cluster start s':>15} {'warm-up s':>9} {'total s':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r['teacher']:8} {r['workers']:7d} {r['structures_per_second']:10.2f} "
            f"{r['teacher_seconds_per_structure']:16.3f} {r['store_overhead_fraction']:14.1%} "
            f"{r['cluster_start_seconds']:15.1f} {r['warmup_seconds']:9.1f} {r['total_seconds']:8.1f}"
        )
    for teacher, speedup in speedups.items():
        print(f"speed-up {teacher}: {speedup}")


def log_to_mlflow(uri: str, report: dict) -> None:
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("benchmarks")
    with mlflow.start_run(run_name="label_throughput"):
        mlflow.log_params({k: v for k, v in report["settings"].items()})
        for r in report["results"]:
            prefix = f"{r['teacher']}.workers_{r['workers']}."
            mlflow.log_metrics(
                {prefix + k: float(v) for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            )
        for teacher, speedups in report["speedups"].items():
            mlflow.log_metrics({f"{teacher}.speedup_{k}": v for k, v in speedups.items()})
        mlflow.log_dict(report, "label_throughput.json")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", nargs="+", choices=sorted(TEACHERS), default=["ani1x", "orb"])
    parser.add_argument("--workers", nargs="+", type=int, default=[0, 1, 2], help="Dask workers; 0: in this process")
    parser.add_argument("--structures", type=int, default=16, help="structures labeled per run")
    parser.add_argument("--shard-size", type=int, default=2, help="structures per shard")
    parser.add_argument(
        "--waters-per-side",
        type=int,
        default=3,
        help="a box holds this cubed water molecules (3: 27 molecules, 81 atoms)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks/label_throughput.json"))
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where shards and stores go (default: a temporary folder)"
    )
    parser.add_argument("--mlflow-uri", default=None, help="log the results as an MLflow run")
    args = parser.parse_args(argv)

    structures = water_boxes(args.structures, args.waters_per_side, args.seed)
    warmup = water_boxes(args.shard_size, args.waters_per_side, args.seed + 1)
    report = {
        "benchmark": "label_throughput",
        "settings": {
            "teachers": ",".join(args.teacher),
            "workers": ",".join(map(str, args.workers)),
            "structures": args.structures,
            "shard_size": args.shard_size,
            "atoms_per_structure": len(structures[0]),
            "system": "periodic water boxes",
        },
        "machine_before": machine(),
    }
    results = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as workdir:
        for teacher in args.teacher:
            for n_workers in args.workers:
                results.append(measure(teacher, n_workers, structures, warmup, args.shard_size, Path(workdir)))
                print(
                    f"done: {teacher} with {n_workers} worker(s): "
                    f"{results[-1]['structures_per_second']:.2f} structures/s",
                    flush=True,
                )
    speedups = {}
    for teacher in args.teacher:
        rate = {r["workers"]: r["structures_per_second"] for r in results if r["teacher"] == teacher}
        base = min(rate)
        speedups[teacher] = {f"{n}_vs_{base}_workers": rate[n] / rate[base] for n in sorted(rate) if n != base}
    report.update(results=results, speedups=speedups, machine_after=machine())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print_table(results, speedups)
    print(
        f"load average before {report['machine_before']['load_average_1_5_15']}, after "
        f"{report['machine_after']['load_average_1_5_15']} on {os.cpu_count()} CPUs"
    )
    if args.mlflow_uri:
        log_to_mlflow(args.mlflow_uri, report)
    return report


if __name__ == "__main__":
    main()
