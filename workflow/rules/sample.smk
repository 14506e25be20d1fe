rule sample:
    """Structures for the teacher: rattled seeds and short teacher MD, as extxyz."""
    input:
        pipeline=PIPELINE_RUN,
        seed_files=config["sample"]["seed_files"],
        test_files=config["sample"]["test_files"],
    output:
        structures=stage_path("sample", "structures.extxyz"),
    log:
        log_path("sample"),
    benchmark:
        benchmark_path("sample")
    conda:
        CONDA_ENV
    script:
        "../scripts/sample.py"
