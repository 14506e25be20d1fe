"""End to end: the whole Snakemake DAG on a tiny config, then every output checked."""

import json
import math
import os
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
import zarr
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write
from mlflow.tracking import MlflowClient
from test_cli import mlff_distill
from tiny_pipeline import planned

from mlff_distill.store import read_labels, store_attrs
from mlff_distill.student import load_student
from mlff_distill.teachers.fennol_skin import FENNOL_SKIN
from mlff_distill.teachers.neurochem import AEV_PARAMS_FILE, RESOURCE_CACHE_SUBDIR
from mlff_distill.teachers.torchani_runtime import CELL_LIST

STAGES = ("sample", "label", "train", "tune", "evaluate")
ROUNDS = 1  # the tiny config's on-policy rounds
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


def test_every_stage_wrote_outputs_logs_and_benchmarks(tiny_run):
    run_dir, output = tiny_run.run_dir, tiny_run.output
    for stage in ("sample", "precompile", "tune", "evaluate"):
        assert (run_dir / "logs" / f"{stage}.log").stat().st_size > 0
        assert (run_dir / "benchmarks" / f"{stage}.tsv").is_file()
    for round_index, stage in [(0, "label"), (0, "train"), (1, "explore"), (1, "label"), (1, "train")]:
        assert (run_dir / "logs" / f"round{round_index}" / f"{stage}.log").stat().st_size > 0
        assert (run_dir / "benchmarks" / f"round{round_index}" / f"{stage}.tsv").is_file()
    assert "mlff-distill finished" in output and "speed-up" in output
    # 2 cores: each round labels in its own job's process (`labeling.cluster.local_workers`)
    for round_index in (0, 1):
        assert (
            "scheduler local, in this process" in (run_dir / "logs" / f"round{round_index}" / "label.log").read_text()
        )


def test_structures_and_store_agree(tiny_run):
    run_dir = tiny_run.run_dir
    structures = read(run_dir / "sample" / "structures.extxyz", ":")
    store_path = run_dir / "round0" / "label" / "labels.zarr"
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
    run_dir = tiny_run.run_dir
    model, metadata = load_student(run_dir / f"round{ROUNDS}" / "train" / "student.pt")
    assert "ani1x" in metadata["teacher"]["name"]
    record = json.loads((run_dir / "tune" / "inference_path.json").read_text())
    assert record["cuda_available"] is False and record["chosen_path"] in ("eager", "torch_compile")
    assert record["exported"]["path"].endswith("tune/student.pt2") and record["exported"]["seconds"] > 0
    assert (run_dir / "tune" / "student.pt2").is_file()
    metrics = json.loads((run_dir / "evaluate" / "metrics.json").read_text())
    for key in METRIC_KEYS:
        assert key in metrics
    assert metrics["n_test"] > 0
    for key in METRIC_KEYS[3:]:
        assert math.isfinite(metrics[key]) and metrics[key] >= 0
    assert metrics["speedup"] == pytest.approx(metrics["teacher_s_per_structure"] / metrics["student_s_per_structure"])
    assert metrics["teacher_rotation"]["force_rel_change"] < 1e-4  # ANI-1x is invariant

    rounds = metrics["rounds"]  # round 0's student and the final one, on the same test split
    assert [row["round"] for row in rounds] == [0, 1] and rounds[1]["force_rel_rmse"] == metrics["force_rel_rmse"]
    assert rounds[0]["force_rel_rmse"] != rounds[1]["force_rel_rmse"]
    spread = metrics["ensemble_spread"]  # the members' disagreement, and the mean's own uncertainty
    assert 0 < spread["force_rel_rmse_of_the_mean"] == pytest.approx(spread["force_rel_rmse"] / math.sqrt(8))
    assert all(row["ensemble_force_rel_rmse_of_the_mean"] > 0 for row in metrics["accuracy_by_target"])
    fit = metrics["training_fit"]  # the targets' teacher MD it learned from, against their test MD
    assert fit["n_train"] > 0 and fit["n_test"] > 0 and fit["limited_by"] in ("the student", "the data")
    assert fit["test_over_train"] == pytest.approx(fit["test_force_rel_rmse"] / fit["train_force_rel_rmse"])
    member = metrics["ensemble_member"]  # the alternative the 8-member teacher offers: one member
    assert member["member"].endswith("member 1 of 8") and 0 < member["force_rel_rmse"] < 1
    assert isinstance(member["student_more_accurate"], bool)
    assert all(row["member_ms"] > 0 and "member_force_rel_rmse" in row for row in metrics["speed"])
    # the teacher's implementations side by side (torchani 2.9's cell list: the same model), the
    # speed-up counted over the fastest; the NeuroChem files came from the wheel into the empty cache
    # and FeNNol's MD neighbour list kept with a skin
    others = sorted([CELL_LIST, FENNOL_SKIN])
    assert metrics["teacher_implementations"] == {"labeling": "fennol", "others": others, "missing": None}
    first_row = {}
    for row in metrics["speed"]:
        timed, not_timed = row["teacher_implementations_ms"], row["teacher_implementations_not_timed"]
        assert set(timed) | set(not_timed) == {"fennol", *others} and not set(timed) & set(not_timed)
        # one not timed was over evaluate.speed.skip_slower_than (2.5) times the fastest on a smaller size
        first = first_row.setdefault(row["target"], row)
        assert all(note["times_fastest"] > 2.5 and note["at_n_atoms"] < row["n_atoms"] for note in not_timed.values())
        assert not first["teacher_implementations_not_timed"]
        differences = row["teacher_implementations_force_rel_diff"]
        assert all(differences[name] < 1e-4 for name in timed if name != "fennol" and "fennol" in timed)
        assert row["speedup"] == pytest.approx(min(timed.values()) / row["student_ms"])
        assert set(row["member_implementations_ms"]) == {CELL_LIST}  # the member at its fastest only
        # the tune stage's AOTInductor package: the same model, timed beside the student
        assert row["exported_student_ms"] > 0 and row["exported_force_rel_diff"] < 1e-4
        # the all-cores pass (the tiny run has 2 cores): each at the faster of its two passes
        assert row["all_cores_threads"] == 2 and row["all_cores_student_ms"] <= row["student_ms"]
        assert row["all_cores_teacher_fastest_ms"] <= row["teacher_fastest_ms"]
        # the accuracy over three frames of the teacher's MD of the target, the timed one's own beside it
        assert row["n_accuracy_frames"] == 3 and math.isfinite(row["timed_frame_force_rel_rmse"])
        assert row["force_rel_rmse"] != row["timed_frame_force_rel_rmse"]
    # the larger size is the smallest repeated: its frames' errors are the smallest's
    assert len({row["force_rel_rmse"] for row in metrics["speed"]}) == 1
    assert (tiny_run.cache / RESOURCE_CACHE_SUBDIR / AEV_PARAMS_FILE).is_file()


