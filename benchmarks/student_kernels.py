"""The student's hot path (edge message of one interaction layer) in eager PyTorch, torch.compile and Triton.

Usage::

    python benchmarks/student_kernels.py [--atoms 64 512 2048] [--features 64] [--radial 8] \
        [--cutoff 5.0] [--repeats 5] [--paths eager compile triton] [--torch-threads 1] \
        [--out results/benchmarks/student_kernels.json] [--mlflow-uri sqlite:///results/benchmarks/mlflow.db]

Systems: rattled diamond-silicon supercells (cubic 8-atom cell, a = 5.43 Angstrom, repeated to the
requested atom count; 64 -> 2x2x2, 512 -> 4x4x4, 2048 -> 8x8x4), periodic. Their edges come from
the student's own neighbour list at ``--cutoff`` (`mlff_distill.student.neighbours.edge_vectors`).
One step = `edge_message` forward and its backward (gradients for phi, v, vectors, weights: what
forces need), on random phi, v and radial weights of width ``--features``.

Paths: ``eager`` (`edge_message_torch`), ``compile`` (``torch.compile`` of it, one compile per size,
its first-call time reported apart) and ``triton`` (the fused kernels). On a CUDA GPU all three run
there, timed with `triton.testing.do_bench` (median ms), and the Triton rows also give the effective
bandwidth of the fused forward and backward kernels (bytes from `mlff_distill.kernels.traffic`)
against the device's DRAM peak. On a CPU eager and compile are timed with `time.perf_counter`
(median of ``--repeats``); Triton runs only when ``TRITON_INTERPRET=1`` is set, in Triton's
interpreter, and its rows are marked ``interpreter`` (a correctness run, one timed call, not a speed
figure) and limited to systems of at most ``--interpreter-max-atoms`` atoms. Results go to ``--out`` (JSON)
and MLflow (experiment "benchmarks", run "student_kernels").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from ase.build import bulk

from mlff_distill.reference.edge_message import edge_message_torch
from mlff_distill.student.inference_path import time_callable
from mlff_distill.student.neighbours import edge_vectors

DEFAULT_MLFLOW_URI = "sqlite:///results/benchmarks/mlflow.db"
SI_LATTICE_A = 5.43
DIFFERENTIABLE = ("phi", "v", "vectors_A", "radial_weight")


def silicon_repeats(n_atoms: int) -> tuple[int, int, int]:
    """Repeats of the 8-atom cubic Si cell giving ``n_atoms`` atoms, as even as possible."""
    if n_atoms % 8:
        raise ValueError(f"--atoms must be multiples of 8 (cubic diamond cell), got {n_atoms}")
    cells = n_atoms // 8
    best = (cells, 1, 1)
    for a in range(1, cells + 1):
        for b in range(1, cells // a + 1):
            c, rest = divmod(cells, a * b)
            if rest == 0 and max(a, b, c) - min(a, b, c) < max(best) - min(best):
                best = tuple(sorted((a, b, c), reverse=True))
    return best


def silicon_graph(n_atoms: int, features: int, n_radial: int, cutoff_A: float, device: torch.device, seed: int) -> dict:
    """`edge_message_torch` inputs for a rattled Si supercell of ``n_atoms`` atoms (float32, Angstrom)."""
    atoms = bulk("Si", "diamond", a=SI_LATTICE_A, cubic=True).repeat(silicon_repeats(n_atoms))
    atoms.rattle(0.05, seed=seed)
    positions = torch.tensor(atoms.positions, dtype=torch.float32, device=device)
    cell = torch.tensor(np.asarray(atoms.cell), dtype=torch.float32, device=device)[None]
    pbc = torch.ones(1, 3, dtype=torch.bool, device=device)
    src, dst, vectors = edge_vectors(positions, cell, pbc, torch.tensor([0, n_atoms], device=device), cutoff_A)
    generator = torch.Generator(device=device).manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, device=device).requires_grad_(True)

    return {
        "phi": randn(n_atoms, 3 * features),
        "v": randn(n_atoms, 3, features),
        "vectors_A": vectors.detach().requires_grad_(True),
        "radial_weight": randn(n_radial, 3 * features),
        "src": src,
        "dst": dst,
        "n_atoms": n_atoms,
        "cutoff_A": cutoff_A,
        "n_radial": n_radial,
    }


def step(op, inputs: dict, seeds: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """One forward + backward of ``op``: gradients of ``<seeds, op(**inputs)>``."""
    return torch.autograd.grad(op(**inputs), [inputs[k] for k in DIFFERENTIABLE], seeds)


def time_ms(fn, repeats: int, cuda: bool, warmup: int = 1) -> float:
    """Median time of ``fn()`` in ms: `triton.testing.do_bench` on CUDA, else `time_callable` (perf_counter)."""
    if cuda:
        import triton.testing

        return triton.testing.do_bench(fn, return_mode="median")
    return 1e3 * time_callable(fn, repeats, warmup)["median_s"]


def max_error(got: tuple[torch.Tensor, ...], want: tuple[torch.Tensor, ...]) -> float:
    """Max abs difference over the tensors, relative to the largest magnitude of ``want`` (at least 1)."""
    scale = max(1.0, max(w.abs().max().item() for w in want))
    return max((g - w).abs().max().item() for g, w in zip(got, want)) / scale


def measure(n_atoms: int, args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Rows (one per path) for one system size."""
    cuda = device.type == "cuda"
    inputs = silicon_graph(n_atoms, args.features, args.radial, args.cutoff, device, seed=n_atoms)
    n_edges = inputs["src"].numel()
    seeds = [torch.randn(n_atoms, args.features, device=device), torch.randn(n_atoms, 3, args.features, device=device)]
    reference = step(edge_message_torch, inputs, seeds)
    base = {"atoms": n_atoms, "edges": n_edges, "edges_per_atom": n_edges / n_atoms}
    rows = []
    for path in args.paths:
        row = {**base, "path": path}
        if path == "eager":
            op = edge_message_torch
        elif path == "compile":
            op = torch.compile(edge_message_torch, dynamic=False)
            start = time.perf_counter()
            step(op, inputs, seeds)
            row["first_call_s"] = time.perf_counter() - start
        else:
            interpreted = os.environ.get("TRITON_INTERPRET") == "1"
            if not cuda and not interpreted:
                row["skipped"] = "no CUDA GPU; set TRITON_INTERPRET=1 to run Triton's interpreter on CPU"
                rows.append(row)
                continue
            if interpreted and n_atoms > args.interpreter_max_atoms:
                row["skipped"] = f"interpreter run limited to {args.interpreter_max_atoms} atoms"
                rows.append(row)
                continue
            from mlff_distill.kernels.edge_message import edge_message_triton

            op = edge_message_triton
            row["interpreter"] = interpreted
        row["max_rel_error_vs_eager"] = max_error(step(op, inputs, seeds), reference)
        # the interpreter is seconds per call: one timed call, no warm-up
        repeats, warmup = (1, 0) if row.get("interpreter") else (args.repeats, 1)
        with torch.no_grad():
            row["forward_ms"] = time_ms(lambda: op(**inputs), repeats, cuda, warmup)
        row["step_ms"] = time_ms(lambda: step(op, inputs, seeds), repeats, cuda, warmup)
        if path == "triton" and cuda:
            row.update(triton_bandwidth(inputs, seeds, args))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def triton_bandwidth(inputs: dict, seeds: list[torch.Tensor], args: argparse.Namespace) -> dict:
    """Effective bandwidth (GB/s) of the fused forward and backward kernels and the device's DRAM peak."""
    import triton.testing

    from mlff_distill.kernels.edge_message import edge_message_backward_triton, edge_message_triton
    from mlff_distill.kernels.traffic import edge_message_bytes

    n_edges = inputs["src"].numel()
    with torch.no_grad():
        forward_ms = triton.testing.do_bench(lambda: edge_message_triton(**inputs), return_mode="median")
        backward_ms = triton.testing.do_bench(
            lambda: edge_message_backward_triton(
                *seeds, *(inputs[k] for k in DIFFERENTIABLE), inputs["src"], inputs["dst"], inputs["cutoff_A"]
            ),
            return_mode="median",
        )
    forward_bytes = edge_message_bytes(n_edges, args.features, args.radial, 4, True, backward=False)
    backward_bytes = edge_message_bytes(n_edges, args.features, args.radial, 4, True, backward=True)
    peak = triton.testing.get_dram_gbps()
    forward_GBps, backward_GBps = forward_bytes / forward_ms / 1e6, backward_bytes / backward_ms / 1e6
    return {
        "forward_kernel_ms": forward_ms,
        "backward_kernel_ms": backward_ms,
        "forward_bytes": forward_bytes,
        "backward_bytes": backward_bytes,
        "forward_GBps": forward_GBps,
        "backward_GBps": backward_GBps,
        "peak_dram_GBps": peak,
        "forward_fraction_of_peak": forward_GBps / peak,
        "backward_fraction_of_peak": backward_GBps / peak,
    }


