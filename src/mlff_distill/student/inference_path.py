"""The tune stage's logic: pick the fastest correct inference path of the student on this machine,
and autotune the Triton kernels on a CUDA GPU (`mlff_distill.student.tuned_kernels` installs the
result).

No MLflow and no Snakemake here; the stage records what these functions return.
Timings are in seconds unless a key says ``_ms``.
"""

from __future__ import annotations

import copy
import platform
import statistics
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import all_changes

from mlff_distill.data import LabeledArrays
from mlff_distill.reference.edge_message import edge_message_torch
from mlff_distill.student.calculator import StudentCalculator
from mlff_distill.student.fitting import structure_tensors
from mlff_distill.student.neighbours import edge_vectors


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


def calculator_results(calculator, structures: Sequence[Atoms]) -> list[dict[str, np.ndarray]]:
    """Energy (eV), forces (eV/Angstrom) and, for periodic structures, stress (eV/Angstrom^3) of
    every structure by ``calculator`` (an ASE calculator), one structure per call."""
    results = []
    for atoms in structures:
        properties = ["energy", "forces"] + (["stress"] if atoms.pbc.all() else [])
        calculator.calculate(atoms, properties, all_changes)
        results.append({name: np.asarray(calculator.results[name]) for name in properties})
    return results


def _mismatch(
    results: list[dict[str, np.ndarray]], reference: list[dict[str, np.ndarray]], relative_tolerance: float = 1e-3
) -> str | None:
    """None if ``results`` equal ``reference`` to float32 rounding, else the first difference.

    A quantity passes when its largest absolute difference is at most ``relative_tolerance``
    times its largest absolute reference value: summation order differs between eager and compiled
    kernels, and forces summed over many edges in float32 differ by 1e-5 to 1e-4 of their scale
    (seen: 6.4e-4 eV/A on forces up to about 10 eV/A at 512 atoms), while a wrong result differs
    by the order of the values themselves.
    """
    for index, (result, expected) in enumerate(zip(results, reference, strict=True)):
        for name, want in expected.items():
            error = float(np.max(np.abs(result[name] - want), initial=0.0))
            scale = float(np.max(np.abs(want), initial=0.0))
            if not error <= relative_tolerance * max(scale, 1e-6):
                return f"structure {index}: {name} differs by up to {error:.3g} (largest value {scale:.3g})"
    return None


def choose_cpu_path(model: torch.nn.Module, structures: Sequence[Atoms], try_compile: bool, repeats: int) -> dict:
    """Time the student's `StudentCalculator` over ``structures`` (energy, forces, and stress where
    periodic; one structure per call, as in MD) in eager PyTorch and, if ``try_compile``, with
    ``compiled=True`` (`torch.compile`).

    A compile failure or a result differing from eager beyond float32 tolerance is recorded as
    ``{"error": ...}`` (not tried: ``{"skipped": ...}``) and eager is kept. The path with the smaller
    median time for the whole set is chosen; per-structure medians are in ``per_structure_ms``.
    """

    def timed(calculator) -> dict:
        whole = time_callable(lambda: calculator_results(calculator, structures), repeats, warmup=1)
        each = [
            1e3 * time_callable(lambda a=atoms: calculator_results(calculator, [a]), repeats, 0)["median_s"]
            for atoms in structures
        ]
        return {**whole, "per_structure_ms": each}

    eager = StudentCalculator(model)
    eager_results = calculator_results(eager, structures)
    paths = {"eager": timed(eager)}
    chosen, reason = "eager", "torch.compile not tried"
    if not try_compile:
        paths["torch_compile"] = {"skipped": "try_compile=False"}
    else:
        try:
            compiled = StudentCalculator(model, compiled=True)
            start = time.perf_counter()
            compiled_results = calculator_results(compiled, structures)
            compile_s = time.perf_counter() - start
            mismatch = _mismatch(compiled_results, eager_results)
            if mismatch is not None:
                raise ValueError(f"torch.compile results differ from eager: {mismatch}")
            paths["torch_compile"] = {"first_call_s": compile_s, **timed(compiled)}
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
        "n_atoms": [len(atoms) for atoms in structures],
        "paths": paths,
        "chosen_path": chosen,
        "reason": reason,
    }


