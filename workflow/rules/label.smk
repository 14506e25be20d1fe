rule label:
    """The teacher labels the structures in shards (Dask), combined into one Zarr v3 store."""
    input:
        structures=stage_path("sample", "structures.extxyz"),
    output:
        store=directory(stage_path("label", "labels.zarr")),
    log:
        # failures.json (structures the teacher failed on) is a log, not an output, so that it
        # survives when the job fails for too many failures.
        main=log_path("label"),
        failures=stage_path("label", "failures.json"),
    benchmark:
        benchmark_path("label")
    conda:
        CONDA_ENV
    threads: workflow.cores
    params:
        teacher=config["teacher"],
        label=config["label"],
        shards_dir=stage_path("label", "shards"),
        pipeline_file=PIPELINE_RUN,
    script:
        "../scripts/label.py"
