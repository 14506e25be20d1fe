"""Choice of the CPU inference path (small pairwise-potential model); tune-stage graphs and tuned-kernel records."""

import json
import math

import numpy as np
import pytest
import torch

from mlff_distill.reference.edge_message import edge_message_torch
from mlff_distill.sampling.boxes import cpu_timing_structures
from mlff_distill.student.inference_path import (
    _mismatch,
    choose_cpu_path,
    layer_inputs,
    sample_graphs,
    time_callable,
    tune,
)
from mlff_distill.student.model import StudentPotential
from mlff_distill.student.tuned_kernels import load_tuned_kernels, tuned_configs_from_record


def small_student() -> StudentPotential:
    torch.manual_seed(0)
    return StudentPotential(species=(1, 6, 8), cutoff_A=3.0, n_features=8, n_radial=4).eval()


def one_layer_student() -> StudentPotential:
    """The student of test_model.py's compiled-calculator test (one interaction layer: quick to
    compile); in one test session the second compilation of its periodic graph is a cache hit."""
    torch.manual_seed(1)
    return StudentPotential(species=(1, 6, 8, 14), n_features=8, n_interactions=1).eval()


def structures() -> list:
    """Two molecules and a periodic box: one structure per calculator call, as the CPU path is timed."""
    from ase.build import molecule

    box = molecule("CH3CH2OH")
    box.cell, box.pbc = [6.0, 6.5, 7.0], True
    box.positions += 2.0
    return [molecule("H2O"), molecule("CH3CHO"), box]


def assert_timings(timings: dict, repeats: int) -> None:
    assert len(timings["times_s"]) == repeats
    assert all(math.isfinite(t) and t > 0 for t in timings["times_s"])
    assert timings["min_s"] <= timings["median_s"]


def test_time_callable_excludes_warmup() -> None:
    calls = []
    timings = time_callable(lambda: calls.append(1), repeats=4, warmup=2)
    assert len(calls) == 6
    assert_timings(timings, 4)


def test_choose_cpu_path_eager_only() -> None:
    record = choose_cpu_path(small_student(), structures(), try_compile=False, repeats=3)
    assert record["device"] == "cpu" and record["chosen_path"] == "eager"
    assert record["cuda_available"] is torch.cuda.is_available()
    assert record["n_atoms"] == [3, 7, 9]
    assert_timings(record["paths"]["eager"], 3)
    assert len(record["paths"]["eager"]["per_structure_ms"]) == 3
    assert "skipped" in record["paths"]["torch_compile"]


@pytest.mark.slow  # compiles for molecules and for periodic systems (tens of seconds with a cold cache)
def test_choose_cpu_path_with_torch_compile() -> None:
    record = choose_cpu_path(one_layer_student(), structures(), try_compile=True, repeats=3)
    compiled = record["paths"]["torch_compile"]
    assert "error" not in compiled, compiled
    assert_timings(compiled, 3)
    assert compiled["first_call_s"] > 0
    assert record["chosen_path"] in ("eager", "torch_compile")


def test_compile_mismatch_is_named() -> None:
    reference = [{"energy": np.array(-50.0), "forces": np.array([[10.0, 0, 0], [-10.0, 0, 0]])}]
    assert _mismatch(reference, reference) is None
    rounded = [{"energy": np.array(-50.0), "forces": reference[0]["forces"] + 6e-4}]  # float32 sums
    assert _mismatch(rounded, reference) is None
    wrong = [{"energy": np.array(-50.0), "forces": reference[0]["forces"] + 0.05}]
    assert _mismatch(wrong, reference) == "structure 0: forces differs by up to 0.05 (largest value 10)"


# ---- tune stage helpers: graphs from the run's data, the tuned-kernel record ----


def water_labels(n_structures: int):
    """``n_structures`` water molecules (3 atoms each) with zero labels."""
    from ase.build import molecule

    from mlff_distill.data import LabeledArrays

    water = molecule("H2O")
    m = 3 * n_structures
    return LabeledArrays(
        numbers=np.tile(water.numbers, n_structures),
        positions_A=np.tile(water.positions, (n_structures, 1)),
        forces_eV_per_A=np.zeros((m, 3)),
        energy_eV=np.zeros(n_structures),
        atoms_ptr=np.arange(0, m + 1, 3),
        cell_A=np.zeros((n_structures, 3, 3)),
        pbc=np.zeros((n_structures, 3), dtype=bool),
    )


