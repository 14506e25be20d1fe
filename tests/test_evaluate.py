"""The evaluate stage: accuracy by hand, the summary, the gates' verdict, and a whole run on a small
store labeled by EMT (periodic copper, so stress is evaluated) with an MLflow store in tmp_path."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from ase.io import read, write

from mlff_distill.data import LabeledArrays, concatenate_structures
from mlff_distill.evaluate import GatesFailedError, accuracy, check_acceptance, mlflow_metrics, run, summary_text


def two_structures() -> LabeledArrays:
    return LabeledArrays(
        numbers=np.array([1, 1, 8]),
        positions_A=np.zeros((3, 3)),
        forces_eV_per_A=np.array([[1.0, 0, 0], [0, 2.0, 0], [0, 0, -2.0]]),
        energy_eV=np.array([-1.0, -2.0]),
        atoms_ptr=np.array([0, 1, 3]),
        cell_A=np.zeros((2, 3, 3)),
        pbc=np.zeros((2, 3), dtype=bool),
        stress_eV_per_A3=np.full((2, 3, 3), np.nan),
    )


def test_accuracy_by_hand():
    reference = two_structures()
    energy = np.array([-0.9, -2.4])  # errors per atom: 0.1/1 and -0.4/2
    forces = reference.forces_eV_per_A + np.array([[0.3, 0, 0], [0, 0, 0], [0, 0, 0]])
    metrics = accuracy(
        reference, {"energy_eV": energy, "forces_eV_per_A": forces}, energy_std_eV=np.array([0.01, 0.04])
    )
    assert metrics["energy_mae_per_atom_eV"] == pytest.approx((0.1 + 0.2) / 2)
    assert metrics["energy_rmse_per_atom_eV"] == pytest.approx(np.sqrt((0.01 + 0.04) / 2))
    assert metrics["force_mae_eV_per_A"] == pytest.approx(0.3 / 9)
    assert metrics["force_rmse_eV_per_A"] == pytest.approx(np.sqrt(0.09 / 9))
    assert metrics["force_rel_rmse"] == pytest.approx(np.sqrt(0.09 / 9) / np.sqrt(9 / 9))
    assert metrics["per_species"]["O"]["force_mae_eV_per_A"] == 0.0
    assert metrics["ensemble_spread"]["energy_mae_per_atom_eV"] == pytest.approx((0.01 + 0.02) / 2)
    assert "stress_mae_GPa" not in metrics  # molecules: no stress


def test_summary_names_teacher_student_error_speedup_and_gates(tmp_path):
    metrics = {
        "teacher": "fennol-pmc/ani1x",
        "student": "StudentPotential (100 parameters)",
        "n_test": 7,
        "force_rel_rmse": 0.0512,
        "energy_mae_per_atom_eV": 0.0021,
        "speedup": 12.34,
        "teacher_s_per_structure": 0.01,
        "student_s_per_structure": 0.00081,
        "inference_path": "eager",
        "speed": [{"n_atoms": 64, "speedup": 14.04}, {"n_atoms": 511, "speedup": 30.0}],
        "gates": [{"metric": "force_rel_rmse", "threshold": 0.03, "bound": "max", "value": 0.0512, "passed": False}],
    }
    (tmp_path / "evaluate").mkdir()
    path = tmp_path / "evaluate" / "metrics.json"
    path.write_text(json.dumps(metrics))
    text = summary_text(path)
    for expected in (
        "fennol-pmc/ani1x",
        "StudentPotential",
        "5.12 %",
        "12.3x",
        str(tmp_path),
        "14.0x / 30.0x at 64 / 511 atoms",
        "FAILED: force_rel_rmse 0.0512 > 0.03",
    ):
        assert expected in text
    assert "teacher symmetry" not in text
    # a teacher that breaks rotational symmetry is named, with the floor it sets
    metrics["teacher_rotation"] = {"force_rel_change": 1.04, "invariant_student_floor": 0.52, "n_structures": 10}
    path.write_text(json.dumps(metrics))
    assert "forces change by 104.0 % when structures are rotated" in summary_text(path)
    assert "below about 52.0 %" in summary_text(path)


def test_mlflow_metrics_are_flat_numbers_with_gate_verdicts():
    numbers = mlflow_metrics(
        {
            "teacher": "ani1x",
            "force_rel_rmse": 0.2,
            "per_species": {"H": {"n_atoms": 3}},
            "md_validation": {"rdf": {"r_A": [1.0, 2.0], "integrated_abs_difference": 0.1}},
            "speed": [{"n_atoms": 64, "teacher_ms": 1.0}],
            "strict": True,
            "gates": [{"metric": "force_rel_rmse", "passed": False}, {"metric": "stress_rel_error", "passed": None}],
        }
    )
    assert numbers == {
        "force_rel_rmse": 0.2,
        "per_species.H.n_atoms": 3.0,
        "md_validation.rdf.integrated_abs_difference": 0.1,
        "gate.force_rel_rmse": 0.0,
    }


def test_acceptance_fails_only_when_strict(tmp_path):
    metrics = tmp_path / "metrics.json"
    metrics.write_text(
        json.dumps(
            {
                "gates": [
                    {"metric": "force_rel_rmse", "threshold": 0.03, "bound": "max", "value": 0.2, "passed": False},
                    {"metric": "stress_rel_error", "threshold": 0.05, "bound": "max", "value": None, "passed": None},
                ]
            }
        )
    )
    verdict, log = tmp_path / "acceptance.json", tmp_path / "logs" / "acceptance.log"
    check_acceptance(metrics, False, verdict, log)
    assert json.loads(verdict.read_text())["failed"] == ["force_rel_rmse 0.2 > 0.03"]
    verdict.unlink()
    with pytest.raises(GatesFailedError, match="force_rel_rmse 0.2 > 0.03"):
        check_acceptance(metrics, True, verdict, log)
    assert not verdict.exists() and "failed" in log.read_text()


def copper_store(path, teacher):
    """Six strained, rattled copper cells labeled by ``teacher``: 4 train, 2 test."""
    from mlff_distill.store import SPLIT_CODES, combine_shards, write_shard

    rng = np.random.default_rng(0)
    structures = []
    for _ in range(6):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
        atoms.set_cell(atoms.cell.array @ (np.eye(3) + 0.01 * rng.standard_normal((3, 3))), scale_atoms=True)
        atoms.rattle(0.05, rng=rng)
        atoms.info["strategy"] = "rattle"
        structures.append(atoms)
    labels = teacher.compute(structures, compute_stress=True)
    arrays = {
        **concatenate_structures(structures),
        "forces_eV_per_A": labels.forces_eV_per_A,
        "energy_eV": labels.energy_eV,
        "energy_std_eV": labels.energy_std_eV,
        "stress_eV_per_A3": labels.stress_eV_per_A3,
        "split": [SPLIT_CODES["train"]] * 4 + [SPLIT_CODES["test"]] * 2,
        "group": np.arange(6),
        "sample_index": np.arange(6),
    }
    write_shard(path.parent / "shard-0", arrays)
    combine_shards([path.parent / "shard-0"], path, {"teacher": teacher.identity.as_dict()})
    return structures


def fixed_speed_rows(config, teacher, student_calculator, structures):
    """Stands in for `mlff_distill.speed.speed_rows` (the plug-in contract, not its numbers)."""
    assert len(structures) == 6 and student_calculator.inference_path == "eager"
    return [
        {"n_atoms": 64, "teacher_ms": 20.0, "student_ms": 2.0},
        {"n_atoms": 512, "teacher_ms": 150.0, "student_ms": 9.0},
    ]


def fixed_md_validation(config, teacher, student_calculator, structures):
    """Stands in for `mlff_distill.md_validation.md_validation`."""
    return {
        "drift": [{"model": "student", "drift_eV_per_atom_per_ps": 1e-4}],
        "rdf": {
            "r_A": [1.0, 2.0, 3.0],
            "g_teacher": [0.0, 2.0, 1.0],
            "g_student": [0.0, 1.5, 1.0],
            "integrated_abs_difference": 0.25,
        },
    }


def test_run_writes_metrics_figures_report_and_logs_the_model(tmp_path, single_thread, monkeypatch):
    import mlflow.pytorch
    from mlflow.tracking import MlflowClient

    from mlff_distill import md_validation, speed

    from conftest import full_config
    from mlff_distill.student import StudentPotential
    from mlff_distill.student.checkpoint import save_student
    from mlff_distill.teachers import load_teacher
    from mlff_distill.tracking import PipelineRun, start_pipeline_run

    config = full_config(
        {
            "run_name": "emt",
            "results_dir": str(tmp_path / "results"),
            "teacher": {"kind": "ase", "name": "emt", "factory": "ase.calculators.emt:EMT", "species": [29]},
            "evaluate": {
                "timing_structures": 2,
                "timing_repeats": 1,
                "gates": {"force_rel_rmse": 0.03, "stress_rel_error": 0.05, "force_cosine": -1.0},
            },
        }
    )
    (tmp_path / "results").mkdir()
    pipeline_file = tmp_path / "mlflow_run.json"
    start_pipeline_run(config).save(pipeline_file)
    store = tmp_path / "label" / "labels.zarr"
    store.parent.mkdir()
    write(tmp_path / "structures.extxyz", copper_store(store, load_teacher(config["teacher"])))
    checkpoint = tmp_path / "student.pt"
    save_student(
        checkpoint, StudentPotential(species=[29], cutoff_A=4.0, n_features=8, n_radial=4, n_interactions=1), {}
    )
    (tmp_path / "inference_path.json").write_text(json.dumps({"chosen_path": "eager"}))
    out = tmp_path / "evaluate"
    out.mkdir()
    monkeypatch.setattr(speed, "speed_rows", fixed_speed_rows, raising=False)
    monkeypatch.setattr(md_validation, "md_validation", fixed_md_validation, raising=False)

    run(
        config,
        store,
        checkpoint,
        tmp_path / "inference_path.json",
        out / "metrics.json",
        pipeline_file,
        tmp_path / "evaluate.log",
        tmp_path / "structures.extxyz",
    )

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_test"] == 2 and metrics["stress_mae_GPa"] > 0 and metrics["speedup"] > 0
    assert set(metrics["per_species"]) == {"Cu"} and metrics["ensemble_spread"] == {}
    kinds = metrics["per_kind"]  # the test split's structures by sampling strategy (copper_store)
    assert sum(row["n_structures"] for row in kinds.values()) == 2
    assert sum(row["share_of_squared_error"] for row in kinds.values()) == pytest.approx(1.0)
    worst = metrics["worst_structures"]  # both test structures, worst first, with their sample index
    assert [row["kind"] for row in worst["structures"]] and worst["share_of_squared_error"] == pytest.approx(1.0)
    shares = [row["share_of_squared_error"] for row in worst["structures"]]
    assert shares == sorted(shares, reverse=True)
    assert {row["sample_index"] for row in worst["structures"]} <= set(
        range(len(read(tmp_path / "structures.extxyz", ":")))
    )
    verdict = {g["metric"]: g["passed"] for g in metrics["gates"]}
    assert verdict == {"force_rel_rmse": False, "stress_rel_error": False, "force_cosine": True}
    assert metrics["gates_passed"] is False
    assert metrics["speed"][1]["student_ms"] == 9.0
    assert metrics["md_validation"]["rdf"]["integrated_abs_difference"] == 0.25
    for name in ("parity.png", "errors.png", "speed.png", "rdf.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    page = (out / "report.html").read_text()
    assert "ase/emt" in page and "relative RMS stress error" in page
    assert "Test structures with the largest force errors" in page
    assert "per strategy" in page and "<th>rattle</th>" in page and '<td class="num">6</td>' in page
    assert page.count("data:image/png;base64,") == 4 and "not run" not in page

    pipeline = PipelineRun.load(pipeline_file)
    client = MlflowClient(tracking_uri=pipeline.tracking_uri)
    assert client.get_run(pipeline.run_id).info.status == "FINISHED"
    stage = client.search_runs([pipeline.experiment_id], "tags.stage = 'evaluate'")[0]
    assert stage.info.status == "FINISHED" and stage.data.metrics["stress_mae_GPa"] > 0
    assert stage.data.metrics["gate.force_cosine"] == 1.0
    assert stage.data.metrics["md_validation.rdf.integrated_abs_difference"] == 0.25
    history = client.get_metric_history(stage.info.run_id, "speed.student_ms")
    assert sorted((m.step, m.value) for m in history) == [(64, 2.0), (512, 9.0)]
    artifacts = {a.path for a in client.list_artifacts(stage.info.run_id)}
    assert {"metrics.json", "report.html", "parity.png", "errors.png", "speed.png", "rdf.png", "student"} <= artifacts
    models = mlflow.search_logged_models(experiment_ids=[pipeline.experiment_id], output_format="list")
    assert len(models) == 1 and models[0].source_run_id == stage.info.run_id
    loaded = mlflow.pytorch.load_model(models[0].model_uri)
    assert isinstance(loaded, StudentPotential) and loaded.species == [29]


def test_strict_acceptance_rule_fails_and_keeps_metrics_and_report(tmp_path):
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "results" / "x" / "evaluate"
    out.mkdir(parents=True)
    (out / "metrics.json").write_text(
        json.dumps(
            {"gates": [{"metric": "force_rel_rmse", "threshold": 0.03, "bound": "max", "value": 0.2, "passed": False}]}
        )
    )
    (out / "report.html").write_text("<html></html>")
    config = tmp_path / "strict.yaml"
    config.write_text(f"run_name: x\nresults_dir: {tmp_path / 'results'}\nevaluate:\n  strict: true\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--cores",
            "1",
            "--configfile",
            str(config),
            "--allowed-rules",
            "acceptance",
            "--",
            str(out / "acceptance.json"),
        ],
        cwd=root,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "acceptance gates failed: force_rel_rmse 0.2 > 0.03" in result.stdout + result.stderr
    assert (out / "metrics.json").is_file() and (out / "report.html").is_file()
    assert not (out / "acceptance.json").exists()
