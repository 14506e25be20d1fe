from mlff_distill.stages.explore import run

run(
    **dict(snakemake.params.items()),
    checkpoint=snakemake.input.checkpoint[0],
    store=snakemake.input.store[0],
    sampled_file=snakemake.input.sampled,
    structures_file=snakemake.output.structures,
    log_file=snakemake.log[0],
    threads=snakemake.threads,
)
