"""End to end: the whole Snakemake DAG on a tiny config, then every output checked."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import zarr
from ase.io import read
from mlflow.tracking import MlflowClient

from mlff_distill.store import read_labels, store_attrs
from mlff_distill.student import load_student

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("sample", "label", "train", "tune", "evaluate")
METRIC_KEYS = (
    "teacher",
    "student",
    "n_test",
    "energy_mae_per_atom_eV",
    "force_mae_eV_per_A",
    "force_rel_rmse",
    "teacher_s_per_structure",
    "student_s_per_structure",
    "speedup",
)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The tiny config on the default teacher, built from the torchani wheel into an empty cache."""
    results = tmp_path_factory.mktemp("pipeline") / "results"
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "--cores",
        "2",
        "--configfile",
        str(ROOT / "tests" / "data" / "tiny_config.yaml"),
        "--config",
        f"results_dir={results}",
    ]
    env = {**os.environ, "MLFF_DISTILL_CACHE": str(results.parent / "cache")}
    env.pop("MLFF_DISTILL_MODELS_DIR", None)
    completed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stdout[-5000:] + completed.stderr[-5000:]
    return results, completed.stdout + completed.stderr


def test_every_stage_wrote_outputs_logs_and_benchmarks(tiny_run):
    results, output = tiny_run
    run_dir = results / "tiny"
    for stage in STAGES:
        assert (run_dir / "logs" / f"{stage}.log").stat().st_size > 0
        assert (run_dir / "benchmarks" / f"{stage}.tsv").is_file()
    assert "mlff-distill finished" in output and "speed-up" in output


def test_structures_and_store_agree(tiny_run):
    results, _ = tiny_run
    structures = read(results / "tiny" / "sample" / "structures.extxyz", ":")
    store_path = results / "tiny" / "label" / "labels.zarr"
    group = zarr.open_group(store_path, mode="r")
    assert group.metadata.zarr_format == 3
    labels = read_labels(store_path)
    assert labels.n_structures == len(structures)
    assert labels.atoms_ptr[-1] == sum(len(a) for a in structures) == len(labels.forces_eV_per_A)
    for index in (0, len(structures) - 1):
        assert (labels.atoms(index).numbers == structures[index].numbers).all()
    attrs = store_attrs(store_path)
    assert "ani1x" in attrs["teacher"]["name"] and attrs["units"]["energy_eV"] == "eV"
    assert math.isfinite(labels.energy_eV.sum()) and math.isfinite(labels.forces_eV_per_A.sum())


def test_checkpoint_tune_record_and_metrics(tiny_run):
    results, _ = tiny_run
    model, metadata = load_student(results / "tiny" / "train" / "student.pt")
    assert "ani1x" in metadata["teacher"]["name"]
    record = json.loads((results / "tiny" / "tune" / "inference_path.json").read_text())
    assert record["cuda_available"] is False and record["chosen_path"] in ("eager", "torch_compile")
    metrics = json.loads((results / "tiny" / "evaluate" / "metrics.json").read_text())
    for key in METRIC_KEYS:
        assert key in metrics
    assert metrics["n_test"] > 0
    for key in METRIC_KEYS[3:]:
        assert math.isfinite(metrics[key]) and metrics[key] >= 0
    assert metrics["speedup"] == pytest.approx(metrics["teacher_s_per_structure"] / metrics["student_s_per_structure"])
    assert metrics["teacher_rotation"]["force_rel_change"] < 1e-4  # ANI-1x is invariant


def test_mlflow_has_parent_and_stage_runs(tiny_run):
    results, _ = tiny_run
    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("mlff-distill")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent_id = parents[0].info.run_id
    stages = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id}
    assert set(STAGES) <= set(stages)
    assert all(stages[s].info.status == "FINISHED" for s in STAGES)
    shard_runs = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == stages["label"].info.run_id]
    assert len(shard_runs) >= 2
    assert "val_force_mae_eV_per_A" in stages["train"].data.metrics
    assert stages["evaluate"].data.metrics["force_rel_rmse"] > 0


def test_training_took_its_compiled_loss_from_the_precompile_cache(tiny_run):
    results, _ = tiny_run
    run_dir = results / "tiny"
    record = json.loads((run_dir / "precompile" / "compiled.json").read_text())["training_loss"]
    assert record["compiled"] and record["species"] == [1, 6, 7, 8] and not record["periodic"]
    assert (run_dir / "logs" / "precompile.log").stat().st_size > 0
    train_logs = [run_dir / "logs" / "train.log", *sorted((run_dir / "train" / "resume").glob("rank-*.log"))]
    compiled = [
        line for log in train_logs for line in log.read_text().splitlines() if "compiled the training loss" in line
    ]
    assert compiled, "no training process logged its compilation"
    for line in compiled:
        assert "autograd_cache_hit 1" in line and "fxgraph_cache_miss 0" in line, line
