"""The end-of-run summary and the acceptance gates' verdict, in Python and through the workflow's acceptance rule."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mlff_distill.evaluation.summary import GatesFailedError, check_acceptance, summary_text


def test_summary_names_teacher_student_error_speedup_and_gates(tmp_path):
    metrics = {
        "teacher": "fennol-pmc/ani1x",
        "student": "StudentPotential (100 parameters)",
        "n_test": 7,
        "force_rel_rmse": 0.0512,
        "energy_mae_per_atom_eV": 0.0021,
        "speedup": 12.34,
        "teacher_s_per_structure": 0.01,
        "student_s_per_structure": 0.00081,
        "inference_path": "eager",
        "speed": [{"n_atoms": 64, "speedup": 14.04, "force_rel_rmse": 0.021}, {"n_atoms": 511, "speedup": 30.0}],
        "gates": [{"metric": "force_rel_rmse", "threshold": 0.03, "bound": "max", "value": 0.0512, "passed": False}],
    }
    (tmp_path / "evaluate").mkdir()
    path = tmp_path / "evaluate" / "metrics.json"
    path.write_text(json.dumps(metrics))
    text = summary_text(path)
    for expected in (
        "fennol-pmc/ani1x",
        "StudentPotential",
        "5.12 %",
        "12.3x",
        str(tmp_path),
        "14.0x (2.1 %) / accuracy not measured at 64 / 511 atoms",
        "FAILED: force_rel_rmse 0.0512 > 0.03",
    ):
        assert expected in text
    assert "teacher symmetry" not in text
    assert "30.0x" not in text  # a speed-up without the student's accuracy on that system is not shown
    # a teacher that breaks rotational symmetry is named, with the floor it sets
    metrics["teacher_rotation"] = {"force_rel_change": 1.04, "invariant_student_floor": 0.52, "n_structures": 10}
    path.write_text(json.dumps(metrics))
    assert "forces change by 104.0 % when structures are rotated" in summary_text(path)
    assert "below about 52.0 %" in summary_text(path)


def test_summary_and_report_show_each_round_and_one_ensemble_member(tmp_path):
    from mlff_distill.evaluation.report import build_report

    metrics = {
        "teacher": "ani1x",
        "student": "StudentPotential",
        "n_test": 7,
        "force_rel_rmse": 0.05,
        "energy_mae_per_atom_eV": 0.002,
        "speedup": 12.0,
        "teacher_s_per_structure": 0.01,
        "student_s_per_structure": 0.001,
        "inference_path": "eager",
        "speed": [
            {
                "n_atoms": 64,
                "teacher_ms": 30.0,
                "student_ms": 2.0,
                "speedup": 15.0,
                "force_rel_rmse": 0.05,
                "member_ms": 12.0,
                "student_speedup_over_member": 6.0,
                "member_force_rel_rmse": 0.07,
            },
        ],
        "ensemble_member": {
            "member": "ani1x member 1 of 8",
            "force_rel_rmse": 0.071,
            "energy_mae_per_atom_eV": 0.003,
            "student_more_accurate": True,
            "student_faster_at_every_size": True,
        },
    }
    (tmp_path / "evaluate").mkdir()
    path = tmp_path / "evaluate" / "metrics.json"
    path.write_text(json.dumps(metrics))
    assert "test error by round" not in summary_text(path)  # one round: no line
    metrics["rounds"] = [
        {"round": 0, "force_rel_rmse": 0.135, "energy_mae_per_atom_eV": 0.00177},
        {"round": 1, "force_rel_rmse": 0.05, "energy_mae_per_atom_eV": 0.002},
    ]
    path.write_text(json.dumps(metrics))
    assert "test error by round:   0: 13.50 %, 1.77 meV/atom; 1: 5.00 %, 2.00 meV/atom" in summary_text(path)
    assert (
        "limited by" not in summary_text(path)
        and "What limits the student"
        not in build_report(tmp_path / "report.html", metrics, {}, {"name": "ani1x"}, {}, {}).read_text()
    )
    metrics["training_fit"] = {
        "n_train": 80,
        "train_force_rel_rmse": 0.1104,
        "n_test": 40,
        "test_force_rel_rmse": 0.1239,
        "test_over_train": 1.122,
        "limited_by": "the student",
    }
    path.write_text(json.dumps(metrics))
    assert "limited by:            the student (force error 11.04 % on the targets' teacher MD" in summary_text(path)
    fit_paragraph = build_report(tmp_path / "report.html", metrics, {}, {"name": "ani1x"}, {}, {}).read_text()
    assert "on the 80 teacher-MD frames of the targets in the training split" in fit_paragraph
    assert "12.39 % (1.12 times as much): it fits the frames it learned from hardly better" in fit_paragraph
    line = next(line for line in summary_text(path).splitlines() if "ensemble member" in line)
    assert "7.10 %" in line and "5.00 %" in line and "6.0x" in line and "more accurate and faster everywhere" in line
    report = build_report(tmp_path / "report.html", metrics, {}, {"name": "ani1x"}, {}, {}).read_text()
    assert "One member of the ensemble" in report and "ani1x member 1 of 8" in report
    assert "one ensemble member, fastest (ms)" in report and "Each round's student" in report


def test_summary_has_a_line_per_target_for_accuracy_speed_and_nvt(tmp_path):
    metrics = {
        "teacher": "ani1x",
        "student": "StudentPotential",
        "n_test": 30,
        "force_rel_rmse": 0.03,
        "energy_mae_per_atom_eV": 0.001,
        "speedup": 10.0,
        "teacher_s_per_structure": 0.01,
        "student_s_per_structure": 0.001,
        "inference_path": "eager",
        "accuracy_by_target": [
            {
                "target": "water",
                "temperature_K": 300.0,
                "n_structures": 10,
                "force_rel_rmse": 0.0251,
                "energy_mae_per_atom_eV": 0.0012,
            },
            {
                "target": None,
                "temperature_K": None,
                "n_structures": 20,
                "force_rel_rmse": 0.04,
                "energy_mae_per_atom_eV": 0.002,
            },
        ],
        "speed": [
            {"target": "water", "n_atoms": 96, "speedup": 12.0, "force_rel_rmse": 0.026, "all_cores_speedup": 9.0},
            {"target": "water", "n_atoms": 768, "speedup": 25.0, "all_cores_speedup": 26.0},
            {
                "target": "si",
                "n_atoms": 64,
                "speedup": 8.0,
                "force_rel_rmse": 0.05,
                "all_cores_speedup": 7.5,
                "all_cores_threads": 2,
                "all_cores_student_fastest": "exported package, 2 threads",
            },
        ],
        "target_nvt": [
            {
                "target": "water",
                "temperature_K": 350.0,
                "time_ps": 5.0,
                "blew_up": False,
                "reason": None,
                "conserved_drift_eV_per_atom_per_ps": 2e-5,
                "rdf_integrated_abs_difference": 0.041,
                "rdf_teacher_halves_difference": 0.03,
            },
            {
                "target": "si",
                "temperature_K": 900.0,
                "time_ps": 1.25,
                "blew_up": True,
                "reason": "force of 120.0 eV/A",
                "conserved_drift_eV_per_atom_per_ps": 0.1,
                "rdf_integrated_abs_difference": None,
                "rdf_teacher_halves_difference": None,
            },
        ],
    }
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(metrics))
    text = summary_text(path)
    for expected in (
        "  water 300 K:           force error 2.51 %, energy MAE 1.20 meV/atom (10 test structures)",
        "  speed-up, water:       12.0x (2.6 %) / accuracy not measured at 96 / 768 atoms",
        "  speed-up, si:          8.0x (5.0 %) at 64 atoms",
        "                         7.5x on all 2 cores (the student as: exported package, 2 threads)",
        "  NVT water 350 K:       5 ps, drift 2.0e-05 eV/atom/ps, g(r) difference 0.041 (teacher's halves 0.030)",
        "  NVT si 900 K:          blew up at 1.25 ps (force of 120.0 eV/A), drift 1.0e-01 eV/atom/ps",
    ):
        assert expected in text
    assert "25.0x" not in text and "26.0x" not in text and "None" not in text


def test_acceptance_fails_only_when_strict(tmp_path):
    metrics = tmp_path / "metrics.json"
    metrics.write_text(
        json.dumps(
            {
                "gates": [
                    {"metric": "force_rel_rmse", "threshold": 0.03, "bound": "max", "value": 0.2, "passed": False},
                    {"metric": "stress_rel_error", "threshold": 0.05, "bound": "max", "value": None, "passed": None},
                ]
            }
        )
    )
    verdict, log = tmp_path / "acceptance.json", tmp_path / "logs" / "acceptance.log"
    check_acceptance(metrics, False, verdict, log)
    assert json.loads(verdict.read_text())["failed"] == ["force_rel_rmse 0.2 > 0.03"]
    verdict.unlink()
    with pytest.raises(GatesFailedError, match="force_rel_rmse 0.2 > 0.03"):
        check_acceptance(metrics, True, verdict, log)
    assert not verdict.exists() and "failed" in log.read_text()


def test_strict_acceptance_rule_fails_and_keeps_metrics_and_report(tmp_path):
    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "results" / "x" / "evaluate"
    out.mkdir(parents=True)
    (out / "metrics.json").write_text(
        json.dumps(
            {"gates": [{"metric": "force_rel_rmse", "threshold": 0.03, "bound": "max", "value": 0.2, "passed": False}]}
        )
    )
    (out / "report.html").write_text("<html></html>")
    config = tmp_path / "strict.yaml"
    config.write_text(f"run_name: x\nresults_dir: {tmp_path / 'results'}\nevaluate:\n  strict: true\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--cores",
            "1",
            "--configfile",
            str(config),
            "--allowed-rules",
            "acceptance",
            "--",
            str(out / "acceptance.json"),
        ],
        cwd=root,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert (
        "acceptance gates FAILED: force_rel_rmse 0.2 > 0.03, failed in 1 of 1 places" in result.stdout + result.stderr
    )
    assert (out / "metrics.json").is_file() and (out / "report.html").is_file()
    assert not (out / "acceptance.json").exists()
