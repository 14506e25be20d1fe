from mlff_distill.stages.sample import run_target

run_target(
    **dict(snakemake.params.items()),
    structures_file=snakemake.output.structures,
    log_file=snakemake.log[0],
    threads=snakemake.threads,
)
