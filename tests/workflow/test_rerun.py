"""After a finished run, editing one config key and running Snakemake again reruns exactly what the
key changes (on a copy of the tiny run, so that the tests that read it run beside this one)."""

import json
import shutil

from tiny_pipeline import TinyRun, planned, snakemake


def test_editing_epochs_retrains_and_reevaluates_without_relabeling(tiny_run, tmp_path):
    run = TinyRun(workdir=tmp_path / "tiny-run", cache=tiny_run.cache, output="")
    shutil.copytree(tiny_run.workdir, run.workdir, symlinks=True)  # keeps modification times
    assert planned(run, "{}") == set()  # the copy is a finished run
    round0 = run.run_dir / "round0"
    store_files = {p: p.stat().st_mtime_ns for p in (round0 / "label" / "labels.zarr").rglob("*") if p.is_file()}
    checkpoint_time = (round0 / "train" / "student.pt").stat().st_mtime_ns
    metrics_time = (run.run_dir / "evaluate" / "metrics.json").stat().st_mtime_ns
    edit = tmp_path / "epochs.yaml"
    edit.write_text("train: {epochs: 3}\n")
    completed = snakemake(run.workdir, run.cache, "--cores", "2", edits=(edit,))
    assert completed.returncode == 0, completed.stdout[-5000:] + completed.stderr[-5000:]
    history = json.loads((round0 / "train" / "history.json").read_text())
    assert len(history["epochs"]) == 3
    assert (round0 / "train" / "student.pt").stat().st_mtime_ns > checkpoint_time
    assert (run.run_dir / "evaluate" / "metrics.json").stat().st_mtime_ns > metrics_time
    assert json.loads((run.run_dir / "evaluate" / "metrics.json").read_text())["n_test"] > 0
    assert {p: p.stat().st_mtime_ns for p in store_files} == store_files  # not relabeled
    assert planned(run, "train: {epochs: 3}") == set()