def layer_inputs(model: torch.nn.Module, graph: dict, seed: int) -> dict:
    """Inputs of `edge_message_torch` for one ``graph`` (model-input tensors): its real edges (Angstrom).

    The edges come from the graph's neighbour list at the model's cutoff and the radial weights from
    the model's first layer; ``phi`` and ``v`` are random (kernel speed does not depend on them).
    """
    dtype, device = model.radial_filter.weight.dtype, model.radial_filter.weight.device
    f = model.n_features
    src, dst, vectors = edge_vectors(
        graph["positions_A"].to(device, dtype),
        graph["cell_A"].to(device, dtype),
        graph["pbc"].to(device),
        graph["atoms_ptr"].to(device),
        model.cutoff_A,
    )
    n_atoms = len(graph["numbers"])
    generator = torch.Generator(device=device).manual_seed(seed)
    return {
        "phi": torch.randn(n_atoms, 3 * f, generator=generator, device=device, dtype=dtype).requires_grad_(True),
        "v": torch.randn(n_atoms, 3, f, generator=generator, device=device, dtype=dtype).requires_grad_(True),
        "vectors_A": vectors.detach().requires_grad_(True),
        "radial_weight": model.radial_filter.weight[: 3 * f].detach().T.contiguous().requires_grad_(True),
        "src": src,
        "dst": dst,
        "n_atoms": n_atoms,
        "cutoff_A": model.cutoff_A,
        "n_radial": model.n_radial,
    }


