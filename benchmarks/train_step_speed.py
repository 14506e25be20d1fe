"""Time of one training step of the student, eager against compiled, on one or more threads.

Usage::

    python benchmarks/train_step_speed.py --store results/default/label/labels.zarr \
        [--configfile my.yaml] [--threads 1 2] [--steps 60] [--warmup 10] \
        [--out results/benchmarks/train_step_speed.json]

A step is what `mlff_distill.student.fitting.train_student` does per batch: the loss of a batch of
``train.batch_size`` structures of the store's train split (`mlff_distill.student.loss.BatchLoss`,
eager or through ``torch.compile``), its backward pass and an AdamW update. The student is the
config's (config/config.yaml with ``--configfile`` merged on top) with reference energies fitted
to the split. Reported per path and thread count: the median and mean ms per step over ``--steps``
steps after ``--warmup`` (the compiled path compiles in its first warm-up steps; the time of the
warm-up is reported too). Results go to ``--out`` (JSON) and to MLflow (experiment "benchmarks",
run "train_step_speed").
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch
from student_speed import DEFAULT_MLFLOW_URI, load_config, machine


def time_steps(store: Path, config: dict, compiled: bool, steps: int, warmup: int) -> dict:
    """Median and mean ms per training step, and the warm-up's seconds, of one path."""
    from mlff_distill.settings import StudentSettings, TrainSettings, build
    from mlff_distill.store import store_species
    from mlff_distill.student import StudentPotential
    from mlff_distill.student.dataset import StructureBlocks, shuffled_batches
    from mlff_distill.student.fitting import fit_reference_energies, stress_rms
    from mlff_distill.student.loss import BatchLoss

    settings = build(TrainSettings, config["train"], "train")
    sizes = build(StudentSettings, config["student"], "student")
    train = StructureBlocks.from_store(store, "train", max_in_memory_bytes=settings.in_memory_max_GB * 1e9)
    species = store_species(store)
    torch.manual_seed(config["seed"])
    model = StudentPotential(
        species=species, reference_energies_eV=fit_reference_energies(train, species), **dataclasses.asdict(sizes)
    )
    batch_loss = BatchLoss(
        settings.energy_weight,
        settings.force_weight,
        settings.stress_weight,
        stress_rms(train),
        compile=compiled,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate)
    generator = torch.Generator().manual_seed(config["seed"])
    batches = []
    while len(batches) < warmup + steps:
        batches += list(shuffled_batches(train, settings.batch_size, generator, settings.shuffle_buffer_blocks))
    seconds = []
    for batch in batches[: warmup + steps]:
        start = time.perf_counter()
        loss = batch_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seconds.append(time.perf_counter() - start)
    timed = seconds[warmup:]
    return {
        "median_ms": 1e3 * statistics.median(timed),
        "mean_ms": 1e3 * statistics.fmean(timed),
        "warmup_s": sum(seconds[:warmup]),
        "compiled": batch_loss.compiled,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--store",
        type=Path,
        default=Path("results/default/label/labels.zarr"),
        help="label store (a pipeline's label/labels.zarr)",
    )
    parser.add_argument(
        "--configfile", type=Path, default=None, help="run config merged over config/config.yaml (student, train)"
    )
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2], help="torch intra-op threads")
    parser.add_argument("--steps", type=int, default=60, help="timed steps per path")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first (compilation)")
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks/train_step_speed.json"))
    parser.add_argument(
        "--mlflow-uri",
        default=DEFAULT_MLFLOW_URI,
        help=f"MLflow tracking URI (default {DEFAULT_MLFLOW_URI}); 'none' to skip",
    )
    args = parser.parse_args(argv)
    if not args.store.exists():
        parser.error(f"{args.store}: no such label store; run the pipeline first (make run)")

    config = load_config(args.configfile)
    report = {
        "benchmark": "train_step_speed",
        "settings": {
            "store": str(args.store.resolve()),
            "student_sizes": json.dumps(config["student"]),
            "batch_size": config["train"]["batch_size"],
            "steps": args.steps,
            "warmup": args.warmup,
        },
        "machine_before": machine("cpu"),
        "results": [],
    }
    print(f"{'path':>9} {'threads':>8} {'median ms':>10} {'mean ms':>8} {'warm-up s':>10}")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for compiled in (False, True):
            row = {
                "path": "compiled" if compiled else "eager",
                "threads": threads,
                **time_steps(args.store, config, compiled, args.steps, args.warmup),
            }
            report["results"].append(row)
            print(
                f"{row['path']:>9} {threads:8d} {row['median_ms']:10.2f} {row['mean_ms']:8.2f} {row['warmup_s']:10.1f}"
            )
    report["machine_after"] = machine("cpu")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    if args.mlflow_uri != "none":
        import mlflow

        if args.mlflow_uri.startswith("sqlite:///"):
            Path(args.mlflow_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(args.mlflow_uri)
        mlflow.set_experiment("benchmarks")
        with mlflow.start_run(run_name="train_step_speed"):
            mlflow.log_params(report["settings"])
            mlflow.log_metrics(
                {f"{row['path']}.threads{row['threads']}.median_ms": row["median_ms"] for row in report["results"]}
            )
            mlflow.log_dict(report, "train_step_speed.json")
    print(f"written {args.out}")
    return report


if __name__ == "__main__":
    main()
