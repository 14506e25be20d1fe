rule train:
    """Fit the round's student to the teacher's energies, forces and stresses (after round 0, from the
    previous round's weights); save a checkpoint and its TorchScript export. The resumable state goes
    to train/resume/state.pt, not an output, so it survives Snakemake's removal of an interrupted
    job's outputs."""
    input:
        store=round_path("label", "labels.zarr"),
        precompiled=stage_path("precompile", "compiled.json"),
        initial_checkpoint=previous_round("student.pt", "train"),
        explored=explored_so_far,
        sampled=stage_path("sample", "structures.extxyz"),
    output:
        checkpoint=round_path("train", "student.pt"),
        torchscript=round_path("train", "student.torchscript.pt"),
        history=round_path("train", "history.json"),
    log:
        round_log_path("train"),
    benchmark:
        round_benchmark_path("train")
    conda:
        CONDA_ENV
    threads: train_threads()
    params:
        seed=config["seed"],
        student=config["student"],
        train=round_train_settings,
        round_index=lambda wildcards: int(wildcards.round),
        compile_cache_dir=COMPILE_CACHE,
        pipeline_file=PIPELINE_RUN,
    script:
        "../scripts/train.py"
