localrules:
    report,
    acceptance,


rule evaluate:
    """Student against teacher on the test split: accuracy, speed, MD checks, figures, MLflow model."""
    input:
        store=round_path("label", "labels.zarr", ROUNDS),
        structures=stage_path("sample", "structures.extxyz"),
        checkpoint=round_path("train", "student.pt", ROUNDS),
        earlier_checkpoints=[round_path("train", "student.pt", k) for k in range(ROUNDS)],
        inference_path=stage_path("tune", "inference_path.json"),
    output:
        measurements=stage_path("evaluate", "measurements.json"),
        context=stage_path("evaluate", "report_context.json"),
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
        # not the gates: editing them reruns the report and acceptance jobs only
        evaluate=measurement_section(config["evaluate"]),
        compile_cache_dir=COMPILE_CACHE,
        pipeline_file=PIPELINE_RUN,
    script:
        "../scripts/evaluate.py"


rule report:
    """The acceptance gates on evaluate's measurements: metrics.json and report.html (seconds)."""
    input:
        measurements=stage_path("evaluate", "measurements.json"),
        context=stage_path("evaluate", "report_context.json"),
    output:
        metrics=stage_path("evaluate", "metrics.json"),
        report=stage_path("evaluate", "report.html"),
    log:
        log_path("report"),
    conda:
        CONDA_ENV
    params:
        gates=config["evaluate"]["gates"],
        strict=config["evaluate"]["strict"],
        pipeline_file=PIPELINE_RUN,
    script:
        "../scripts/report.py"


rule acceptance:
    """The acceptance gates' verdict; with evaluate.strict, fails when a gate fails (after report)."""
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
