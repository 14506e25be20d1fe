rule sample:
    """Structures for the teacher: seeds, rattles, teacher MD and the other strategies, as extxyz."""
    input:
        seed_files=config["sample"]["seed_files"],
        test_files=config["sample"]["test_files"],
        target_files=target_files(),
    output:
        structures=stage_path("sample", "structures.extxyz"),
    log:
        log_path("sample"),
    benchmark:
        benchmark_path("sample")
    conda:
        CONDA_ENV
    params:
        seed=config["seed"],
        sample=config["sample"],
        target=config["target"],
        teacher=config["teacher"],
        pipeline_file=PIPELINE_RUN,
    script:
        "../scripts/sample.py"