def test_reference_energies_are_calibrated_on_the_target_md_and_each_round_trains_uncalibrated(tiny_run):
    students = [load_student(tiny_run.run_dir / f"round{k}" / "train" / "student.pt") for k in range(ROUNDS + 1)]
    uncalibrated = []
    for model, metadata in students:
        calibration, shift = metadata["reference_calibration"], metadata["reference_shift_eV"]
        assert calibration["n_target_md"] > 0 and sorted(shift) == model.species
        after, before = (
            calibration["target_md_energy_mae_per_atom_eV_after"],
            calibration["target_md_energy_mae_per_atom_eV_before"],
        )
        assert after <= before
        uncalibrated.append(model.reference_energies_eV - torch.tensor([shift[z] for z in model.species]).double())
    # reference energies are not trained: a round starts from the previous one's, as fitted
    torch.testing.assert_close(uncalibrated[1], uncalibrated[0])
    assert "reference energies calibrated on" in (tiny_run.run_dir / "logs" / "round1" / "train.log").read_text()
    metrics = json.loads((tiny_run.run_dir / "evaluate" / "metrics.json").read_text())
    final = students[-1][1]
    assert metrics["reference_calibration"]["n_target_md"] == final["reference_calibration"]["n_target_md"]
    assert (
        "Reference energies calibrated on the targets' teacher MD"
        in (tiny_run.run_dir / "evaluate" / "report.html").read_text()
    )


def test_mlflow_has_parent_and_stage_runs(tiny_run):
    client = MlflowClient(tracking_uri=f"sqlite:///{tiny_run.results / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("mlff-distill")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent_id = parents[0].info.run_id
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id}
    assert {"sample", "tune", "evaluate", "round 0", "round 1"} <= set(children)
    rounds = {
        k: {
            r.info.run_name: r
            for r in runs
            if r.data.tags.get("mlflow.parentRunId") == children[f"round {k}"].info.run_id
        }
        for k in (0, 1)
    }
    assert set(rounds[0]) == {"label", "train"} and set(rounds[1]) == {"explore", "label", "train"}
    stages = [children["sample"], children["tune"], children["evaluate"], *rounds[0].values(), *rounds[1].values()]
    assert all(run.info.status == "FINISHED" for run in stages)
    shard_runs = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == rounds[0]["label"].info.run_id]
    assert len(shard_runs) >= 2
    assert "val_force_mae_eV_per_A" in rounds[1]["train"].data.metrics
    assert "n_blowups" in rounds[1]["explore"].data.metrics
    assert children["evaluate"].data.metrics["force_rel_rmse"] > 0


