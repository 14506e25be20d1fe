"""MLflow tracking: one parent run per pipeline run, one child run per stage.

The parent run is created once per Snakemake invocation, by the workflow's ``onstart`` handler
before any job starts; its ids are written to a JSON file that every job reads (`PipelineRun`),
and the ``onsuccess``/``onerror`` handlers end it. Children attach with ``parent_run_id``,
which works across processes. The stages of an on-policy round nest one level deeper, under a
run "round <k>" (`round_run`). Metrics are logged in batches and every call to the store is retried
when SQLite reports a lock, so concurrent Snakemake jobs neither fail nor corrupt the store.
"""

from __future__ import annotations

import json
import subprocess
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from mlff_distill.settings import MLflowSettings, config_hash

PACKAGES = (
    "mlff-distill",
    "torch",
    "jax",
    "fennol",
    "orb-models",
    "snakemake",
    "zarr",
    "dask",
    "distributed",
    "triton",
    "mlflow",
    "ase",
    "numpy",
)
T = TypeVar("T")
# Tags: the on-policy round of a stage's run and of its "round <k>" run; the latter also carries ROUND_RUN_TAG.
ROUND_TAG = "round"
ROUND_RUN_TAG = "round_run"


@dataclass(frozen=True)
class PipelineRun:
    """Where the pipeline's parent run lives."""

    tracking_uri: str
    experiment_id: str
    run_id: str

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> "PipelineRun":
        return cls(**json.loads(Path(path).read_text()))


def tracking_uri(configured: str | None, results_dir: Path) -> str:
    """The configured tracking URI, else a SQLite file under ``results_dir`` (absolute)."""
    if configured:
        return configured
    return f"sqlite:///{Path(results_dir).resolve() / 'mlflow.db'}"


def package_versions() -> dict[str, str]:
    """Installed versions of the packages the results depend on."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_commit() -> str:
    """The commit of the working tree this package runs from, or "unknown"."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists become strings."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


def retry_locked(call: Callable[[], T], attempts: int = 20) -> T:
    """Run ``call``, retrying with backoff while SQLite says the database is locked."""
    for attempt in range(attempts):
        try:
            return call()
        except Exception as error:  # MLflow wraps sqlite3.OperationalError in its own types
            if "locked" not in str(error) or attempt == attempts - 1:
                raise
            time.sleep(min(0.1 * 2**attempt, 5.0))
    raise AssertionError("unreachable")


def start_pipeline_run(run_name: str, results_dir: Path, settings: MLflowSettings, config: dict) -> PipelineRun:
    """Create the store, the experiment and the parent run named ``run_name``, with the whole
    ``config`` as its parameters; return where they are."""
    uri = tracking_uri(settings.tracking_uri, results_dir)
    client = MlflowClient(tracking_uri=uri)
    name = settings.experiment
    experiment = retry_locked(lambda: client.get_experiment_by_name(name))
    if experiment is None:
        artifacts = (Path(results_dir).resolve() / "mlflow-artifacts").as_uri()
        experiment_id = retry_locked(lambda: client.create_experiment(name, artifact_location=artifacts))
    else:
        experiment_id = experiment.experiment_id
    tags = {
        "mlflow.runName": run_name,
        "git_commit": git_commit(),
        "config_hash": config_hash(config),
        **{f"version.{k}": v for k, v in package_versions().items()},
    }
    run = retry_locked(lambda: client.create_run(experiment_id, tags=tags))
    params = flatten(config)
    retry_locked(lambda: client.log_batch(run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()]))
    return PipelineRun(uri, experiment_id, run.info.run_id)


def finish_pipeline_run(pipeline: PipelineRun, status: str = "FINISHED") -> None:
    """Mark the parent run as ended (``FINISHED`` or ``FAILED``)."""
    client = MlflowClient(tracking_uri=pipeline.tracking_uri)
    retry_locked(lambda: client.set_terminated(pipeline.run_id, status))


class StageRun:
    """A child run of the pipeline run: batched, lock-tolerant logging for one stage."""

    def __init__(self, pipeline: PipelineRun, run_id: str):
        self.pipeline = pipeline
        self.run_id = run_id
        self.client = MlflowClient(tracking_uri=pipeline.tracking_uri)

    def log_params(self, params: dict) -> None:
        flat = flatten(params)
        retry_locked(
            lambda: self.client.log_batch(self.run_id, params=[Param(k, str(v)[:6000]) for k, v in flat.items()])
        )

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        retry_locked(lambda: self.client.log_batch(self.run_id, metrics=batch))

    def set_tags(self, tags: dict[str, Any]) -> None:
        retry_locked(lambda: self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()]))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        retry_locked(lambda: self.client.log_artifact(self.run_id, str(path), artifact_path))

    def child(self, name: str) -> "StageRun":
        """A run nested under this one (for example one per labeling shard)."""
        return _create_child(self.pipeline, self.run_id, name)

    def end(self, status: str = "FINISHED") -> None:
        retry_locked(lambda: self.client.set_terminated(self.run_id, status))


def _create_child(pipeline: PipelineRun, parent_id: str, name: str) -> StageRun:
    client = MlflowClient(tracking_uri=pipeline.tracking_uri)
    tags = {"mlflow.runName": name, "mlflow.parentRunId": parent_id}
    run = retry_locked(lambda: client.create_run(pipeline.experiment_id, tags=tags))
    return StageRun(pipeline, run.info.run_id)


def round_run(pipeline: PipelineRun, round_index: int) -> StageRun:
    """The run "round <k>" under the pipeline run, set RUNNING: found among the pipeline run's
    children by its tags, or created by the first stage of the round that asks (the stages of a
    round run one after another, so two never create it at once)."""
    client = MlflowClient(tracking_uri=pipeline.tracking_uri)
    query = f"tags.mlflow.parentRunId = '{pipeline.run_id}' and tags.{ROUND_RUN_TAG} = '{int(round_index)}'"
    found = retry_locked(lambda: client.search_runs([pipeline.experiment_id], filter_string=query, max_results=1))
    if found:
        run = StageRun(pipeline, found[0].info.run_id)
        retry_locked(lambda: client.update_run(run.run_id, status="RUNNING"))
        return run
    run = _create_child(pipeline, pipeline.run_id, f"round {int(round_index)}")
    run.set_tags({ROUND_TAG: int(round_index), ROUND_RUN_TAG: int(round_index)})
    return run


@contextmanager
def stage_run(
    pipeline_file: Path,
    stage: str,
    params: dict | None = None,
    log_file: Path | None = None,
    round_index: int | None = None,
) -> Iterator[StageRun]:
    """A child run for ``stage``; it ends FAILED if the body raises, and carries the log file.

    With ``round_index`` it nests under the run "round <k>" (`round_run`) and is tagged ``round``;
    that run then ends with the stage's status (a later stage of the round sets it running again).
    """
    pipeline = PipelineRun.load(pipeline_file)
    parent = None if round_index is None else round_run(pipeline, round_index)
    run = _create_child(pipeline, pipeline.run_id if parent is None else parent.run_id, stage)
    tags = {"stage": stage, "git_commit": git_commit()}
    run.set_tags(tags if round_index is None else {**tags, ROUND_TAG: int(round_index)})
    if params:
        run.log_params(params)
    status = "FAILED"
    try:
        yield run
        status = "FINISHED"
    finally:
        if log_file and Path(log_file).exists():
            run.log_artifact(log_file, "logs")
        run.end(status)
        if parent is not None:
            parent.end(status)
