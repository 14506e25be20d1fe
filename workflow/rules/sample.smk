rule sample_target:
    """One target's teacher MD (training and test trajectories) and the structures derived from it;
    the targets run as parallel jobs, before the precompile job (which the train stage needs later)."""
    input:
        target_files=target_files(),
    output:
        structures=stage_path("sample", "targets/{target}.extxyz"),
    log:
        str(RUN_DIR / "logs" / "sample-{target}.log"),
    benchmark:
        str(RUN_DIR / "benchmarks" / "sample-{target}.tsv")
    priority: 1
    conda:
        CONDA_ENV
    params:
        seed=config["seed"],
        target_name=lambda wildcards: wildcards.target,
        target=config["target"],
        teacher=config["teacher"],
        pipeline_file=PIPELINE_RUN,
    script:
        "../scripts/sample_target.py"


rule sample:
    """Structures for the teacher: the seeds' (rattles, teacher MD and the other strategies) and the
    targets', with groups, splits and sample indices, as one extxyz file."""
    input:
        seed_files=config["sample"]["seed_files"],
        test_files=config["sample"]["test_files"],
        targets=[stage_path("sample", f"targets/{name}.extxyz") for name in TARGET_NAMES],
    output:
        structures=stage_path("sample", "structures.extxyz"),
    log:
        log_path("sample"),
    benchmark:
        benchmark_path("sample")
    conda:
        CONDA_ENV
    params:
        seed=config["seed"],
        sample=config["sample"],
        target=config["target"],
        teacher=config["teacher"],
        pipeline_file=PIPELINE_RUN,
    script:
        "../scripts/sample.py"