def test_training_took_its_compiled_loss_from_the_precompile_cache(tiny_run):
    run_dir = tiny_run.run_dir
    record = json.loads((run_dir / "precompile" / "compiled.json").read_text())["training_loss"]
    assert record["compiled"] and record["species"] == [1, 6, 7, 8] and record["periodic"]  # the water box
    assert (run_dir / "logs" / "precompile.log").stat().st_size > 0
    train_logs = [
        run_dir / "logs" / "round0" / "train.log",
        *sorted((run_dir / "round0" / "train" / "resume").glob("rank-*.log")),
    ]
    compiled = [
        line for log in train_logs for line in log.read_text().splitlines() if "compiled the training loss" in line
    ]
    assert compiled, "no training process logged its compilation"
    for line in compiled:
        assert "autograd_cache_hit 1" in line and "fxgraph_cache_miss 0" in line, line
        assert str((run_dir / "precompile" / "inductor_cache").resolve()) in line, line  # the run's own cache


# ---------------------------------------------------------------- config as input: what a change reruns

# Jobs by rule and round (the tiny config has one on-policy round).
ROUND0 = {"label0", "train0"}
ROUND1 = {"explore1", "label1", "train1"}
FINAL = {"tune", "evaluate", "report", "acceptance"}
ALL_JOBS = {"sample_target", "sample", "precompile"} | ROUND0 | ROUND1 | FINAL


EDITS = [
    ("{}", set()),
    ("train: {epochs: 10}", {"train0"} | ROUND1 | FINAL),
    ("student: {n_features: 32}", {"precompile", "train0"} | ROUND1 | FINAL),
    ("teacher: {batch_size: 16}", {"sample_target", "sample"} | ROUND0 | ROUND1 | FINAL),
    ("label: {shard_size: 16}", ROUND0 | ROUND1 | FINAL),
    ("label: {workers: 1}", set()),  # where the shards are labeled, not what they hold
    ("sample: {rattle: {structures_per_seed: 7}}", ALL_JOBS - {"sample_target", "precompile"}),
    ("sample: {molecules: [H2O]}", ALL_JOBS - {"sample_target"}),
    ("target: {md: {frames_per_trajectory: 3}}", ALL_JOBS - {"precompile"}),
    ("on_policy: {steps: 30}", ROUND1 | FINAL),
    ("on_policy: {train: {epochs: 3}}", {"train1"} | FINAL),
    ("rounds: 2", {"explore2", "label2", "train2"} | FINAL),
    ("tune: {repeats: 3}", FINAL),
    ("evaluate: {timing_repeats: 2}", {"evaluate", "report", "acceptance"}),
    ("evaluate: {gates: {force_rel_rmse: 0.5}}", {"report", "acceptance"}),  # a verdict, not a measurement
    ("evaluate: {strict: true}", {"report", "acceptance"}),
    ("mlflow: {experiment: elsewhere}", set()),
]
SEED_EDIT = ("{}", ("--config", "seed=5"))


@pytest.fixture(scope="module")
def plans(tiny_run) -> dict:
    """The dry runs of every edit in `EDITS` and of `SEED_EDIT`, two at a time (each is a process
    that spends seconds building the DAG)."""
    edits = [(edit, ()) for edit, _ in EDITS] + [SEED_EDIT]
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(edits, pool.map(lambda edit: planned(tiny_run, *edit), edits)))


@pytest.mark.parametrize(("edit", "reruns"), EDITS)
def test_a_config_edit_reruns_the_stages_that_read_it_and_those_downstream(plans, edit, reruns):
    assert plans[(edit, ())] == reruns


def test_the_seed_on_the_command_line_reruns_all_that_draws_random_numbers(plans):
    assert plans[SEED_EDIT] == ALL_JOBS - {"precompile"}


# ---------------------------------------------------------------- the mlff-distill command on the run's student


