"""Acceptance gates: bounds on a run's metrics, checked wherever the student is used.

A student is judged where it will run, not only on the test split. So each error gate (a bound on
a metric of `mlff_distill.evaluation.metrics`, such as ``force_rel_rmse``) is checked on the test
split as a whole, on each target and temperature (``accuracy_by_target`` in metrics.json) and on
each timed system (the errors of its ``speed`` row). ``speedup_over_fastest_teacher`` is checked
on each timed system, on one thread and on all cores, ``student_nvt_blow_ups`` on the student's
NVT runs of the targets, and ``rdf_integrated_abs_difference`` (g(r) against the teacher's) on
each of those runs that has one. Each check is a row: ``metric``, ``scope`` (where), ``threshold``,
``bound`` (``max``, or ``min`` for `HIGHER_IS_BETTER`), ``value`` and ``passed`` (None: the metric
was not computed there).
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence

# Gates on these metrics are lower bounds (larger is better); all other gates are upper bounds.
HIGHER_IS_BETTER = frozenset({"force_cosine", "speedup_over_fastest_teacher"})

TEST_SPLIT = "test split"
SPEEDUP = "speedup_over_fastest_teacher"
NVT_BLOW_UPS = "student_nvt_blow_ups"
RDF = "rdf_integrated_abs_difference"
# Where a gate applies as a whole: the blow-up gate's one place, and the scope of a gate's one
# "not evaluated" row when it was measured nowhere.
NOWHERE = {
    SPEEDUP: "the timed systems",
    NVT_BLOW_UPS: "the student's NVT of the targets",
    RDF: "the student's NVT of the targets",
}


def check_gates(metrics: Mapping[str, Any], gates: Mapping[str, float | None]) -> list[dict]:
    """One row per configured gate and place it applies to (see the module's docstring). A gate
    set to None is off. On the test split a gate whose metric was not computed gets a row with
    ``passed`` None; elsewhere such a place has no row."""
    rows = []
    for name, threshold in gates.items():
        if threshold is None:
            continue
        places = list(_places(name, metrics))
        if not any(value is not None for _, value in places):
            places = places[:1] or [(NOWHERE.get(name, TEST_SPLIT), None)]  # reported as not evaluated
        for scope, value in places:
            rows.append(_row(name, scope, float(threshold), value))
    return rows


def _places(name: str, metrics: Mapping[str, Any]) -> Iterator[tuple[str, float | None]]:
    """(scope, value) of metric ``name`` wherever the gate applies."""
    speed: Sequence[dict] = metrics.get("speed") or []
    if name == SPEEDUP:
        for row in speed:
            yield f"{_system(row)}, one thread", row.get("speedup")
            if row.get("all_cores_speedup") is not None:
                yield f"{_system(row)}, {row['all_cores_threads']} threads", row["all_cores_speedup"]
        return
    if name == NVT_BLOW_UPS:
        runs = metrics.get("target_nvt") or []
        if runs:
            yield NOWHERE[NVT_BLOW_UPS], float(sum(bool(run["blew_up"]) for run in runs))
        return
    if name == RDF:
        for run in metrics.get("target_nvt") or []:
            yield f"the student's NVT of {run['target']} at {run['temperature_K']:g} K", run.get(RDF)
        return
    yield TEST_SPLIT, metrics.get(name)
    for row in metrics.get("accuracy_by_target") or []:
        if row.get(name) is not None:
            yield f"{row['target']} at {row['temperature_K']:g} K", row[name]
    for row in speed:
        if row.get(name) is not None:
            yield _system(row), row[name]


def _system(row: Mapping[str, Any]) -> str:
    return f"timed {row['system']}, {row['n_atoms']} atoms"


def _row(name: str, scope: str, threshold: float, value: float | None) -> dict:
    lower_bound = name in HIGHER_IS_BETTER
    passed = None if value is None else bool(value >= threshold if lower_bound else value <= threshold)
    return {
        "metric": name,
        "scope": scope,
        "threshold": threshold,
        "bound": "min" if lower_bound else "max",
        "value": None if value is None else float(value),
        "passed": passed,
    }


def failed_gates(rows: Sequence[dict]) -> list[str]:
    """``"metric value > threshold"`` for each row of `check_gates` that failed, with its scope in
    brackets where it is not the test split."""
    return [_failure(row) for row in rows if row["passed"] is False]


def _failure(row: Mapping[str, Any]) -> str:
    scope = row.get("scope", TEST_SPLIT)
    where = "" if scope == TEST_SPLIT else f" ({scope})"
    return f"{row['metric']} {row['value']:.4g} {'<' if row['bound'] == 'min' else '>'} {row['threshold']:.4g}{where}"


def gate_verdict(rows: Sequence[dict]) -> str:
    """One line: ``passed``, or per failed metric its worst row and in how many places it failed."""
    failed = [metric for metric in gate_summary(rows) if metric["n_failed"]]
    if not failed:
        return "passed"
    return "FAILED: " + "; ".join(
        f"{_failure(metric['worst'])}, failed in {metric['n_failed']} of {metric['n_places']} places"
        for metric in failed
    )


def gate_summary(rows: Sequence[dict]) -> list[dict]:
    """Per metric: ``metric``, ``bound``, ``threshold``, ``n_places`` (evaluated), ``n_failed``,
    ``worst`` (its row: the highest value, or the lowest for a lower bound) and ``passed`` (None
    when evaluated nowhere), for the report's table."""
    summary = []
    for name in dict.fromkeys(row["metric"] for row in rows):
        metric_rows = [row for row in rows if row["metric"] == name]
        evaluated = [row for row in metric_rows if row["passed"] is not None]
        pick = min if metric_rows[0]["bound"] == "min" else max
        summary.append(
            {
                "metric": name,
                "bound": metric_rows[0]["bound"],
                "threshold": metric_rows[0]["threshold"],
                "n_places": len(evaluated),
                "n_failed": sum(row["passed"] is False for row in evaluated),
                "worst": pick(evaluated, key=lambda row: row["value"]) if evaluated else None,
                "passed": all(row["passed"] for row in evaluated) if evaluated else None,
            }
        )
    return summary


def gate_metrics(rows: Sequence[dict]) -> dict[str, float]:
    """MLflow's numbers for the gates: ``gate.<metric>`` 1.0 when it passed everywhere it was
    checked, 0.0 when it failed somewhere; gates evaluated nowhere are left out."""
    return {f"gate.{g['metric']}": float(g["passed"]) for g in gate_summary(rows) if g["passed"] is not None}
