rule label:
    """The teacher labels the round's new structures in shards (on Dask workers, or in the job's own
    process on 2 cores or fewer); the round's Zarr v3 store combines them with the shards of the
    earlier rounds (never relabeled)."""
    input:
        structures=round_structures,
        previous_store=previous_round("labels.zarr", "label"),
    output:
        store=directory(round_path("label", "labels.zarr")),
    log:
        # failures.json (structures the teacher failed on) is a log, not an output, so that it
        # survives when the job fails for too many failures.
        main=round_log_path("label"),
        failures=round_path("label", "failures.json"),
    benchmark:
        round_benchmark_path("label")
    conda:
        CONDA_ENV
    threads: workflow.cores
    params:
        teacher=config["teacher"],
        # where the shards are labeled (WHERE_KEYS) is read by the script: it changes no label
        label={key: value for key, value in config["label"].items() if key not in WHERE_KEYS},
        round_index=lambda wildcards: int(wildcards.round),
        shards_dir=round_path("label", "shards"),
        previous_shards_dirs=lambda wildcards: [round_path("label", "shards", k) for k in range(int(wildcards.round))],
        pipeline_file=PIPELINE_RUN,
    script:
        "../scripts/label.py"
