rule evaluate:
    """Student against teacher on the test split: accuracy and speed in one process."""
    input:
        pipeline=PIPELINE_RUN,
        store=stage_path("label", "labels.zarr"),
        checkpoint=stage_path("train", "student.pt"),
        inference_path=stage_path("tune", "inference_path.json"),
    output:
        metrics=stage_path("evaluate", "metrics.json"),
    log:
        log_path("evaluate"),
    benchmark:
        benchmark_path("evaluate")
    conda:
        CONDA_ENV
    script:
        "../scripts/evaluate.py"
