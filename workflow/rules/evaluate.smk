localrules:
    acceptance,


rule evaluate:
    """Student against teacher on the test split: accuracy, speed, figures, report, MLflow model."""
    input:
        pipeline=PIPELINE_RUN,
        store=stage_path("label", "labels.zarr"),
        structures=stage_path("sample", "structures.extxyz"),
        checkpoint=stage_path("train", "student.pt"),
        inference_path=stage_path("tune", "inference_path.json"),
    output:
        metrics=stage_path("evaluate", "metrics.json"),
        report=stage_path("evaluate", "report.html"),
        parity=stage_path("evaluate", "parity.png"),
        errors=stage_path("evaluate", "errors.png"),
    params:
        compile_cache=COMPILE_CACHE,
    log:
        log_path("evaluate"),
    benchmark:
        benchmark_path("evaluate")
    conda:
        CONDA_ENV
    script:
        "../scripts/evaluate.py"


rule acceptance:
    """The acceptance gates' verdict; with evaluate.strict, fails when a gate fails (after evaluate)."""
    input:
        metrics=stage_path("evaluate", "metrics.json"),
    output:
        verdict=stage_path("evaluate", "acceptance.json"),
    params:
        strict=config["evaluate"]["strict"],
    log:
        log_path("acceptance"),
    run:
        from mlff_distill.evaluate import check_acceptance

        check_acceptance(input.metrics, params.strict, output.verdict, log[0])
