from mlff_distill.stages.precompile import run

run(
    **dict(snakemake.params.items()),
    record_file=snakemake.output.record,
    log_file=snakemake.log[0],
    threads=snakemake.threads,
)
