# Paths, the MLflow parent run, and the end-of-run summary shared by all stages.
from pathlib import Path

RUN_DIR = Path(config["results_dir"]) / config["run_name"]
CONDA_ENV = "../../envs/mlff-distill.yaml"
PIPELINE_RUN = str(RUN_DIR / "mlflow_run.json")
# TorchInductor's cache of the compiled training loss, shared by the precompile and train jobs.
COMPILE_CACHE = str(RUN_DIR / "precompile" / "inductor_cache")


def stage_path(stage, name):
    """results/<run_name>/<stage>/<name>"""
    return str(RUN_DIR / stage / name)


def log_path(stage):
    return str(RUN_DIR / "logs" / f"{stage}.log")


def benchmark_path(stage):
    return str(RUN_DIR / "benchmarks" / f"{stage}.tsv")


def print_summary(metrics_file):
    """Print the run's summary, when this invocation got as far as evaluating."""
    from mlff_distill.evaluate import summary_text

    if Path(metrics_file).exists():
        print(summary_text(metrics_file), flush=True)


def mark_pipeline_failed():
    from mlff_distill.tracking import PipelineRun, finish_pipeline_run

    if Path(PIPELINE_RUN).exists():
        finish_pipeline_run(PipelineRun.load(PIPELINE_RUN), "FAILED")
