rule precompile:
    """Compile the student's training loss into TorchInductor's cache while the teacher samples,
    so that training starts at once (mlff_distill.precompile)."""
    input:
        seed_files=config["sample"]["seed_files"],
        test_files=config["sample"]["test_files"],
    output:
        record=stage_path("precompile", "compiled.json"),
    params:
        cache_dir=COMPILE_CACHE,
    threads: 1
    log:
        log_path("precompile"),
    benchmark:
        benchmark_path("precompile")
    conda:
        CONDA_ENV
    script:
        "../scripts/precompile.py"
