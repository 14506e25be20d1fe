"""The evaluate stage's run(): a whole run on a small store labeled by EMT (periodic copper, so stress
is evaluated), with the real MD-validation and speed steps at small settings and an MLflow store in
tmp_path."""

import functools
import json

import numpy as np
import pytest
from ase.build import bulk
from ase.io import read, write

from mlff_distill.data import concatenate_structures
from mlff_distill.evaluation.gates import gate_summary


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


def test_run_writes_metrics_figures_report_and_logs_the_model(tmp_path, single_thread, monkeypatch):
    import mlflow.pytorch
    from mlflow.tracking import MlflowClient

    from mlff_distill.evaluation import speed
    from mlff_distill.evaluation.md_validation import rdf_difference
    from mlff_distill.settings import MLflowSettings, TeacherSettings, build, complete_config, measurement_section
    from mlff_distill.stages import report
    from mlff_distill.stages.evaluate import run
    from mlff_distill.student import StudentPotential
    from mlff_distill.student.checkpoint import save_student
    from mlff_distill.teachers import load_teacher
    from mlff_distill.tracking import PipelineRun, start_pipeline_run

    config = complete_config(
        {
            "run_name": "emt",
            "results_dir": str(tmp_path / "results"),
            "teacher": {"kind": "ase", "name": "emt", "factory": "ase.calculators.emt:EMT", "species": [29]},
            "sample": {"molecules": [], "crystals": [{"formula": "Cu", "structure": "fcc", "a_A": 3.6, "cubic": True}]},
            "target": {"systems": []},  # the seeds' path; targets: tests/evaluation/ and the pipeline test
            "evaluate": {
                "timing_structures": 2,
                "timing_repeats": 1,
                "symmetry_structures": 2,
                "speed": {"sizes": [32, 108], "warmup": 0},
                "md": {"nve_steps": 10, "nvt_steps": 10, "sample_every": 5},
                "gates": {
                    "force_rel_rmse": 0.03,
                    "stress_rel_error": 0.05,
                    "force_cosine": -1.0,
                    "energy_mae_per_atom_eV": None,  # on by default
                    "speedup_over_fastest_teacher": None,  # EMT is as fast as the student: on by default
                },
            },
        }
    )
    (tmp_path / "results").mkdir()
    pipeline_file = tmp_path / "mlflow_run.json"
    mlflow_settings = build(MLflowSettings, config["mlflow"], "mlflow")
    start_pipeline_run(config["run_name"], tmp_path / "results", mlflow_settings, config).save(pipeline_file)
    store = tmp_path / "label" / "labels.zarr"
    store.parent.mkdir()
    teacher = load_teacher(build(TeacherSettings, config["teacher"], "teacher"))
    write(tmp_path / "structures.extxyz", copper_store(store, teacher))
    checkpoint = tmp_path / "student.pt"
    save_student(
        checkpoint, StudentPotential(species=[29], cutoff_A=4.0, n_features=8, n_radial=4, n_interactions=1), {}
    )
    (tmp_path / "inference_path.json").write_text(json.dumps({"chosen_path": "eager"}))
    out = tmp_path / "evaluate"
    out.mkdir()
    # The real speed step, without its floor of one second of calls per model and system.
    monkeypatch.setattr(speed, "time_calls", functools.partial(speed.time_calls, min_seconds=0.0))

    run(
        run_name=config["run_name"],
        seed=config["seed"],
        teacher=config["teacher"],
        sample=config["sample"],
        target=config["target"],
        evaluate=measurement_section(config["evaluate"]),
        store=store,
        checkpoint=checkpoint,
        inference_path_file=tmp_path / "inference_path.json",
        structures_file=tmp_path / "structures.extxyz",
        measurements_file=out / "measurements.json",
        context_file=out / "report_context.json",
        pipeline_file=pipeline_file,
        log_file=tmp_path / "evaluate.log",
    )
    measured = json.loads((out / "measurements.json").read_text())
    assert "gates" not in measured and not (out / "report.html").exists()  # the verdict is the report stage's
    report.run(
        gates=config["evaluate"]["gates"],
        strict=False,
        measurements_file=out / "measurements.json",
        context_file=out / "report_context.json",
        metrics_file=out / "metrics.json",
        report_file=out / "report.html",
        pipeline_file=pipeline_file,
        log_file=tmp_path / "report.log",
    )

    metrics = json.loads((out / "metrics.json").read_text())
    assert {k: v for k, v in metrics.items() if k not in ("gates", "gates_passed", "strict")} == measured
    assert metrics["n_test"] == 2 and metrics["stress_mae_GPa"] > 0 and metrics["speedup"] > 0
    assert metrics["inference_path"] == "eager" and metrics["n_timed"] == 2
    assert set(metrics["per_species"]) == {"Cu"} and metrics["ensemble_spread"] == {}
    assert metrics["teacher_rotation"]["n_structures"] == 2  # EMT is invariant: no floor
    assert metrics["teacher_rotation"]["force_rel_change"] < 1e-8
    assert metrics["training_fit"] is None  # no target, so no teacher MD of one to compare on
    kinds = metrics["per_kind"]  # the test split's structures by sampling strategy (copper_store)
    assert sum(row["n_structures"] for row in kinds.values()) == 2
    assert sum(row["share_of_squared_error"] for row in kinds.values()) == pytest.approx(1.0)
    worst = metrics["worst_structures"]  # both test structures, worst first, with their sample index
    assert [row["kind"] for row in worst["structures"]] and worst["share_of_squared_error"] == pytest.approx(1.0)
    assert not any("teacher_energy_std_eV" in row for row in worst["structures"])  # one model: no spread
    shares = [row["share_of_squared_error"] for row in worst["structures"]]
    assert shares == sorted(shares, reverse=True)
    assert {row["sample_index"] for row in worst["structures"]} <= set(
        range(len(read(tmp_path / "structures.extxyz", ":")))
    )
    verdict = {g["metric"]: g["passed"] for g in gate_summary(metrics["gates"])}
    assert verdict == {
        "force_rel_rmse": False,
        "stress_rel_error": False,
        "force_cosine": True,
        "student_nvt_blow_ups": None,  # no targets, no NVT of them: not evaluated
        "rdf_integrated_abs_difference": None,
    }
    # the error gates are checked on the test split and on each timed system too
    assert [g["scope"] for g in metrics["gates"] if g["metric"] == "force_rel_rmse"] == [
        "test split",
        "timed Cu-fcc, 32 atoms",
        "timed Cu-fcc, 108 atoms",
    ]
    assert metrics["gates_passed"] is False and metrics["strict"] is False
    # speed at the configured sizes, on systems built from the run's seeds (the copper crystal)
    assert [row["n_atoms"] for row in metrics["speed"]] == [32, 108]
    assert {row["system"] for row in metrics["speed"]} == {"Cu-fcc"}
    assert all(row["teacher_ms"] > 0 and row["student_ms"] > 0 and row["with_stress"] for row in metrics["speed"])
    # MD validation from the seed (the sampled structures hold no MD frames): NVE of both, NVT g(r)
    md = metrics["md_validation"]
    assert [(row["model"], row["start"]) for row in md["drift"]] == [("student", "Cu-fcc"), ("teacher", "Cu-fcc")]
    assert all(row["time_ps"] > 0 or row["blew_up"] for row in md["drift"])
    rdf = md["rdf"]
    assert md["rdf_not_run"] is None and rdf["kind"] == "g(r)" and rdf["n_frames"] == 2
    assert len(rdf["r_A"]) == len(rdf["g_teacher"]) == len(rdf["g_student"]) == 50
    assert rdf["integrated_abs_difference"] == pytest.approx(
        rdf_difference(np.array(rdf["r_A"]), np.array(rdf["g_teacher"]), np.array(rdf["g_student"]))
    )
    for name in ("parity.png", "errors.png", "speed.png", "rdf.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    page = (out / "report.html").read_text()
    assert "ase/emt" in page and "relative RMS stress error" in page
    assert "Test structures with the largest force errors" in page
    assert "per strategy" in page and "<th>rattle</th>" in page and '<td class="num">6</td>' in page
    assert page.count("data:image/png;base64,") == 4 and "not run" not in page

    pipeline = PipelineRun.load(pipeline_file)
    client = MlflowClient(tracking_uri=pipeline.tracking_uri)
    # the stage leaves the parent run to the Snakefile's onsuccess/onerror handlers
    assert client.get_run(pipeline.run_id).info.status == "RUNNING"
    stage = client.search_runs([pipeline.experiment_id], "tags.stage = 'evaluate'")[0]
    assert stage.info.status == "FINISHED" and stage.data.metrics["stress_mae_GPa"] > 0
    judged = client.search_runs([pipeline.experiment_id], "tags.stage = 'report'")[0]
    assert judged.data.metrics["gate.force_cosine"] == 1.0 and judged.data.metrics["gate.force_rel_rmse"] == 0.0
    assert judged.data.tags["gates_passed"] == "False"
    assert {a.path for a in client.list_artifacts(judged.info.run_id)} >= {"metrics.json", "report.html"}
    assert stage.data.metrics["md_validation.rdf.integrated_abs_difference"] == pytest.approx(
        rdf["integrated_abs_difference"]
    )
    history = client.get_metric_history(stage.info.run_id, "speed.student_ms")
    logged = sorted((m.step, m.value) for m in history)  # one step per system size, in atoms
    assert [step for step, _ in logged] == [32, 108]
    assert [value for _, value in logged] == pytest.approx([row["student_ms"] for row in metrics["speed"]])
    artifacts = {a.path for a in client.list_artifacts(stage.info.run_id)}
    assert {"measurements.json", "parity.png", "errors.png", "speed.png", "rdf.png", "student"} <= artifacts
    models = mlflow.search_logged_models(experiment_ids=[pipeline.experiment_id], output_format="list")
    assert len(models) == 1 and models[0].source_run_id == stage.info.run_id
    loaded = mlflow.pytorch.load_model(models[0].model_uri)
    assert isinstance(loaded, StudentPotential) and loaded.species == [29]
