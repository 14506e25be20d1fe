rule train:
    """Fit the student to the teacher's energies, forces and stresses; save a checkpoint and its
    TorchScript export. The resumable state goes to train/resume/state.pt, not an output, so it
    survives Snakemake's removal of an interrupted job's outputs."""
    input:
        store=stage_path("label", "labels.zarr"),
        precompiled=stage_path("precompile", "compiled.json"),
    output:
        checkpoint=stage_path("train", "student.pt"),
        torchscript=stage_path("train", "student.torchscript.pt"),
        history=stage_path("train", "history.json"),
    log:
        log_path("train"),
    benchmark:
        benchmark_path("train")
    conda:
        CONDA_ENV
    threads: train_threads()
    params:
        seed=config["seed"],
        student=config["student"],
        train=config["train"],
        compile_cache_dir=COMPILE_CACHE,
        pipeline_file=PIPELINE_RUN,
    script:
        "../scripts/train.py"