def test_sample_graphs_reach_each_size() -> None:
    graphs = sample_graphs(water_labels(4), [1, 7, 20])
    assert [len(g["numbers"]) for g in graphs] == [3, 9, 21]
    assert [len(g["atoms_ptr"]) - 1 for g in graphs] == [1, 3, 7]
    with pytest.raises(ValueError, match="atom counts must be >= 1, got 0"):
        sample_graphs(water_labels(2), [0])


def test_layer_inputs_are_the_graph_edges() -> None:
    model = StudentPotential(species=(1, 8), cutoff_A=3.0, n_features=6, n_radial=4, n_interactions=2)
    graph = sample_graphs(water_labels(2), [6])[0]
    inputs = layer_inputs(model, graph, seed=0)
    assert inputs["src"].numel() == 2 * 6  # 6 ordered pairs per molecule; molecules of a batch never interact
    assert inputs["radial_weight"].shape == (4, 18) and inputs["phi"].shape == (6, 18)
    torch.testing.assert_close(inputs["radial_weight"], model.radial_filter.weight[:18].detach().T)
    ds, dv = edge_message_torch(**inputs)
    assert ds.shape == (6, 6) and dv.shape == (6, 3, 6)


def gpu_record(gpu_name: str) -> dict:
    config = {"BLOCK_E": 64, "BLOCK_F": 32, "num_warps": 4, "num_stages": 2}
    return {
        "cuda_available": True,
        "chosen_path": "triton",
        "reason": "tuned",
        "triton": {
            "gpus": {
                gpu_name: {
                    "n_features": 64,
                    "buckets": {"1024": {"forward_config": config, "backward_config": {**config, "BLOCK_E": 32}}},
                }
            }
        },
    }


def test_tuned_configs_from_record() -> None:
    configs = tuned_configs_from_record(gpu_record("NVIDIA H100 80GB HBM3"), "NVIDIA H100 80GB HBM3")
    assert set(configs) == {("forward", 1024, 64), ("backward", 1024, 64)}
    assert configs[("backward", 1024, 64)].kwargs == {"BLOCK_E": 32, "BLOCK_F": 32}
    assert configs[("forward", 1024, 64)].num_stages == 2
    assert tuned_configs_from_record(gpu_record("NVIDIA H100 80GB HBM3"), "NVIDIA A100-SXM4-40GB") == {}
    assert tuned_configs_from_record({"triton": "not autotuned: no CUDA GPU"}, "any") == {}


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU branch of load_tuned_kernels")
def test_load_tuned_kernels_without_cuda(tmp_path) -> None:
    gpu_file, cpu_file, bad_file = tmp_path / "gpu.json", tmp_path / "cpu.json", tmp_path / "bad.json"
    gpu_file.write_text(json.dumps(gpu_record("NVIDIA H100 80GB HBM3")))
    cpu_file.write_text(json.dumps({"cuda_available": False, "chosen_path": "torch_compile", "reason": "faster"}))
    bad_file.write_text(json.dumps({"chosen_path": "fortran"}))
    assert load_tuned_kernels(gpu_file)["chosen_path"] == "eager"
    assert load_tuned_kernels(cpu_file) == {"chosen_path": "torch_compile", "installed_configs": 0, "note": "faster"}
    with pytest.raises(ValueError, match="chosen_path must be triton, eager or torch_compile, got 'fortran'"):
        load_tuned_kernels(bad_file)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU record")
def test_tune_record_without_cuda() -> None:
    model = StudentPotential(species=(1, 8), cutoff_A=3.0, n_features=6, n_radial=4, n_interactions=2)
    data = water_labels(3)
    cpu_structures = cpu_timing_structures(data, [64], model.cutoff_A)
    record = tune(model.eval(), data, try_compile=False, repeats=2, graph_atoms=[64], cpu_structures=cpu_structures)
    assert record["cuda_available"] is False and record["chosen_path"] == "eager"
    assert "no CUDA GPU" in record["triton"] and len(record["n_atoms"]) == 4
    assert record["n_atoms"][:3] == [3, 3, 3] and abs(record["n_atoms"][3] - 64) <= 3
    assert len(record["paths"]["eager"]["times_s"]) == 2
