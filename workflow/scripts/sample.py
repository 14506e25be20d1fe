from mlff_distill.stages.sample import run

run(
    **dict(snakemake.params.items()),
    target_files=snakemake.input.targets,
    structures_file=snakemake.output.structures,
    log_file=snakemake.log[0],
    threads=snakemake.threads,
)
