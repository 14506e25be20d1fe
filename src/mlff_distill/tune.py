"""The tune stage: make inference fast on the machine at hand, and say how.

With a CUDA GPU, the student's fused Triton edge-message kernels are autotuned on graphs built from
the run's own test structures at the configured sizes, and the chosen configurations and timings are
recorded per GPU model (`mlff_distill.inference_path.load_tuned_kernels` installs them). Without one, the record
says so and which CPU path inference uses: eager PyTorch or ``torch.compile``, whichever measured
faster here (`mlff_distill.inference_path.choose_cpu_path`). Never a silent no-op.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch

from mlff_distill.data import LabeledArrays


def sample_graphs(data: LabeledArrays, atom_counts: list[int]) -> list[dict[str, torch.Tensor]]:
    """One graph per entry of ``atom_counts``: ``data``'s structures, in order and cycling, batched until
    the batch has at least that many atoms (molecules become a batch of disjoint molecules, crystals
    several cells), as model-input tensors on the CPU."""
    from mlff_distill.student.fitting import structure_tensors

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


def cpu_timing_structures(data: LabeledArrays, atom_counts: list[int], cutoff_A: float,
                          n_single: int = 8) -> list:
    """The CPU path's timing set: the first ``n_single`` structures of ``data`` as they are, then
    one periodic system of about each of ``atom_counts`` atoms built from them
    (`mlff_distill.speed.build_timing_systems`: packed molecules, or repeated crystals)."""
    from mlff_distill.speed import build_timing_systems

    singles = [data.atoms(i) for i in range(min(n_single, data.n_structures))]
    if not singles:
        raise ValueError("the test split is empty: nothing to time the inference paths on")
    return singles + build_timing_systems(singles, atom_counts, cutoff_A, seed=0)


def tune(model, data: LabeledArrays, try_compile: bool, repeats: int, graph_atoms: list[int]) -> dict:
    """The tune record for ``model`` on ``data`` (see the module docstring).

    With CUDA: the fused edge-message kernels are autotuned on graphs of ``graph_atoms`` atoms
    (`sample_graphs`), recorded under ``triton.gpus[<GPU model>]``, and ``chosen_path`` is
    ``"triton"`` if their forward+backward time summed over the graphs beats PyTorch's, else ``"eager"``.
    Without: `choose_cpu_path` on `cpu_timing_structures` (``graph_atoms`` sizes).
    """
    from mlff_distill.inference_path import autotune_triton_on_gpu, choose_cpu_path, cuda_available

    record = {"machine": platform.machine(), "processor": platform.processor() or "unknown",
              "torch": torch.__version__}
    if cuda_available():
        tuned = autotune_triton_on_gpu(model, sample_graphs(data, graph_atoms))
        triton_ms = sum(b["triton_forward_backward_ms"] for b in tuned["buckets"].values())
        torch_ms = sum(b["torch_forward_backward_ms"] for b in tuned["buckets"].values())
        chosen = "triton" if triton_ms < torch_ms else "eager"
        record.update(cuda_available=True, device=tuned["gpu_name"], chosen_path=chosen,
                      triton={"gpus": {tuned["gpu_name"]: tuned}},
                      reason=(f"CUDA GPU: fused Triton edge message autotuned on graphs of {graph_atoms} atoms; "
                              f"forward+backward summed over them: Triton {triton_ms:.3g} ms, "
                              f"PyTorch {torch_ms:.3g} ms, so {chosen}"))
        return record
    record.update(choose_cpu_path(model, cpu_timing_structures(data, graph_atoms, model.cutoff_A),
                                  try_compile, repeats))
    record["triton"] = ("not autotuned: no CUDA GPU (torch.cuda.is_available() is False); "
                        f"inference uses the CPU path '{record['chosen_path']}'")
    return record


def run(config: dict, store: Path, checkpoint: Path, record_file: Path, pipeline_file: Path,
        log_file: Path, compile_cache_dir: Path | None = None) -> None:
    """The Snakemake job; ``compile_cache_dir``: TorchInductor's cache of the run, which the
    precompile job filled (`mlff_distill.precompile`)."""
    from mlff_distill.logs import stage_logger
    from mlff_distill.precompile import use_compile_cache
    from mlff_distill.store import read_labels
    from mlff_distill.student import load_student
    from mlff_distill.tracking import stage_run

    logger = stage_logger("tune", log_file)
    torch.set_num_threads(1)  # as in the evaluate stage: one structure per call, one thread
    use_compile_cache(compile_cache_dir, logger)
    with stage_run(pipeline_file, "tune", config["tune"], log_file) as tracker:
        model, _ = load_student(checkpoint)
        record = tune(model.eval(), read_labels(store, "test"), config["tune"]["try_compile"],
                      config["tune"]["repeats"], config["tune"]["graph_atoms"])
        Path(record_file).write_text(json.dumps(record, indent=2))
        tracker.set_tags({"chosen_path": record["chosen_path"],
                          "cuda_available": record["cuda_available"]})
        timings = {f"{name}_median_s": path["median_s"]
                   for name, path in record.get("paths", {}).items() if "median_s" in path}
        if isinstance(record["triton"], dict):
            for tuned in record["triton"]["gpus"].values():
                for bucket, entry in tuned["buckets"].items():
                    timings.update({f"{key}_E{bucket}": entry[key] for key in (
                        "triton_forward_backward_ms", "torch_forward_backward_ms", "forward_GBps", "backward_GBps")})
        if timings:
            tracker.log_metrics(timings)
        tracker.log_artifact(record_file)
        logger.info("inference path: %s (%s)", record["chosen_path"], record["reason"])
        logger.info("%s", record["triton"] if isinstance(record["triton"], str) else "triton tuned")
