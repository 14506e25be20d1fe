rule precompile:
    """Compile the student's training loss into TorchInductor's cache while the teacher samples,
    so that training starts at once (mlff_distill.student.compilation)."""
    input:
        seed_files=config["sample"]["seed_files"],
        test_files=config["sample"]["test_files"],
        target_files=target_files(),
    output:
        record=stage_path("precompile", "compiled.json"),
    log:
        log_path("precompile"),
    benchmark:
        benchmark_path("precompile")
    conda:
        CONDA_ENV
    threads: 1
    params:
        # with the target's systems and min_distance_A, all it reads of `sample:` and `target:`
        seed_settings={key: config["sample"][key] for key in SEED_KEYS},
        target_systems=config["target"]["systems"],
        target_min_distance_A=config["target"]["min_distance_A"],
        student=config["student"],
        train_loss={key: config["train"][key] for key in TRAIN_LOSS_KEYS},
        try_compile=config["tune"]["try_compile"],
        cache_dir=COMPILE_CACHE,
    script:
        "../scripts/precompile.py"
