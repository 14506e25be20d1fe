rule label:
    """The teacher labels the structures in shards (Dask), combined into one Zarr v3 store."""
    input:
        pipeline=PIPELINE_RUN,
        structures=stage_path("sample", "structures.extxyz"),
    output:
        store=directory(stage_path("label", "labels.zarr")),
    params:
        shards_dir=stage_path("label", "shards"),
    threads: workflow.cores
    log:
        log_path("label"),
    benchmark:
        benchmark_path("label")
    conda:
        CONDA_ENV
    script:
        "../scripts/label.py"
