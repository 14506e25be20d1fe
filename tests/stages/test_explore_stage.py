"""The explore stage's run(): a tiny student (its readout zeroed: no forces; with short steps and a
low contact_fraction no atoms come close enough to count as a blow-up) runs MD on a water molecule
and a small water box; the frames are numbered after the previous store and its failures, and the
stage's MLflow run nests under "round 1". And where the student's MD starts (`target_starts`): a
teacher-MD training frame of the target and temperature, never a test frame; a fresh start without
one, or when asked."""

import json

import numpy as np
import pytest
import torch
from ase.build import molecule
from ase.calculators.emt import EMT
from ase.io import read, write
from mlflow.tracking import MlflowClient

from mlff_distill.data import concatenate_structures
from mlff_distill.settings import MLflowSettings, TargetSettings, complete_config, section_settings
from mlff_distill.stages.explore import run, target_starts
from mlff_distill.store import FAILURES_FILE, combine_shards, write_shard
from mlff_distill.student import StudentPotential
from mlff_distill.student.checkpoint import save_student
from mlff_distill.tracking import start_pipeline_run

SYSTEMS = [
    {"name": "water", "molecule": "H2O", "temperatures_K": [300, 400]},
    {"name": "wbox", "box": {"H2O": 4}, "density_g_per_cm3": 0.5, "temperatures_K": [300]},
]


def previous_store(path):
    """A round's store of five water molecules (sample indices 0-4, groups up to 7); sample 42
    failed to label."""
    structures = [molecule("H2O") for _ in range(5)]
    for atoms in structures:
        atoms.calc = EMT()
    arrays = {
        **concatenate_structures(structures),
        "forces_eV_per_A": np.concatenate([a.get_forces() for a in structures]),
        "energy_eV": np.array([a.get_potential_energy() for a in structures]),
        "energy_std_eV": np.zeros(5),
        "stress_eV_per_A3": np.full((5, 3, 3), np.nan),
        "split": np.zeros(5, dtype=np.int8),
        "group": np.array([0, 0, 3, 7, 2]),
        "sample_index": np.arange(5),
    }
    write_shard(path.parent / "shard", arrays)
    combine_shards([path.parent / "shard"], path, {})
    (path.parent / FAILURES_FILE).write_text(json.dumps([{"sample_index": 42, "error": None, "reason": "x"}]))


