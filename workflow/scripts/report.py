from mlff_distill.stages.report import run

run(
    **dict(snakemake.params.items()),
    measurements_file=snakemake.input.measurements,
    context_file=snakemake.input.context,
    metrics_file=snakemake.output.metrics,
    report_file=snakemake.output.report,
    log_file=snakemake.log[0],
)
