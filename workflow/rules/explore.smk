rule explore:
    """On-policy round k >= 1: the round k-1 student's MD on the targets; its frames, and those just
    before any blow-up, go to the teacher (mlff_distill.sampling.on_policy)."""
    input:
        checkpoint=previous_round("student.pt", "train"),
        store=previous_round("labels.zarr", "label"),
        sampled=stage_path("sample", "structures.extxyz"),
    output:
        structures=round_path("explore", "structures.extxyz"),
    log:
        round_log_path("explore"),
    benchmark:
        round_benchmark_path("explore")
    conda:
        CONDA_ENV
    threads: workflow.cores
    params:
        round_index=lambda wildcards: int(wildcards.round),
        seed=config["seed"],
        target=config["target"],
        on_policy={key: value for key, value in config["on_policy"].items() if key != "train"},
        sample=config["sample"],
        compile_cache_dir=COMPILE_CACHE,
        pipeline_file=PIPELINE_RUN,
    script:
        "../scripts/explore.py"
