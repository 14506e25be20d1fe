"""Logic of the ``tune`` stage: pick the fastest correct inference path and autotune the Triton kernels.

No MLflow and no Snakemake here; the stage wrapper records what these functions return.
Timings are in seconds unless a key says ``_ms``.
"""

import statistics
import time
from collections.abc import Callable

import torch

BATCH_KEYS = ("numbers", "positions_A", "cell_A", "pbc", "atoms_ptr")


def cuda_available() -> bool:
    """Whether PyTorch sees a CUDA device."""
    return torch.cuda.is_available()


def time_callable(fn: Callable[[], object], repeats: int, warmup: int) -> dict:
    """Wall time of ``fn()`` with `time.perf_counter`: ``{"median_s", "min_s", "times_s"}``, warm-up calls excluded.

    ``fn`` must itself synchronize if it launches asynchronous (CUDA) work.
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "times_s": times}


def _energy_forces(model: Callable, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Energies ``[B]`` (eV) and forces ``[N, 3]`` (eV/Angstrom, minus the energy gradient) of one batch."""
    positions_A = batch["positions_A"].detach().requires_grad_(True)
    energy = model(batch["numbers"], positions_A, batch["cell_A"], batch["pbc"], batch["atoms_ptr"])
    (grad,) = torch.autograd.grad(energy.sum(), positions_A)
    return energy.detach(), -grad


def _all_energy_forces(model: Callable, batches: list[dict]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`_energy_forces` of every batch."""
    return [_energy_forces(model, batch) for batch in batches]


def _mismatch(results: list[tuple[torch.Tensor, torch.Tensor]],
              reference: list[tuple[torch.Tensor, torch.Tensor]]) -> str | None:
    """None if ``results`` equal ``reference`` within float32 tolerance, else the first difference."""
    try:
        for result, expected in zip(results, reference, strict=True):
            for name, got, want in zip(("energy", "forces"), result, expected):
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
    except AssertionError as error:
        return str(error)
    return None


def choose_cpu_path(model: torch.nn.Module, batches: list[dict], try_compile: bool, repeats: int) -> dict:
    """Time energy+forces over ``batches`` in eager mode and (if ``try_compile``) with `torch.compile`.

    Each batch holds the tensors ``numbers, positions_A, cell_A, pbc, atoms_ptr`` of the model's
    forward signature. A compile failure or a result differing from eager beyond float32 tolerance
    is recorded as ``{"error": ...}`` (not tried: ``{"skipped": ...}``) and eager is kept.
    The faster working path is chosen.
    """
    batches = [{key: batch[key] for key in BATCH_KEYS} for batch in batches]
    eager_results = _all_energy_forces(model, batches)
    paths = {"eager": time_callable(lambda: _all_energy_forces(model, batches), repeats, warmup=1)}
    chosen, reason = "eager", "torch.compile not tried"
    if not try_compile:
        paths["torch_compile"] = {"skipped": "try_compile=False"}
    else:
        try:
            compiled = torch.compile(model, dynamic=True)
            start = time.perf_counter()
            compiled_results = _all_energy_forces(compiled, batches)
            compile_s = time.perf_counter() - start
            mismatch = _mismatch(compiled_results, eager_results)
            if mismatch is not None:
                raise ValueError(f"torch.compile results differ from eager: {mismatch}")
            paths["torch_compile"] = {
                "first_call_s": compile_s,
                **time_callable(lambda: _all_energy_forces(compiled, batches), repeats, warmup=1),
            }
        except Exception as error:  # any compile/runtime failure means: fall back to eager
            paths["torch_compile"] = {"error": f"{type(error).__name__}: {error}"}
            reason = "torch.compile failed or differed from eager; eager kept"
        else:
            eager_s, compiled_s = paths["eager"]["median_s"], paths["torch_compile"]["median_s"]
            if compiled_s < eager_s:
                chosen = "torch_compile"
            reason = f"{chosen} is faster (median eager {eager_s:.3g} s, torch.compile {compiled_s:.3g} s)"
    return {
        "device": "cpu",
        "cuda_available": cuda_available(),
        "paths": paths,
        "chosen_path": chosen,
        "reason": reason,
    }


def autotune_triton_on_gpu(distance_samples: list[torch.Tensor], n_radial: int, cutoff_A: float) -> dict:
    """Autotune the Bessel x cosine kernels on CUDA for each edge-count bucket of ``distance_samples``.

    ``distance_samples`` are edge-distance tensors (Angstrom) from the real dataset. Returns the GPU
    name, Triton version and per bucket the chosen forward/backward configs and timings (ms, median of
    `triton.testing.do_bench`) of the Triton kernels vs the PyTorch reference.
    """
    if not cuda_available():
        raise RuntimeError("autotune_triton_on_gpu needs a CUDA device")
    import triton
    import triton.testing

    from mlff_distill.kernels import bessel_cosine as kernels
    from mlff_distill.student.radial import bessel_cosine_basis

    def bench_ms(fn: Callable[[], object]) -> float:
        return triton.testing.do_bench(fn, return_mode="median")

    buckets = {}
    for sample in distance_samples:
        r = sample.detach().to("cuda", torch.float32).reshape(-1).contiguous().requires_grad_(True)
        if r.numel() == 0:
            continue
        grad_out = torch.randn(r.numel(), n_radial, device="cuda")
        basis = kernels.bessel_cosine_basis_triton(r, n_radial, cutoff_A)
        forward_config = kernels.bessel_cosine_fwd_autotuned.best_config
        (grad_r,) = torch.autograd.grad(basis, r, grad_out)
        backward_config = kernels.bessel_cosine_bwd_autotuned.best_config
        reference = bessel_cosine_basis(r, n_radial, cutoff_A)
        (reference_grad_r,) = torch.autograd.grad(reference, r, grad_out)
        buckets[str(kernels.edge_bucket(r.numel()))] = {
            "n_edges": r.numel(),
            "forward_config": kernels.config_dict(forward_config),
            "backward_config": kernels.config_dict(backward_config),
            "max_abs_error_forward": (basis - reference).abs().max().item(),
            "max_abs_error_backward": (grad_r - reference_grad_r).abs().max().item(),
            "triton_forward_ms": bench_ms(lambda: kernels.bessel_cosine_basis_triton(r, n_radial, cutoff_A)),
            "torch_forward_ms": bench_ms(lambda: bessel_cosine_basis(r, n_radial, cutoff_A)),
            "triton_forward_backward_ms": bench_ms(lambda: torch.autograd.grad(
                kernels.bessel_cosine_basis_triton(r, n_radial, cutoff_A), r, grad_out)),
            "torch_forward_backward_ms": bench_ms(lambda: torch.autograd.grad(
                bessel_cosine_basis(r, n_radial, cutoff_A), r, grad_out)),
        }
    return {
        "gpu_name": torch.cuda.get_device_name(),
        "triton_version": triton.__version__,
        "torch_version": torch.__version__,
        "n_radial": n_radial,
        "cutoff_A": cutoff_A,
        "buckets": buckets,
    }
