rule train:
    """Fit the student to the teacher's energies, forces and stresses; save a checkpoint and its
    TorchScript export. The resumable state goes to train/resume/state.pt, not an output, so it
    survives Snakemake's removal of an interrupted job's outputs."""
    input:
        pipeline=PIPELINE_RUN,
        store=stage_path("label", "labels.zarr"),
        precompiled=stage_path("precompile", "compiled.json"),
    output:
        checkpoint=stage_path("train", "student.pt"),
        torchscript=stage_path("train", "student.torchscript.pt"),
        history=stage_path("train", "history.json"),
    params:
        compile_cache=COMPILE_CACHE,
    threads: config["train"]["processes"] * config["train"]["threads"] if config["train"]["threads"] else workflow.cores
    log:
        log_path("train"),
    benchmark:
        benchmark_path("train")
    conda:
        CONDA_ENV
    script:
        "../scripts/train.py"