@pytest.fixture(scope="module")
def stage_inputs(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("explore")
    torch.manual_seed(0)
    student = StudentPotential(species=[1, 8], cutoff_A=4.0, n_features=8, n_interactions=1)
    with torch.no_grad():
        for parameter in student.readout.parameters():
            parameter.zero_()
    save_student(tmp_path / "student.pt", student, metadata={})
    previous_store(tmp_path / "round0" / "labels.zarr")
    (tmp_path / "results").mkdir()
    settings = section_settings(MLflowSettings, "mlflow", {"experiment": "test"})
    pipeline = start_pipeline_run("t", tmp_path / "results", settings, {"seed": 0})
    pipeline.save(tmp_path / "pipeline.json")
    on_policy = {
        "starts": 2,
        "steps": 40,
        "frame_every": 20,
        "timestep_fs": 0.25,
        "min_distance_A": 0.5,
        "contact_fraction": 0.5,
    }
    config = complete_config({"target": {"systems": SYSTEMS}, "on_policy": on_policy, "sample": {}})
    common = {
        "round_index": 1,
        "seed": 5,
        "target": config["target"],
        "on_policy": {key: value for key, value in config["on_policy"].items() if key != "train"},
        "sample": config["sample"],
        "checkpoint": tmp_path / "student.pt",
        "store": tmp_path / "round0" / "labels.zarr",
        "structures_file": tmp_path / "round1" / "explore" / "structures.extxyz",
        "pipeline_file": tmp_path / "pipeline.json",
        "log_file": tmp_path / "logs" / "explore.log",
        "sampled_file": tmp_path / "sample" / "structures.extxyz",
    }
    common["sampled_file"].parent.mkdir()
    write(common["sampled_file"], [teacher_md_frame(x, "md") for x in (0, 1)], format="extxyz")
    return pipeline, common


def test_run_writes_numbered_frames_and_logs_to_the_round_run(stage_inputs, single_thread):
    pipeline, inputs = stage_inputs
    run(**inputs)

    structures = read(inputs["structures_file"], ":")
    assert len(structures) == 3 * 2 * 2  # (water at 2 temperatures, box at 1) x 2 runs x 2 frames
    assert [a.info["sample_index"] for a in structures] == list(range(43, 55))  # after the failed 42
    assert sorted({a.info["group"] for a in structures}) == list(range(8, 14))
    assert [a.info["target"] for a in structures] == ["water"] * 8 + ["wbox"] * 4
    assert [a.info["temperature_K"] for a in structures] == [300] * 4 + [400] * 4 + [300] * 4
    assert {a.info["strategy"] for a in structures} == {"on-policy"} and {a.info["round"] for a in structures} == {1}
    assert {a.info["split"] for a in structures} <= {"train", "val"}
    assert [len(a) for a in structures] == [3] * 8 + [12] * 4
    box = structures[-1]
    assert box.pbc.all() and sorted(set(box.arrays["molecule_index"])) == [0, 1, 2, 3]
    stats = json.loads((inputs["structures_file"].parent / "explore_stats.json").read_text())
    assert (stats["n_runs"], stats["n_frames"], stats["n_blowups"], stats["n_steps"]) == (6, 12, 0, 240)
    log = inputs["log_file"].read_text()
    assert "6 runs, 240 steps, 0 blow-ups; 12 frames" in log
    assert "closest pairs in the teacher's training labels (A): H-H 1.5" in log
    assert "water at 300 K (teacher MD frame, sample 1), water at 400 K (fresh), wbox at 300 K (fresh)" in log

    client = MlflowClient(tracking_uri=pipeline.tracking_uri)
    (explore_run,) = client.search_runs([pipeline.experiment_id], "tags.stage = 'explore'")
    assert explore_run.data.metrics["n_frames"] == 12 and explore_run.data.metrics["n_blowups"] == 0
    assert explore_run.data.tags["round"] == "1"
    round_run = client.get_run(explore_run.data.tags["mlflow.parentRunId"])
    assert round_run.info.run_name == "round 1" and round_run.data.tags["mlflow.parentRunId"] == pipeline.run_id


def test_a_target_with_atoms_the_student_does_not_know_is_refused(stage_inputs):
    _, inputs = stage_inputs
    inputs = {**inputs, "structures_file": inputs["structures_file"].with_name("refused.extxyz")}
    methane = {"name": "methane", "molecule": "CH4", "temperatures_K": [300]}
    inputs["target"] = {**inputs["target"], "systems": [methane]}
    with pytest.raises(ValueError, match=r"target methane holds atomic numbers \[6\] that the student"):
        run(**inputs)
    assert not inputs["structures_file"].exists()


def teacher_md_frame(x_A: float, strategy: str, temperature_K: float = 300.0):
    """A water molecule shifted by ``x_A`` along x, as the sample stage tags a teacher-MD frame of
    the target "water"."""
    atoms = molecule("H2O")
    atoms.positions[:, 0] += x_A
    atoms.info = {"target": "water", "temperature_K": temperature_K, "strategy": strategy, "sample_index": int(x_A)}
    return atoms


def target_settings():
    return section_settings(TargetSettings, "target", {"systems": SYSTEMS})


def test_starts_are_late_training_frames_of_the_teachers_md_never_test_frames():
    sampled = [teacher_md_frame(x, "md") for x in (0, 1, 2, 3)] + [teacher_md_frame(9, "test-md")]
    sampled += [teacher_md_frame(20, "md", temperature_K=400.0)]
    starts = target_starts(target_settings(), 5, 1, sampled, "teacher-md")

    assert [(name, temperature) for name, temperature, _ in starts] == [
        ("water", 300.0),
        ("water", 400.0),
        ("wbox", 300.0),
    ]
    (_, _, at_300), (_, _, at_400), (_, _, box) = starts
    assert at_300.positions[0, 0] - molecule("H2O").positions[0, 0] in (2.0, 3.0)  # the trajectory's second half
    assert at_300.info["start"].startswith("teacher MD frame, sample ")
    assert at_400.positions[0, 0] - molecule("H2O").positions[0, 0] == 20.0
    assert box.info["start"] == "fresh" and box.pbc.all() and len(box) == 12  # no teacher MD of the box
    again = target_starts(target_settings(), 5, 1, sampled, "teacher-md")
    assert np.array_equal(again[0][2].positions, at_300.positions)  # seeded by seed, round and target


def test_fresh_starts_are_asked_for_or_taken_without_teacher_md():
    sampled = [teacher_md_frame(x, "md") for x in (0, 1, 2, 3)]
    fresh = target_starts(target_settings(), 5, 1, sampled, "fresh")
    assert [atoms.info["start"] for _, _, atoms in fresh] == ["fresh"] * 3
    only_tests = target_starts(target_settings(), 5, 1, [teacher_md_frame(9, "test-md")], "teacher-md")
    assert [atoms.info["start"] for _, _, atoms in only_tests] == ["fresh"] * 3
