"""The tune stage: make inference fast on the machine at hand, and say how.

With a CUDA GPU, the student's Triton kernels are autotuned on edge distances from the run's own
test structures, and the chosen configurations are recorded per GPU model. Without one, the record
says so and which CPU path inference uses: eager PyTorch or ``torch.compile``, whichever measured
faster here (`mlff_distill.inference_path.choose_cpu_path`). Never a silent no-op.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch

from mlff_distill.data import LabeledArrays


def sample_batches(data: LabeledArrays, count: int) -> list[dict[str, torch.Tensor]]:
    """Up to ``count`` single-structure batches (as in MD) from ``data``, as model-input tensors."""
    from mlff_distill.student.fitting import structure_tensors

    return [structure_tensors(data.subset([i]), torch.device("cpu"))
            for i in range(min(count, data.n_structures))]


def edge_distances(model, batches: list[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
    """Neighbour distances (Angstrom) within the student's cutoff, one tensor per batch."""
    from mlff_distill.student.neighbours import edge_vectors

    return [edge_vectors(b["positions_A"], b["cell_A"], b["pbc"], b["atoms_ptr"],
                         model.cutoff_A)[2].norm(dim=1) for b in batches]


def tune(model, data: LabeledArrays, try_compile: bool, repeats: int) -> dict:
    """The tune record for ``model`` on ``data`` (see the module docstring)."""
    from mlff_distill.inference_path import autotune_triton_on_gpu, choose_cpu_path, cuda_available

    batches = sample_batches(data, 8)
    record = {"machine": platform.machine(), "processor": platform.processor() or "unknown",
              "torch": torch.__version__, "n_sample_structures": len(batches)}
    if cuda_available():
        record["triton"] = autotune_triton_on_gpu(
            [d.cuda() for d in edge_distances(model, batches)], model.n_radial, model.cutoff_A)
        record.update(cuda_available=True, device=torch.cuda.get_device_name(),
                      chosen_path="triton",
                      reason="CUDA GPU present: Triton kernels autotuned for it")
        return record
    record.update(choose_cpu_path(model, batches, try_compile, repeats))
    record["triton"] = ("not autotuned: no CUDA GPU (torch.cuda.is_available() is False); "
                        f"inference uses the CPU path '{record['chosen_path']}'")
    return record


def run(config: dict, store: Path, checkpoint: Path, record_file: Path, pipeline_file: Path,
        log_file: Path) -> None:
    """The Snakemake job."""
    from mlff_distill.logs import stage_logger
    from mlff_distill.store import read_labels
    from mlff_distill.student import load_student
    from mlff_distill.tracking import stage_run

    logger = stage_logger("tune", log_file)
    torch.set_num_threads(1)  # as in the evaluate stage: one structure per call, one thread
    with stage_run(pipeline_file, "tune", config["tune"], log_file) as tracker:
        model, _ = load_student(checkpoint)
        record = tune(model.eval(), read_labels(store, "test"), config["tune"]["try_compile"],
                      config["tune"]["repeats"])
        Path(record_file).write_text(json.dumps(record, indent=2))
        tracker.set_tags({"chosen_path": record["chosen_path"],
                          "cuda_available": record["cuda_available"]})
        timings = {f"{name}_median_s": path["median_s"]
                   for name, path in record.get("paths", {}).items() if "median_s" in path}
        if timings:
            tracker.log_metrics(timings)
        tracker.log_artifact(record_file)
        logger.info("inference path: %s (%s)", record["chosen_path"], record["reason"])
        logger.info("%s", record["triton"] if isinstance(record["triton"], str) else "triton tuned")
