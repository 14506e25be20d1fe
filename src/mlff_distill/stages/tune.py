"""The tune stage: make inference fast on the machine at hand, and say how.

With a CUDA GPU, the student's fused Triton edge-message kernels are autotuned on graphs built from
the run's own test structures at the configured sizes, and the chosen configurations and timings are
recorded per GPU model (`mlff_distill.student.tuned_kernels.load_tuned_kernels` installs them).
Without one, the record says so and which CPU path inference uses: eager PyTorch or
``torch.compile``, whichever measured faster here
(`mlff_distill.student.inference_path.choose_cpu_path`). Never a silent no-op. With
``tune.export_aoti``, the final student is also compiled ahead of time for this machine
(`mlff_distill.student.aoti`: ``tune/student.pt2``), which the evaluate stage times beside it.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from mlff_distill.logs import stage_logger
from mlff_distill.sampling.boxes import cpu_timing_structures
from mlff_distill.settings import TuneSettings, build
from mlff_distill.store import read_labels
from mlff_distill.student.aoti import export_aoti
from mlff_distill.student.checkpoint import load_student
from mlff_distill.student.compilation import use_compile_cache
from mlff_distill.student.inference_path import tune as tune_inference
from mlff_distill.student.model import StudentPotential
from mlff_distill.tracking import stage_run


def run(
    *,
    tune: dict,
    store: Path,
    checkpoint: Path,
    record_file: Path,
    pipeline_file: Path,
    log_file: Path,
    compile_cache_dir: Path | None = None,
) -> None:
    """The Snakemake job; ``compile_cache_dir``: TorchInductor's cache of the run, which the
    precompile job filled (`mlff_distill.student.compilation`)."""
    settings = build(TuneSettings, tune, "tune")
    logger = stage_logger("tune", log_file)
    torch.set_num_threads(1)  # as in the evaluate stage: one structure per call, one thread
    use_compile_cache(compile_cache_dir, logger)
    with stage_run(pipeline_file, "tune", tune, log_file) as tracker:
        model, metadata = load_student(checkpoint)
        test = read_labels(store, "test")
        record = tune_inference(
            model.eval(),
            test,
            settings.try_compile,
            settings.repeats,
            settings.graph_atoms,
            cpu_timing_structures(test, settings.graph_atoms, model.cutoff_A),
        )
        if settings.export_aoti:
            record["exported"] = exported_package(model, metadata, Path(record_file).with_name("student.pt2"), logger)
        Path(record_file).write_text(json.dumps(record, indent=2))
        tracker.set_tags({"chosen_path": record["chosen_path"], "cuda_available": record["cuda_available"]})
        timings = {
            f"{name}_median_s": path["median_s"] for name, path in record.get("paths", {}).items() if "median_s" in path
        }
        if isinstance(record["triton"], dict):
            for tuned in record["triton"]["gpus"].values():
                for bucket, entry in tuned["buckets"].items():
                    timings.update(
                        {
                            f"{key}_E{bucket}": entry[key]
                            for key in (
                                "triton_forward_backward_ms",
                                "torch_forward_backward_ms",
                                "forward_GBps",
                                "backward_GBps",
                            )
                        }
                    )
        if timings:
            tracker.log_metrics(timings)
        tracker.log_artifact(record_file)
        if (record.get("exported") or {}).get("path"):
            tracker.log_artifact(record["exported"]["path"])
        logger.info("inference path: %s (%s)", record["chosen_path"], record["reason"])
        logger.info("%s", record["triton"] if isinstance(record["triton"], str) else "triton tuned")


def exported_package(model: StudentPotential, metadata: dict, path: Path, logger: logging.Logger) -> dict:
    """Compile ``model`` into the AOTInductor package ``path`` (`mlff_distill.student.aoti`); the
    record's ``exported`` entry: ``path`` and ``seconds``, or ``path`` None and the ``error``."""
    start = time.perf_counter()
    try:
        export_aoti(model, path, metadata)
    except Exception as error:  # no C++ compiler, an Inductor failure: the run goes on without it
        logger.warning("AOTInductor export failed, evaluate times no exported package: %s", error)
        return {"path": None, "error": f"{type(error).__name__}: {error}"}
    seconds = time.perf_counter() - start
    logger.info("AOTInductor package %s compiled in %.1f s", path, seconds)
    return {"path": str(path), "seconds": seconds}
