"""MLflow: parent and child runs in one SQLite store, written by several processes at once."""

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

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