def _forward_backward(op: Callable, inputs: dict, seeds: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Gradients of ``<seeds, op(**inputs)>`` with respect to phi, v, vectors_A and radial_weight."""
    wrt = [inputs[key] for key in ("phi", "v", "vectors_A", "radial_weight")]
    return torch.autograd.grad(op(**inputs), wrt, seeds)


def autotune_triton_on_gpu(model: torch.nn.Module, graphs: list[dict]) -> dict:
    """Autotune the fused edge-message kernels on CUDA on each of ``graphs`` and time them against PyTorch.

    ``graphs`` are model-input dicts (e.g. `sample_graphs` of the run's own data).
    Returns the GPU name, versions, the feature width and per edge-count bucket the chosen forward
    and backward configs, the max abs errors against `edge_message_torch`, the median times (ms,
    `triton.testing.do_bench`) of Triton and PyTorch, and the effective bandwidth of the fused
    kernels against the device's DRAM peak (GB/s).
    """
    if not cuda_available():
        raise RuntimeError("autotune_triton_on_gpu needs a CUDA device")
    # Triton and its kernels on a CUDA GPU only: importing them fixes Triton's interpreter mode.
    import triton
    import triton.testing

    from mlff_distill.kernels import edge_message as kernels
    from mlff_distill.kernels.bessel_cosine import edge_bucket
    from mlff_distill.kernels.traffic import edge_message_bytes

    kernels.set_tuned_configs({})  # let the autotuner choose
    model = copy.deepcopy(model).to("cuda", torch.float32)
    peak_GBps = triton.testing.get_dram_gbps()
    buckets = {}
    for index, graph in enumerate(graphs):
        inputs = layer_inputs(model, graph, seed=index)
        n_edges = inputs["src"].numel()
        if n_edges == 0:
            continue
        out = kernels.edge_message_triton(**inputs)
        forward_config = kernels.AUTOTUNED["forward"].best_config
        seeds = [torch.randn_like(o) for o in out]
        grads = _forward_backward(kernels.edge_message_triton, inputs, seeds)
        backward_config = kernels.AUTOTUNED["backward"].best_config
        reference = edge_message_torch(**inputs)
        reference_grads = _forward_backward(edge_message_torch, inputs, seeds)
        with torch.no_grad():
            timings = {
                "triton_forward_ms": triton.testing.do_bench(
                    lambda: kernels.edge_message_triton(**inputs), return_mode="median"
                ),
                "torch_forward_ms": triton.testing.do_bench(lambda: edge_message_torch(**inputs), return_mode="median"),
                "triton_backward_kernel_ms": triton.testing.do_bench(
                    lambda: kernels.edge_message_backward_triton(
                        *seeds,
                        inputs["phi"],
                        inputs["v"],
                        inputs["vectors_A"],
                        inputs["radial_weight"],
                        inputs["src"],
                        inputs["dst"],
                        inputs["cutoff_A"],
                    ),
                    return_mode="median",
                ),
            }
        timings["triton_forward_backward_ms"] = triton.testing.do_bench(
            lambda: _forward_backward(kernels.edge_message_triton, inputs, seeds), return_mode="median"
        )
        timings["torch_forward_backward_ms"] = triton.testing.do_bench(
            lambda: _forward_backward(edge_message_torch, inputs, seeds), return_mode="median"
        )
        f, itemsize = model.n_features, inputs["phi"].element_size()
        forward_bytes = edge_message_bytes(n_edges, f, model.n_radial, itemsize, True, backward=False)
        backward_bytes = edge_message_bytes(n_edges, f, model.n_radial, itemsize, True, backward=True)
        buckets[str(edge_bucket(n_edges))] = {
            "n_atoms": inputs["n_atoms"],
            "n_edges": n_edges,
            "forward_config": kernels.config_dict(forward_config),
            "backward_config": kernels.config_dict(backward_config),
            "max_abs_error_forward": max((a - b).abs().max().item() for a, b in zip(out, reference)),
            "max_abs_error_backward": max((a - b).abs().max().item() for a, b in zip(grads, reference_grads)),
            **timings,
            "forward_bytes": forward_bytes,
            "backward_bytes": backward_bytes,
            "forward_GBps": forward_bytes / timings["triton_forward_ms"] / 1e6,
            "backward_GBps": backward_bytes / timings["triton_backward_kernel_ms"] / 1e6,
        }
    return {
        "gpu_name": torch.cuda.get_device_name(),
        "peak_dram_GBps": peak_GBps,
        "triton_version": triton.__version__,
        "torch_version": torch.__version__,
        "n_features": model.n_features,
        "n_radial": model.n_radial,
        "cutoff_A": model.cutoff_A,
        "buckets": buckets,
    }


def sample_graphs(data: LabeledArrays, atom_counts: list[int]) -> list[dict[str, torch.Tensor]]:
    """One graph per entry of ``atom_counts``: ``data``'s structures, in order and cycling, batched until
    the batch has at least that many atoms (molecules become a batch of disjoint molecules, crystals
    several cells), as model-input tensors on the CPU."""
    if data.n_structures == 0 or data.n_atoms.sum() == 0:
        raise ValueError("sample_graphs needs at least one structure with atoms")
    graphs = []
    for target in atom_counts:
        if target < 1:
            raise ValueError(f"atom counts must be >= 1, got {target}")
        indices, total = [], 0
        while total < target:
            index = len(indices) % data.n_structures
            indices.append(index)
            total += int(data.n_atoms[index])
        graphs.append(structure_tensors(data.subset(indices), torch.device("cpu")))
    return graphs


def tune(
    model: torch.nn.Module,
    data: LabeledArrays,
    try_compile: bool,
    repeats: int,
    graph_atoms: list[int],
    cpu_structures: Sequence[Atoms],
) -> dict:
    """The tune stage's record for ``model`` on the test structures ``data``.

    With CUDA: the fused edge-message kernels are autotuned on graphs of ``graph_atoms`` atoms
    (`sample_graphs`), recorded under ``triton.gpus[<GPU model>]``, and ``chosen_path`` is
    ``"triton"`` if their forward+backward time summed over the graphs beats PyTorch's, else ``"eager"``.
    Without: `choose_cpu_path` on ``cpu_structures`` (test structures and systems of the
    ``graph_atoms`` sizes, `mlff_distill.sampling.boxes.cpu_timing_structures`).
    """
    record = {"machine": platform.machine(), "processor": platform.processor() or "unknown", "torch": torch.__version__}
    if cuda_available():
        tuned = autotune_triton_on_gpu(model, sample_graphs(data, graph_atoms))
        triton_ms = sum(b["triton_forward_backward_ms"] for b in tuned["buckets"].values())
        torch_ms = sum(b["torch_forward_backward_ms"] for b in tuned["buckets"].values())
        chosen = "triton" if triton_ms < torch_ms else "eager"
        record.update(
            cuda_available=True,
            device=tuned["gpu_name"],
            chosen_path=chosen,
            triton={"gpus": {tuned["gpu_name"]: tuned}},
            reason=(
                f"CUDA GPU: fused Triton edge message autotuned on graphs of {graph_atoms} atoms; "
                f"forward+backward summed over them: Triton {triton_ms:.3g} ms, "
                f"PyTorch {torch_ms:.3g} ms, so {chosen}"
            ),
        )
        return record
    record.update(choose_cpu_path(model, cpu_structures, try_compile, repeats))
    record["triton"] = (
        "not autotuned: no CUDA GPU (torch.cuda.is_available() is False); "
        f"inference uses the CPU path '{record['chosen_path']}'"
    )
    return record
