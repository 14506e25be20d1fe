# Paths, the config each stage reads, and the MLflow parent run shared by all stages.
from pathlib import Path

from mlff_distill.evaluation.summary import summary_text
from mlff_distill.settings import MLflowSettings
from mlff_distill.tracking import PipelineRun, finish_pipeline_run, start_pipeline_run

RUN_DIR = Path(config["results_dir"]) / config["run_name"]
CONDA_ENV = "../../envs/mlff-distill.yaml"
# The MLflow parent run of this invocation (written by `onstart`, read by every job).
PIPELINE_RUN = str(RUN_DIR / "mlflow_run.json")
# TorchInductor's cache of the compiled student, shared by the precompile, train, tune and evaluate jobs.
COMPILE_CACHE = str(RUN_DIR / "precompile" / "inductor_cache")
# The keys of `train:` that shape the compiled training loss (all the precompile job reads of it).
TRAIN_LOSS_KEYS = ("compile", "batch_size", "energy_weight", "force_weight", "stress_weight", "hessian_weight")


def stage_path(stage, name):
    """results/<run_name>/<stage>/<name>"""
    return str(RUN_DIR / stage / name)


def log_path(stage):
    return str(RUN_DIR / "logs" / f"{stage}.log")


def benchmark_path(stage):
    return str(RUN_DIR / "benchmarks" / f"{stage}.tsv")


def train_threads():
    """The train job's threads: its processes times their threads (null threads: all cores)."""
    train = config["train"]
    return train["processes"] * train["threads"] if train["threads"] else workflow.cores


def start_tracking():
    """Create the MLflow store, experiment and this invocation's parent run before any job."""
    mlflow = MLflowSettings(**config["mlflow"])
    pipeline = start_pipeline_run(config["run_name"], Path(config["results_dir"]), mlflow, config)
    Path(PIPELINE_RUN).parent.mkdir(parents=True, exist_ok=True)
    pipeline.save(PIPELINE_RUN)


def finish_tracking(status):
    if Path(PIPELINE_RUN).exists():
        finish_pipeline_run(PipelineRun.load(PIPELINE_RUN), status)


def print_summary(metrics_file):
    """Print the run's summary, when there is one."""
    if Path(metrics_file).exists():
        print(summary_text(metrics_file), flush=True)
