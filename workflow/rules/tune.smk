rule tune:
    """On a CUDA GPU autotune the fused Triton kernels at tune.graph_atoms; without one, record and choose the CPU path."""
    input:
        pipeline=PIPELINE_RUN,
        store=stage_path("label", "labels.zarr"),
        checkpoint=stage_path("train", "student.pt"),
    output:
        record=stage_path("tune", "inference_path.json"),
    params:
        compile_cache=COMPILE_CACHE,
    log:
        log_path("tune"),
    benchmark:
        benchmark_path("tune")
    conda:
        CONDA_ENV
    script:
        "../scripts/tune.py"
