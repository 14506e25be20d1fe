"""Choice of the CPU inference path (small pairwise-potential model); tune-stage graphs and tuned-kernel records."""

import json
import math
import os

import numpy as np
import pytest
import torch

from mlff_distill.inference_path import (
    choose_cpu_path,
    layer_inputs,
    load_tuned_kernels,
    time_callable,
    tuned_configs_from_record,
)
from mlff_distill.student.edge_message import edge_message_torch
from mlff_distill.student.model import StudentPotential
from mlff_distill.tune import sample_graphs, tune


class PairPotential(torch.nn.Module):
    """Lennard-Jones energy (eV) over all atom pairs of each structure; per-element well depth."""

    def __init__(self, n_elements: int = 10, sigma_A: float = 1.0) -> None:
        super().__init__()
        self.log_epsilon = torch.nn.Parameter(torch.linspace(-1.0, 0.0, n_elements))
        self.sigma_A = sigma_A

    def forward(self, numbers: torch.Tensor, positions_A: torch.Tensor, cell_A: torch.Tensor, pbc: torch.Tensor,
                atoms_ptr: torch.Tensor) -> torch.Tensor:
        """Energies ``[B]``; ``atoms_ptr`` ``[B+1]`` are atom offsets. Non-periodic: cell and pbc are unused."""
        n_atoms = positions_A.shape[0]
        structure = torch.searchsorted(atoms_ptr, torch.arange(n_atoms), right=True) - 1
        pair = (structure[:, None] == structure[None, :]) & ~torch.eye(n_atoms, dtype=torch.bool)
        delta = positions_A[:, None, :] - positions_A[None, :, :]
        distance_A = torch.sqrt((delta**2).sum(-1) + (~pair).to(positions_A.dtype))  # 1 off-pair: no 0/0
        epsilon = torch.exp(self.log_epsilon[numbers])
        s6 = (self.sigma_A / distance_A) ** 6
        pair_energy = 4.0 * torch.sqrt(epsilon[:, None] * epsilon[None, :]) * (s6 * s6 - s6)
        atom_energy = 0.5 * torch.where(pair, pair_energy, torch.zeros_like(pair_energy)).sum(-1)
        return torch.zeros(atoms_ptr.numel() - 1, dtype=positions_A.dtype).index_add(0, structure, atom_energy)


def make_batch(sizes: list[int], seed: int) -> dict:
    """Structures of ``sizes`` atoms on a jittered 1.5 Angstrom grid."""
    generator = torch.Generator().manual_seed(seed)
    positions = []
    for size in sizes:
        grid = torch.stack(torch.meshgrid(*[torch.arange(3.0)] * 3, indexing="ij"), -1).reshape(-1, 3)[:size]
        positions.append(1.5 * grid + 0.1 * torch.randn(size, 3, generator=generator))
    return {
        "numbers": torch.randint(1, 10, (sum(sizes),), generator=generator),
        "positions_A": torch.cat(positions),
        "cell_A": torch.zeros(len(sizes), 3, 3),
        "pbc": torch.zeros(len(sizes), 3, dtype=torch.bool),
        "atoms_ptr": torch.tensor([0, *torch.tensor(sizes).cumsum(0).tolist()]),
    }


BATCHES = [make_batch([5, 8], seed=0), make_batch([7, 3, 6], seed=1)]


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
    record = choose_cpu_path(PairPotential(), BATCHES, try_compile=False, repeats=3)
    assert record["device"] == "cpu" and record["chosen_path"] == "eager"
    assert record["cuda_available"] is torch.cuda.is_available()
    assert_timings(record["paths"]["eager"], 3)
    assert "skipped" in record["paths"]["torch_compile"]


@pytest.mark.skipif(os.environ.get("MLFF_DISTILL_SLOW_TESTS") != "1", reason="set MLFF_DISTILL_SLOW_TESTS=1")
def test_choose_cpu_path_with_torch_compile() -> None:
    record = choose_cpu_path(PairPotential(), BATCHES, try_compile=True, repeats=3)
    compiled = record["paths"]["torch_compile"]
    if "error" in compiled:
        assert record["chosen_path"] == "eager"
    else:
        assert_timings(compiled, 3)
        assert compiled["first_call_s"] > 0
        assert record["chosen_path"] in ("eager", "torch_compile")


# ---- tune stage helpers: graphs from the run's data, the tuned-kernel record ----

def water_labels(n_structures: int):
    """``n_structures`` water molecules (3 atoms each) with zero labels."""
    from ase.build import molecule

    from mlff_distill.data import LabeledArrays

    water = molecule("H2O")
    m = 3 * n_structures
    return LabeledArrays(
        numbers=np.tile(water.numbers, n_structures), positions_A=np.tile(water.positions, (n_structures, 1)),
        forces_eV_per_A=np.zeros((m, 3)), energy_eV=np.zeros(n_structures),
        atoms_ptr=np.arange(0, m + 1, 3), cell_A=np.zeros((n_structures, 3, 3)),
        pbc=np.zeros((n_structures, 3), dtype=bool))


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
    return {"cuda_available": True, "chosen_path": "triton", "reason": "tuned",
            "triton": {"gpus": {gpu_name: {"n_features": 64, "buckets": {
                "1024": {"forward_config": config, "backward_config": {**config, "BLOCK_E": 32}}}}}}}


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
    record = tune(model.eval(), water_labels(3), try_compile=False, repeats=2, graph_atoms=[64])
    assert record["cuda_available"] is False and record["chosen_path"] == "eager"
    assert "no CUDA GPU" in record["triton"] and record["n_sample_structures"] == 3
    assert len(record["paths"]["eager"]["times_s"]) == 2
