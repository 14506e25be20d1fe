from mlff_distill.stages.evaluate import run

# The guard keeps the student NVT's spawned worker processes, which import this file again as
# their __main__ module (without Snakemake's `snakemake` object), from running the job.
if __name__ == "__main__":
    run(
        **dict(snakemake.params.items()),
        store=snakemake.input.store,
        checkpoint=snakemake.input.checkpoint,
        earlier_checkpoints=list(snakemake.input.earlier_checkpoints),
        inference_path_file=snakemake.input.inference_path,
        structures_file=snakemake.input.structures,
        measurements_file=snakemake.output.measurements,
        context_file=snakemake.output.context,
        log_file=snakemake.log[0],
        threads=snakemake.threads,
    )
