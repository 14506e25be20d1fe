localrules:
    acceptance,


rule evaluate:
    """Student against teacher on the test split: accuracy, speed, figures, report, MLflow model."""
    input:
        store=round_path("label", "labels.zarr", ROUNDS),
        structures=stage_path("sample", "structures.extxyz"),
        checkpoint=round_path("train", "student.pt", ROUNDS),
        earlier_checkpoints=[round_path("train", "student.pt", k) for k in range(ROUNDS)],
        inference_path=stage_path("tune", "inference_path.json"),
    output:
        metrics=stage_path("evaluate", "metrics.json"),
        report=stage_path("evaluate", "report.html"),
        parity=stage_path("evaluate", "parity.png"),
        errors=stage_path("evaluate", "errors.png"),
    log:
        log_path("evaluate"),
    benchmark:
        benchmark_path("evaluate")
    conda:
        CONDA_ENV
    threads: workflow.cores
    params:
        run_name=config["run_name"],
        seed=config["seed"],
        teacher=config["teacher"],
        sample=config["sample"],
        target=config["target"],
        evaluate=config["evaluate"],
        compile_cache_dir=COMPILE_CACHE,
        pipeline_file=PIPELINE_RUN,
    script:
        "../scripts/evaluate.py"


rule acceptance:
    """The acceptance gates' verdict; with evaluate.strict, fails when a gate fails (after evaluate)."""
    input:
        metrics=stage_path("evaluate", "metrics.json"),
    output:
        verdict=stage_path("evaluate", "acceptance.json"),
    log:
        log_path("acceptance"),
    conda:
        CONDA_ENV
    params:
        strict=config["evaluate"]["strict"],
    script:
        "../scripts/acceptance.py"
