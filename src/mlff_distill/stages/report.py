"""The report stage: the acceptance gates on the evaluate stage's measurements, and the report.

The evaluate stage measures (minutes of timing and MD); this stage judges, in a second or two. Kept
apart so that editing ``evaluate.gates`` or ``evaluate.strict`` reruns this job and the acceptance
rule's, not the measurements. It reads the evaluate stage's measurements.json and
report_context.json and writes, in ``<results>/<run>/evaluate/``:

- metrics.json: the measurements plus one ``gates`` row per gate and place it was checked
  (`mlff_distill.evaluation.gates.check_gates`), ``gates_passed`` and ``strict``;
- report.html (`mlff_distill.evaluation.report.build_report`), with the evaluate stage's figures.

Both go to the MLflow run "report" with ``gate.<metric>`` (1 passed everywhere, 0 failed somewhere)
and the tag ``gates_passed``. The acceptance rule (`mlff_distill.evaluation.summary.check_acceptance`)
then fails the run when ``evaluate.strict`` and a gate failed, after these files are written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from mlff_distill.evaluation.gates import check_gates, failed_gates, gate_metrics
from mlff_distill.evaluation.report import build_report
from mlff_distill.logs import stage_logger
from mlff_distill.tracking import stage_run


def judged_metrics(measurements: Mapping[str, Any], gates: Mapping[str, float | None], strict: bool) -> dict:
    """``measurements`` (the content of measurements.json) with the gates' rows (`check_gates`),
    ``gates_passed`` (None when no gate is set) and ``strict``: the content of metrics.json."""
    rows = check_gates(measurements, gates)
    return {**measurements, "gates": rows, "gates_passed": not failed_gates(rows) if rows else None, "strict": strict}


def run(
    *,
    gates: dict,
    strict: bool,
    measurements_file: Path,
    context_file: Path,
    metrics_file: Path,
    report_file: Path,
    pipeline_file: Path,
    log_file: Path,
) -> None:
    """The Snakemake job. ``gates`` and ``strict``: ``evaluate.gates`` and ``evaluate.strict``."""
    logger = stage_logger("report", log_file)
    with stage_run(pipeline_file, "report", {"gates": gates, "strict": strict}, log_file) as tracker:
        metrics = judged_metrics(json.loads(Path(measurements_file).read_text()), gates, strict)
        Path(metrics_file).write_text(json.dumps(metrics, indent=2))
        context = json.loads(Path(context_file).read_text())
        config = context["config"]
        config["evaluate"] = {**config.get("evaluate", {}), "gates": gates, "strict": strict}
        figures = {name: Path(context_file).parent / file for name, file in context["figures"].items()}
        build_report(Path(report_file), metrics, config, context["teacher"], context["provenance"], figures)
        tracker.log_metrics(gate_metrics(metrics["gates"]))
        tracker.set_tags({"gates_passed": metrics["gates_passed"]})
        for artifact in (metrics_file, report_file):
            tracker.log_artifact(artifact)
        logger.info("gates passed: %s; metrics %s; report %s", metrics["gates_passed"], metrics_file, report_file)
