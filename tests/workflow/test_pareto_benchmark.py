"""benchmarks/student_pareto.py: students of several sizes trained on the tiny run's labels, each
tested and timed beside the teacher's fastest implementation, and the front they make."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def pareto():
    sys.path.insert(0, str(BENCHMARKS))  # the script imports its sibling student_speed, as when run
    spec = importlib.util.spec_from_file_location("student_pareto", BENCHMARKS / "student_pareto.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    sys.path.remove(str(BENCHMARKS))


def test_front_keeps_only_points_nothing_beats(pareto):
    points = [
        {"student_ms": 1.0, "force_rel_rmse": 0.20},
        {"student_ms": 2.0, "force_rel_rmse": 0.10},
        {"student_ms": 3.0, "force_rel_rmse": 0.15},  # slower and worse than the second
        {"student_ms": 2.0, "force_rel_rmse": 0.10},  # a tie is not beaten
    ]
    assert pareto.pareto_front(points) == [True, True, False, True]
    assert pareto.parse_size("32,2,8,3.5") == {"n_features": 32, "n_interactions": 2, "n_radial": 8, "cutoff_A": 3.5}
    assert pareto.parse_size("32,1,8,4.0,3,16") == {
        "n_features": 32,
        "n_interactions": 1,
        "n_radial": 8,
        "cutoff_A": 4.0,
        "angular_order": 3,
        "angular_channels": 16,
    }


def test_benchmark_trains_tests_and_times_each_size(pareto, tiny_run, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFF_DISTILL_CACHE", str(tiny_run.cache))  # the teacher the tiny run built
    store = tiny_run.run_dir / "round1" / "label" / "labels.zarr"
    out = tmp_path / "pareto.json"
    sizes = ["--sizes", "8,1,4,3.5", "16,1,4,4.0,2,4"]  # eager: torch.compile is tested elsewhere, and costs minutes
    sampled = tiny_run.run_dir / "sample" / "structures.extxyz"  # its teacher MD calibrates the energies
    argv = ["--store", str(store), "--sampled", str(sampled), *sizes, "--minutes", "0.05", "--atoms", "64", "--eager"]
    report = pareto.main([*argv, "--repeats", "1", "--out", str(out), "--mlflow-uri", "none"])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert out.with_suffix(".png").stat().st_size > 10_000
    assert set(report["teacher_ms"]) == {"fennol", "fennol-skin", "torchani-2.9-cell-list"} and not report["compiled"]
    assert report["energies_calibrated_on"] == str(sampled.resolve())
    sizes = [point["size"] for point in report["points"]]
    assert sizes == ["8,1,4,3.5", "16,1,4,4.0,2,4"] and any(point["on_front"] for point in report["points"])
    for point in report["points"]:
        assert 0 < point["force_rel_rmse"] < 10 and point["student_ms"] > 0 and point["epochs"] >= 1
        assert 0 < point["energy_mae_per_atom_eV"] < 1 and len(point["reference_shift_eV"]) == 4  # H, C, N, O
    small, large = report["points"]
    assert small["n_parameters"] < large["n_parameters"] and large["angular_order"] == 2
