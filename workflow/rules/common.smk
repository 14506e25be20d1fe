# Paths, the config each stage reads, and the MLflow parent run shared by all stages.
from pathlib import Path

from mlff_distill.evaluation.summary import summary_text
from mlff_distill.labeling.cluster import WHERE_KEYS
from mlff_distill.sampling.seeds import SEED_KEYS
from mlff_distill.settings import MLflowSettings, measurement_section
from mlff_distill.tracking import PipelineRun, finish_pipeline_run, start_pipeline_run

RUN_DIR = Path(config["results_dir"]) / config["run_name"]
CONDA_ENV = "../../envs/mlff-distill.yaml"
# The MLflow parent run of this invocation (written by `onstart`, read by every job).
PIPELINE_RUN = str(RUN_DIR / "mlflow_run.json")
# TorchInductor's cache of the compiled student, shared by the precompile, train, tune and evaluate jobs.
COMPILE_CACHE = str(RUN_DIR / "precompile" / "inductor_cache")
# The keys of `train:` that shape the compiled training loss (all the precompile job reads of it).
TRAIN_LOSS_KEYS = ("compile", "batch_size", "energy_weight", "force_weight", "stress_weight", "hessian_weight")


# On-policy rounds: round 0 labels the sampled structures and trains the first student; round k >= 1
# labels the frames of the round k-1 student's MD and trains on all labels so far.
ROUNDS = config["rounds"]
# The targets' names: one sample_target job each.
TARGET_NAMES = [system["name"] for system in config["target"]["systems"]]


wildcard_constraints:
    round=r"\d+",
    target=r"[A-Za-z0-9_.-]+",


def stage_path(stage, name):
    """results/<run_name>/<stage>/<name>"""
    return str(RUN_DIR / stage / name)


def round_path(stage, name, round="{round}"):
    """results/<run_name>/round<k>/<stage>/<name> (k: a number, or the {round} wildcard)"""
    return str(RUN_DIR / f"round{round}" / stage / name)


def round_log_path(stage):
    return str(RUN_DIR / "logs" / "round{round}" / f"{stage}.log")


def round_benchmark_path(stage):
    return str(RUN_DIR / "benchmarks" / "round{round}" / f"{stage}.tsv")


def target_files():
    """The structure files the targets name (G2 molecule names have no file suffix), so that a
    changed file reruns the sample stage."""
    files = []
    for system in config["target"]["systems"]:
        names = [system.get("file"), system.get("molecule"), *system.get("box", {})]
        files += [name for name in names if name and Path(name).suffix]
    return files


def round_structures(wildcards):
    """The structures round k labels: the sampled ones in round 0, the explored ones later."""
    k = int(wildcards.round)
    return stage_path("sample", "structures.extxyz") if k == 0 else round_path("explore", "structures.extxyz", k)


def explored_so_far(wildcards):
    """The on-policy frames explored in rounds 1..k (none in round 0)."""
    return [round_path("explore", "structures.extxyz", j) for j in range(1, int(wildcards.round) + 1)]


def previous_round(name, stage):
    """An input function: the previous round's file (none in round 0)."""

    def previous(wildcards):
        k = int(wildcards.round)
        return [round_path(stage, name, k - 1)] if k > 0 else []

    return previous


def round_train_settings(wildcards):
    """train: as configured in round 0; with on_policy.train's epochs and time cap after it."""
    if int(wildcards.round) == 0:
        return config["train"]
    return {**config["train"], **config["on_policy"]["train"]}


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
