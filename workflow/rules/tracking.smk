rule start_tracking:
    """Create the MLflow store, experiment and parent run once, before any stage runs."""
    output:
        PIPELINE_RUN,
    log:
        log_path("start_tracking"),
    benchmark:
        benchmark_path("start_tracking")
    conda:
        CONDA_ENV
    script:
        "../scripts/start_tracking.py"
