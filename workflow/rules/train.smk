rule train:
    """Fit the student to the teacher's energies and forces; save a checkpoint."""
    input:
        pipeline=PIPELINE_RUN,
        store=stage_path("label", "labels.zarr"),
    output:
        checkpoint=stage_path("train", "student.pt"),
        history=stage_path("train", "history.json"),
    threads: workflow.cores
    log:
        log_path("train"),
    benchmark:
        benchmark_path("train")
    conda:
        CONDA_ENV
    script:
        "../scripts/train.py"
