"""After a finished run, editing one config key and running Snakemake again reruns exactly what the
key changes (on a copy of the tiny run, so that the tests that read it run beside this one). The
rerun stops at the retrained student: what the edit plans after it (tune, evaluate) is a dry run,
as in test_pipeline's dry run of every edit."""

import json
import shutil

from tiny_pipeline import TinyRun, planned, snakemake


def test_editing_round_1_epochs_retrains_it_without_relabeling(tiny_run, tmp_path):
    run = TinyRun(workdir=tmp_path / "tiny-run", cache=tiny_run.cache, output="")
    shutil.copytree(tiny_run.workdir, run.workdir, symlinks=True)  # keeps modification times
    assert planned(run, "{}") == set()  # the copy is a finished run
    round0, round1 = run.run_dir / "round0", run.run_dir / "round1"
    stores = [p for r in (round0, round1) for p in (r / "label" / "labels.zarr").rglob("*") if p.is_file()]
    # the stores, round 0's student and round 1's exploration must stay as they are
    kept = stores + [round0 / "train" / "student.pt", round1 / "explore" / "structures.extxyz"]
    kept_times = {p: p.stat().st_mtime_ns for p in kept}
    checkpoint_time = (round1 / "train" / "student.pt").stat().st_mtime_ns
    edit = tmp_path / "epochs.yaml"
    edit.write_text("on_policy: {train: {epochs: 3}}\n")
    target = (round1 / "train" / "student.pt").relative_to(run.workdir)
    completed = snakemake(run.workdir, run.cache, "--cores", "2", str(target), edits=(edit,))
    assert completed.returncode == 0, completed.stdout[-5000:] + completed.stderr[-5000:]
    history = json.loads((round1 / "train" / "history.json").read_text())
    assert len(history["epochs"]) == 3
    assert (round1 / "train" / "student.pt").stat().st_mtime_ns > checkpoint_time
    assert stores and {p: p.stat().st_mtime_ns for p in kept} == kept_times
    assert planned(run, "on_policy: {train: {epochs: 3}}") == {"tune", "evaluate", "report", "acceptance"}