def test_evaluate_subcommand_against_the_teacher_and_the_files_labels(tiny_run, tmp_path):
    run_dir = tiny_run.run_dir
    labels = read_labels(run_dir / f"round{ROUNDS}" / "label" / "labels.zarr", "test")
    test = [labels.atoms(index) for index in range(4)]
    structures = tmp_path / "mine.extxyz"
    write(structures, test)
    teacher_config = tmp_path / "teacher.yaml"
    teacher_config.write_text("teacher: {kind: fennol, name: ani1x, source: torchani}\n")
    os.environ["MLFF_DISTILL_CACHE"] = str(tiny_run.cache)
    completed = mlff_distill(
        "evaluate",
        str(run_dir / f"round{ROUNDS}" / "train" / "student.pt"),
        "--structures",
        str(structures),
        "--teacher-config",
        str(teacher_config),
        "--json",
        str(tmp_path / "m.json"),
        "--timing-structures",
        "1",
        "--repeats",
        "1",
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["n_structures"] == 4 and math.isfinite(metrics["force_rel_rmse"]) and metrics["force_rel_rmse"] > 0
    assert "speed-up" in completed.stdout and metrics["speed"][0]["speedup"] > 0
    # the teacher's labels (from the store) written into the file are a reference too, and give the same errors
    labeled = tmp_path / "labeled.extxyz"
    write(labeled, [with_labels(atoms, labels, index) for index, atoms in enumerate(test)])
    completed = mlff_distill(
        "evaluate",
        str(run_dir / f"round{ROUNDS}" / "train" / "student.pt"),
        "--structures",
        str(labeled),
        "--json",
        str(tmp_path / "f.json"),
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    from_file = json.loads((tmp_path / "f.json").read_text())
    assert from_file["force_rel_rmse"] == pytest.approx(metrics["force_rel_rmse"], rel=1e-4)
    unlabeled = mlff_distill(
        "evaluate", str(run_dir / f"round{ROUNDS}" / "train" / "student.pt"), "--structures", str(structures)
    )
    assert unlabeled.returncode != 0 and "structure 0" in unlabeled.stderr and "--teacher-config" in unlabeled.stderr


def with_labels(atoms, labels, index: int):
    """``atoms`` with the energy and forces of structure ``index`` of ``labels`` attached."""
    lo, hi = labels.atoms_ptr[index], labels.atoms_ptr[index + 1]
    atoms.calc = SinglePointCalculator(
        atoms, energy=float(labels.energy_eV[index]), forces=labels.forces_eV_per_A[lo:hi]
    )
    return atoms


def test_md_subcommand_writes_an_extxyz_trajectory(tiny_run, tmp_path):
    run_dir = tiny_run.run_dir
    start = tmp_path / "water.xyz"
    write(start, molecule("H2O"))
    out = tmp_path / "md.extxyz"
    completed = mlff_distill(
        "md",
        str(run_dir / f"round{ROUNDS}" / "train" / "student.pt"),
        "--structure",
        str(start),
        "--temperature",
        "300",
        "--steps",
        "40",
        "--interval",
        "10",
        "--output",
        str(out),
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    frames = read(out, ":")
    assert len(frames) == 4 and [f.info["step"] for f in frames] == [10, 20, 30, 40]
    assert all(math.isfinite(f.get_potential_energy()) for f in frames)
    assert "student MD" in completed.stderr  # the progress bar
    bad = mlff_distill(
        "md",
        str(run_dir / f"round{ROUNDS}" / "train" / "student.pt"),
        "--structure",
        str(start),
        "--temperature",
        "-5",
        "--steps",
        "10",
        "--output",
        str(out),
    )
    assert bad.returncode != 0 and "--temperature" in bad.stderr


def test_rounds_append_labels_without_relabeling_and_keep_the_test_split(tiny_run):
    run_dir = tiny_run.run_dir
    sampled = read(run_dir / "sample" / "structures.extxyz", ":")
    explored = read(run_dir / "round1" / "explore" / "structures.extxyz", ":")
    assert explored and all(a.info["strategy"] == "on-policy" and a.info["round"] == 1 for a in explored)
    assert all(a.info["split"] in ("train", "val") for a in explored)
    final = zarr.open_group(run_dir / "round1" / "label" / "labels.zarr", mode="r")
    indices = final["structures/sample_index"][...]
    assert len(indices) == len(set(indices.tolist())) == len(sampled) + len(explored)  # none labeled twice
    groups_by_split = {}
    excluded = final.attrs["split_codes"]["excluded"]  # single frames over the force bound, not a split
    for group, split in zip(final["structures/group"][...], final["structures/split"][...]):
        if split != excluded:
            groups_by_split.setdefault(int(split), set()).add(int(group))
    splits = list(groups_by_split.values())
    assert all(not (a & b) for i, a in enumerate(splits) for b in splits[i + 1 :])  # no group in two splits
    test_first = read_labels(run_dir / "round0" / "label" / "labels.zarr", "test").n_structures
    assert read_labels(run_dir / "round1" / "label" / "labels.zarr", "test").n_structures == test_first
