"""Choice of the CPU inference path on a small pairwise-potential model."""

import math
import os

import pytest
import torch

from mlff_distill.inference_path import choose_cpu_path, time_callable


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
