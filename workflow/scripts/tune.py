from mlff_distill.stages.tune import run

run(
    **dict(snakemake.params.items()),
    store=snakemake.input.store,
    checkpoint=snakemake.input.checkpoint,
    record_file=snakemake.output.record,
    log_file=snakemake.log[0],
)