def log_to_mlflow(uri: str, report: dict) -> None:
    """One MLflow run "student_kernels" in experiment "benchmarks": settings as params, numbers as metrics."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("benchmarks")
    with mlflow.start_run(run_name="student_kernels"):
        mlflow.log_params(report["settings"])
        for row in report["results"]:
            prefix = f"{row['path']}.atoms_{row['atoms']}."
            mlflow.log_metrics(
                {
                    prefix + k: float(v)
                    for k, v in row.items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool)
                }
            )
        mlflow.log_dict(report, "student_kernels.json")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--atoms", nargs="+", type=int, default=[64, 512, 2048])
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--radial", type=int, default=8)
    parser.add_argument("--cutoff", type=float, default=5.0, help="Angstrom")
    parser.add_argument("--repeats", type=int, default=5, help="CPU timing repeats (CUDA: do_bench decides)")
    parser.add_argument(
        "--paths", nargs="+", choices=["eager", "compile", "triton"], default=["eager", "compile", "triton"]
    )
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--interpreter-max-atoms", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks/student_kernels.json"))
    parser.add_argument("--mlflow-uri", default=DEFAULT_MLFLOW_URI)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.torch_threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cpu_name = f"cpu ({platform.processor() or platform.machine()})"
    settings = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else cpu_name,
        "cpu_count": os.cpu_count(),
        "torch_threads": args.torch_threads,
        "torch": torch.__version__,
        "features": args.features,
        "radial": args.radial,
        "cutoff_A": args.cutoff,
        "system": "rattled diamond Si supercells",
        "triton_interpreter": os.environ.get("TRITON_INTERPRET") == "1",
        "paths": ",".join(args.paths),
    }
    report = {
        "benchmark": "student_kernels",
        "settings": settings,
        "results": [row for n_atoms in args.atoms for row in measure(n_atoms, args, device)],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    log_to_mlflow(args.mlflow_uri, report)
    return report


if __name__ == "__main__":
    main()
