"""Acceptance gates (`mlff_distill.evaluation.gates`): checked on the test split, on each target and
temperature, on each timed system (errors and speed-ups) and on the student's NVT; the verdicts."""

from mlff_distill.evaluation.gates import (
    TEST_SPLIT,
    check_gates,
    failed_gates,
    gate_metrics,
    gate_summary,
    gate_verdict,
)
from mlff_distill.stages.report import judged_metrics


def test_gates_pass_fail_and_not_computed():
    metrics = {"force_rel_rmse": 0.05, "energy_mae_per_atom_eV": 0.001, "force_cosine": 0.9}
    rows = check_gates(
        metrics,
        {
            "force_rel_rmse": 0.03,
            "energy_mae_per_atom_eV": 0.002,
            "force_cosine": 0.95,
            "stress_rel_error": 0.05,
            "stress_mae_GPa": None,
        },
    )
    verdict = {row["metric"]: row["passed"] for row in rows}
    assert verdict == {
        "force_rel_rmse": False,
        "energy_mae_per_atom_eV": True,
        "force_cosine": False,
        "stress_rel_error": None,
    }
    assert {row["scope"] for row in rows} == {TEST_SPLIT}
    assert failed_gates(rows) == ["force_rel_rmse 0.05 > 0.03", "force_cosine 0.9 < 0.95"]


def used_student_metrics() -> dict:
    """A run that passes on its test split and fails where it is used: one target temperature, one
    timed system's errors, the speed-up on all cores at the larger size, one NVT run."""
    return {
        "force_rel_rmse": 0.02,
        "accuracy_by_target": [
            {"target": "water", "temperature_K": 300.0, "force_rel_rmse": 0.025},
            {"target": "water", "temperature_K": 350.0, "force_rel_rmse": 0.04},
        ],
        "speed": [
            {"system": "water", "n_atoms": 63, "force_rel_rmse": 0.02, "speedup": 20.0},
            {
                "system": "water",
                "n_atoms": 504,
                "force_rel_rmse": 0.02,
                "speedup": 12.0,
                "all_cores_speedup": 8.0,
                "all_cores_threads": 2,
            },
            {"system": "box", "n_atoms": 512, "force_rel_rmse": 1.5, "speedup": 30.0},
        ],
        "target_nvt": [
            {"target": "water", "temperature_K": 350.0, "blew_up": False, "rdf_integrated_abs_difference": 0.03},
            {"target": "ice", "temperature_K": 250.0, "blew_up": True, "rdf_integrated_abs_difference": None},
        ],
    }


def test_gates_are_checked_where_the_student_is_used():
    rows = check_gates(
        used_student_metrics(),
        {
            "force_rel_rmse": 0.03,
            "speedup_over_fastest_teacher": 10.0,
            "student_nvt_blow_ups": 0,
            "rdf_integrated_abs_difference": 0.02,
        },
    )
    by_place = {(row["metric"], row["scope"]): row["passed"] for row in rows}
    assert by_place == {
        ("force_rel_rmse", TEST_SPLIT): True,
        ("force_rel_rmse", "water at 300 K"): True,
        ("force_rel_rmse", "water at 350 K"): False,
        ("force_rel_rmse", "timed water, 63 atoms"): True,
        ("force_rel_rmse", "timed water, 504 atoms"): True,
        ("force_rel_rmse", "timed box, 512 atoms"): False,
        ("speedup_over_fastest_teacher", "timed water, 63 atoms, one thread"): True,
        ("speedup_over_fastest_teacher", "timed water, 504 atoms, one thread"): True,
        ("speedup_over_fastest_teacher", "timed water, 504 atoms, 2 threads"): False,
        ("speedup_over_fastest_teacher", "timed box, 512 atoms, one thread"): True,
        ("student_nvt_blow_ups", "the student's NVT of the targets"): False,
        ("rdf_integrated_abs_difference", "the student's NVT of water at 350 K"): False,
        ("rdf_integrated_abs_difference", "the student's NVT of ice at 250 K"): None,  # blew up: no g(r)
    }
    assert "force_rel_rmse 0.04 > 0.03 (water at 350 K)" in failed_gates(rows)
    assert gate_verdict(rows) == (
        "FAILED: force_rel_rmse 1.5 > 0.03 (timed box, 512 atoms), failed in 2 of 6 places; "
        "speedup_over_fastest_teacher 8 < 10 (timed water, 504 atoms, 2 threads), failed in 1 of 4 places; "
        "student_nvt_blow_ups 1 > 0 (the student's NVT of the targets), failed in 1 of 1 places; "
        "rdf_integrated_abs_difference 0.03 > 0.02 (the student's NVT of water at 350 K), failed in 1 of 1 places"
    )
    summary = {row["metric"]: (row["n_failed"], row["n_places"], row["passed"]) for row in gate_summary(rows)}
    assert summary == {
        "force_rel_rmse": (2, 6, False),
        "speedup_over_fastest_teacher": (1, 4, False),
        "student_nvt_blow_ups": (1, 1, False),
        "rdf_integrated_abs_difference": (1, 1, False),
    }


def test_gates_pass_everywhere_and_are_not_evaluated_where_nothing_was_measured():
    metrics = used_student_metrics()
    rows = check_gates(metrics, {"force_rel_rmse": 2.0, "speedup_over_fastest_teacher": 5.0, "stress_rel_error": 0.05})
    assert gate_verdict(rows) == "passed"
    stress = [row for row in rows if row["metric"] == "stress_rel_error"]
    assert stress == [
        {
            "metric": "stress_rel_error",
            "scope": TEST_SPLIT,
            "threshold": 0.05,
            "bound": "max",
            "value": None,
            "passed": None,
        }
    ]
    del metrics["target_nvt"]  # no NVT of targets (a run without targets): not evaluated
    nvt = check_gates(metrics, {"student_nvt_blow_ups": 0})
    assert [(row["scope"], row["passed"]) for row in nvt] == [("the student's NVT of the targets", None)]
    assert gate_summary(nvt)[0]["passed"] is None and gate_verdict(nvt) == "passed"


def test_gate_metrics_for_mlflow_and_the_judged_metrics_file():
    rows = [
        {"metric": "force_rel_rmse", "bound": "max", "threshold": 0.03, "value": 0.01, "passed": True},
        {"metric": "force_rel_rmse", "bound": "max", "threshold": 0.03, "value": 0.2, "passed": False},
        {"metric": "energy_mae_per_atom_eV", "bound": "max", "threshold": 0.002, "value": 0.001, "passed": True},
        {"metric": "stress_rel_error", "bound": "max", "threshold": 0.05, "value": None, "passed": None},
    ]
    assert gate_metrics(rows) == {"gate.force_rel_rmse": 0.0, "gate.energy_mae_per_atom_eV": 1.0}
    measured = used_student_metrics()
    judged = judged_metrics(measured, {"force_rel_rmse": 0.03}, strict=True)
    assert {k: judged[k] for k in measured} == measured and "gates" not in measured  # measurements untouched
    assert judged["gates_passed"] is False and judged["strict"] is True
    assert judged["gates"] == check_gates(measured, {"force_rel_rmse": 0.03})
    assert judged_metrics(measured, {"force_rel_rmse": None}, strict=False)["gates_passed"] is None  # no gate set
