rule tune:
    """On a CUDA GPU autotune the fused Triton kernels at tune.graph_atoms; without one, record and choose the CPU path."""
    input:
        store=round_path("label", "labels.zarr", ROUNDS),
        checkpoint=round_path("train", "student.pt", ROUNDS),
    output:
        record=stage_path("tune", "inference_path.json"),
    log:
        log_path("tune"),
    benchmark:
        benchmark_path("tune")
    conda:
        CONDA_ENV
    params:
        tune=config["tune"],
        compile_cache_dir=COMPILE_CACHE,
        pipeline_file=PIPELINE_RUN,
    script:
        "../scripts/tune.py"
