from mlff_distill.stages.explore import run

# The guard keeps the exploration's spawned worker processes, which import this file again as
# their __main__ module (without Snakemake's `snakemake` object), from running the job.
if __name__ == "__main__":
    run(
        **dict(snakemake.params.items()),
        checkpoint=snakemake.input.checkpoint[0],
        store=snakemake.input.store[0],
        sampled_file=snakemake.input.sampled,
        structures_file=snakemake.output.structures,
        log_file=snakemake.log[0],
        threads=snakemake.threads,
    )
