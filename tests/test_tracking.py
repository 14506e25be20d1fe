"""MLflow: parent and child runs in one SQLite store, written by several processes at once."""

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import pytest
from mlflow.tracking import MlflowClient

from mlff_distill.settings import MLflowSettings, section_settings
from mlff_distill.tracking import PipelineRun, flatten, stage_run, start_pipeline_run, tracking_uri


def config_for(tmp_path) -> dict:
    return {
        "run_name": "t",
        "results_dir": str(tmp_path / "results"),
        "seed": 0,
        "mlflow": {"tracking_uri": None, "experiment": "test"},
        "train": {"epochs": 3},
    }


def log_stage(pipeline_file: str, name: str) -> str:
    with stage_run(pipeline_file, name, {"stage": name}) as run:
        for step in range(20):
            run.log_metrics({"loss": 1.0 / (step + 1), "other": step}, step=step)
        return run.run_id


def test_flatten():
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": "x"}) == {"a.b": 1, "a.c": "[1, 2]", "d": "x"}


def test_parent_and_concurrent_children(tmp_path):
    (tmp_path / "results").mkdir()
    config = config_for(tmp_path)
    settings = section_settings(MLflowSettings, "mlflow", config["mlflow"])
    pipeline = start_pipeline_run(config["run_name"], tmp_path / "results", settings, config)
    assert pipeline.tracking_uri.startswith("sqlite:///") and pipeline.tracking_uri.endswith("mlflow.db")
    assert pipeline.tracking_uri == tracking_uri(None, tmp_path / "results")
    pipeline_file = tmp_path / "pipeline.json"
    pipeline.save(pipeline_file)
    assert PipelineRun.load(pipeline_file) == pipeline

    names = [f"stage{i}" for i in range(6)]
    # Six fresh processes (no connection inherited from this one), forked from a server that has
    # imported MLflow once instead of six spawned interpreters importing it each.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["mlflow.tracking", "mlff_distill.tracking"])
    with ProcessPoolExecutor(max_workers=6, mp_context=context) as pool:
        run_ids = list(pool.map(log_stage, [str(pipeline_file)] * 6, names))

    client = MlflowClient(tracking_uri=pipeline.tracking_uri)
    parent = client.get_run(pipeline.run_id)
    assert parent.data.params["train.epochs"] == "3"
    assert "config_hash" in parent.data.tags and "version.torch" in parent.data.tags
    for run_id, name in zip(run_ids, names):
        run = client.get_run(run_id)
        assert run.data.tags["mlflow.parentRunId"] == pipeline.run_id
        assert run.info.run_name == name and run.info.status == "FINISHED"
        assert len(client.get_metric_history(run_id, "loss")) == 20


def test_stages_of_a_round_nest_under_one_round_run(tmp_path):
    """Two stages of round 1 share one "round 1" run (found again by its tag), round 2 has its own,
    a stage without a round hangs under the pipeline run; the round run ends as its last stage did."""
    (tmp_path / "results").mkdir()
    config = config_for(tmp_path)
    settings = section_settings(MLflowSettings, "mlflow", config["mlflow"])
    pipeline = start_pipeline_run(config["run_name"], tmp_path / "results", settings, config)
    pipeline_file = tmp_path / "pipeline.json"
    pipeline.save(pipeline_file)
    client = MlflowClient(tracking_uri=pipeline.tracking_uri)

    ids = {}
    for stage, round_index in (("sample", None), ("explore", 1), ("label", 1), ("label", 2)):
        with stage_run(pipeline_file, stage, {"x": 1}, round_index=round_index) as run:
            run.log_metrics({"n_frames": 3})
            ids[stage, round_index] = run.run_id
    with pytest.raises(RuntimeError, match="boom"):
        with stage_run(pipeline_file, "train", round_index=2):
            raise RuntimeError("boom")

    def parent_of(run_id):
        return client.get_run(run_id).data.tags["mlflow.parentRunId"]

    round_1, round_2 = parent_of(ids["explore", 1]), parent_of(ids["label", 2])
    assert parent_of(ids["label", 1]) == round_1 != round_2
    assert parent_of(ids["sample", None]) == pipeline.run_id
    for round_id, index, status in ((round_1, 1, "FINISHED"), (round_2, 2, "FAILED")):
        run = client.get_run(round_id)
        assert run.info.run_name == f"round {index}" and run.data.tags["round"] == str(index)
        assert parent_of(round_id) == pipeline.run_id and run.info.status == status
    assert client.get_run(ids["label", 1]).data.tags["round"] == "1"
    assert "round" not in client.get_run(ids["sample", None]).data.tags
    children = client.search_runs([pipeline.experiment_id], f"tags.mlflow.parentRunId = '{pipeline.run_id}'")
    assert sorted(r.info.run_name for r in children) == ["round 1", "round 2", "sample"]
